// Display helpers. The API sends every amount as an exact decimal string; numbers are made
// only to print them (grouping, sign), never to compute a value that is sent back.

const money = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" });
const price = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 4 });

export function formatMoney(value) {
  return value == null ? "—" : money.format(Number(value));
}

export function formatSignedMoney(value) {
  if (value == null) return "—";
  const n = Number(value);
  return (n > 0 ? "+" : "") + money.format(n);
}

export function formatPrice(value) {
  return value == null ? "—" : price.format(Number(value));
}

export function formatPercent(value) {
  if (value == null) return "—";
  const n = Number(value);
  return `${n > 0 ? "+" : ""}${n.toFixed(2)}%`;
}

/** A quantity as sent, without trailing zeros ("10.000000" -> "10"), exact. */
export function formatQuantity(value) {
  if (value == null) return "—";
  return value.includes(".") ? value.replace(/0+$/, "").replace(/\.$/, "") : value;
}

export function formatTime(iso) {
  return new Date(iso).toLocaleTimeString("en-US", { hour12: false });
}

/** -1, 0 or 1: the sign of a decimal string. */
export function sign(value) {
  if (value == null) return 0;
  const n = Number(value);
  return n > 0 ? 1 : n < 0 ? -1 : 0;
}

export function escapeHtml(value) {
  return String(value ?? "").replace(
    /[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c],
  );
}
