// The equity chart: an SVG line of (timestamp, equity) points, scaled to the box.
import { escapeHtml, formatMoney } from "./format.js";

const WIDTH = 640;
const HEIGHT = 200;
const PAD = { top: 12, right: 12, bottom: 22, left: 72 };

/** SVG markup for the points, or a sentence when there are too few to draw a line. */
export function equityChart(points) {
  if (points.length === 0) return `<p class="muted">No history yet.</p>`;
  const xs = points.map((p) => Date.parse(p.timestamp));
  const ys = points.map((p) => Number(p.equity));
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (x1 === x0) [x0, x1] = [x0 - 60_000, x1 + 60_000];
  if (y1 === y0) [y0, y1] = [y0 * 0.99 - 1, y1 * 1.01 + 1];
  const w = WIDTH - PAD.left - PAD.right;
  const h = HEIGHT - PAD.top - PAD.bottom;
  const x = (t) => PAD.left + ((t - x0) / (x1 - x0)) * w;
  const y = (v) => PAD.top + (1 - (v - y0) / (y1 - y0)) * h;
  const line = xs.map((t, i) => `${x(t).toFixed(1)},${y(ys[i]).toFixed(1)}`).join(" ");
  const area = `${x(xs[0]).toFixed(1)},${PAD.top + h} ${line} ${x(xs.at(-1)).toFixed(1)},${PAD.top + h}`;
  const up = ys.at(-1) >= ys[0];
  const ticks = [y0, (y0 + y1) / 2, y1]
    .map(
      (v) => `<text x="${PAD.left - 8}" y="${y(v) + 4}" text-anchor="end">${escapeHtml(formatMoney(v))}</text>
        <line x1="${PAD.left}" x2="${WIDTH - PAD.right}" y1="${y(v)}" y2="${y(v)}" class="grid"/>`,
    )
    .join("");
  const when = (t) => new Date(t).toLocaleString("en-US", { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  const dots = points.length === 1 ? `<circle cx="${x(xs[0])}" cy="${y(ys[0])}" r="3"/>` : "";
  return `<svg viewBox="0 0 ${WIDTH} ${HEIGHT}" class="chart ${up ? "up" : "down"}" role="img"
      aria-label="equity over time" data-points="${points.length}">
    ${ticks}
    <polygon points="${area}" class="area"/>
    <polyline points="${line}" class="line"/>
    ${dots}
    <text x="${PAD.left}" y="${HEIGHT - 6}">${escapeHtml(when(x0))}</text>
    <text x="${WIDTH - PAD.right}" y="${HEIGHT - 6}" text-anchor="end">${escapeHtml(when(x1))}</text>
  </svg>`;
}
