// The TradeQL web app: sign in, deposit, a watchlist with live quotes, an order ticket, open
// orders, positions with live P&L, the equity chart and order updates as they happen.
import { Api } from "./api.js";
import { equityChart } from "./chart.js";
import {
  escapeHtml,
  formatMoney,
  formatPercent,
  formatPrice,
  formatQuantity,
  formatSignedMoney,
  formatTime,
  sign,
} from "./format.js";
import * as ops from "./operations.js";

const $ = (selector) => document.querySelector(selector);

// A live point is appended to the chart at most this often; between two, the last one moves.
const LIVE_POINT_EVERY_MS = 30_000;
const MAX_UPDATES = 50;

const state = {
  user: null,
  portfolio: null,
  orders: new Map(), // id -> the newest snapshot seen (by `version`)
  watchlist: null,
  quotes: new Map(), // symbol -> { quote, tick: -1 | 0 | 1 }
  updates: [],
  history: [],
  span: "DAY",
  stops: [], // functions that end the live subscriptions
  stopQuotes: null,
  ticketOrderId: null, // the order the ticket placed last: its line follows its status
};

const api = new Api({
  onSessionEnded: () => {
    if (state.user) signedOut("Your session has ended: sign in again.");
  },
  onConnection: (status, retried) => {
    const badge = $("#connection");
    badge.hidden = !state.user;
    badge.textContent = { connecting: "connecting…", live: "● live", offline: "offline" }[status];
    badge.dataset.status = status;
    if (status === "live" && retried && state.user) refresh();
  },
});

/** An idempotency key (works on plain http too, where crypto.randomUUID is missing). */
function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// ---- forms and their errors -------------------------------------------------------------

function clearErrors(form) {
  for (const slot of form.querySelectorAll("[data-error-for]")) slot.textContent = "";
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  form.querySelector(".form-status")?.remove();
}

/** Each UserError under the input it names (`field`), the rest under the form. */
function showErrors(form, errors) {
  clearErrors(form);
  for (const error of errors) {
    const field = error.field ?? "";
    const slot =
      form.querySelector(`[data-error-for="${CSS.escape(field)}"]`) ??
      form.querySelector('[data-error-for=""]');
    slot.textContent = slot.textContent ? `${slot.textContent} ${error.message}` : error.message;
    slot.dataset.code = error.code ?? "";
    form.querySelector(`[name="${CSS.escape(field)}"]`)?.setAttribute("aria-invalid", "true");
  }
}

function showStatus(form, message) {
  const status = document.createElement("p");
  status.className = "form-status";
  status.textContent = message;
  form.append(status);
}

/** Run a form's action with its submit buttons off; a request error shows under the form. */
async function submitting(form, action) {
  const buttons = form.querySelectorAll("button");
  buttons.forEach((b) => (b.disabled = true));
  try {
    await action();
  } catch (error) {
    showErrors(form, [{ message: error.message, code: error.code }]);
  } finally {
    buttons.forEach((b) => (b.disabled = false));
  }
}

const decimalOrNull = (value) => (value.trim() === "" ? null : value.trim());
const DECIMAL = /^\d+(\.\d+)?$/;

/** Field errors, in the API's shape, for decimal inputs that are not numbers: the API would
 * refuse the whole request (a variable that does not coerce) without naming the field. */
function notDecimals(values) {
  return Object.entries(values)
    .filter(([, value]) => value != null && !DECIMAL.test(value))
    .map(([field]) => ({ code: "INVALID_INPUT", field, message: `${field} must be a number` }));
}

// ---- signing in and out -----------------------------------------------------------------

async function onAuth(event) {
  event.preventDefault();
  const form = event.target;
  const register = event.submitter?.value === "register";
  await submitting(form, async () => {
    const variables = { email: form.email.value.trim(), password: form.password.value };
    const data = await api.request(register ? ops.REGISTER : ops.LOGIN, variables);
    const payload = register ? data.register : data.login;
    if (payload.errors.length) return showErrors(form, payload.errors);
    clearErrors(form);
    form.reset();
    api.setToken(payload.token);
    await signedIn(payload.user);
  });
}

/** Show the dashboard; if it cannot load, back to the sign-in form with the reason. */
async function signedIn(user) {
  try {
    await showDashboard(user);
  } catch (error) {
    signedOut(`Could not load your account: ${error.message}`);
  }
}

async function showDashboard(user) {
  state.user = user;
  $("#signed-out").hidden = true;
  $("#signed-in").hidden = false;
  $("#sign-out").hidden = false;
  $("#user-email").textContent = user.email;
  await loadDashboard();
  state.watchlist ??= await createWatchlist();
  renderWatchlist();
  follow();
  await loadHistory();
}

/** The account, its open orders and its watchlist, as the server has them now. */
async function loadDashboard() {
  const data = await api.request(ops.DASHBOARD, { open: ops.OPEN_STATUSES });
  const open = new Set(data.orders.edges.map(({ node }) => node.id));
  // An order shown as open that the server no longer lists as open finished meanwhile.
  for (const [id, order] of state.orders) {
    if (!open.has(id) && ops.OPEN_STATUSES.includes(order.status)) state.orders.delete(id);
  }
  data.orders.edges.forEach(({ node }) => upsertOrder(node));
  setPortfolio(data.portfolio);
  renderOrders();
  state.watchlist = data.watchlists[0] ?? state.watchlist;
}

/** After the socket came back: what changed while it was away. */
async function refresh() {
  try {
    await loadDashboard();
    renderWatchlist();
  } catch (error) {
    console.warn("refresh:", error);
  }
}

function signedOut(message = "") {
  stopFollowing();
  api.setToken(null);
  Object.assign(state, {
    user: null,
    portfolio: null,
    orders: new Map(),
    watchlist: null,
    quotes: new Map(),
    updates: [],
    history: [],
    ticketOrderId: null,
  });
  $("#signed-in").hidden = true;
  $("#signed-out").hidden = false;
  $("#sign-out").hidden = true;
  $("#connection").hidden = true;
  $("#user-email").textContent = "";
  const form = $("#auth-form");
  clearErrors(form);
  if (message) showErrors(form, [{ message }]);
}

async function onSignOut() {
  try {
    await api.request(ops.LOGOUT);
  } catch (error) {
    console.warn("logout:", error); // the token is forgotten here all the same
  } finally {
    signedOut();
  }
}

// ---- live data --------------------------------------------------------------------------

function follow() {
  const onError = (error) => console.warn("subscription:", error);
  state.stops.push(
    api.subscribe(ops.ORDER_UPDATES, {}, {
      next: ({ orderUpdates }) => onOrderUpdate(orderUpdates),
      error: onError,
    }),
    api.subscribe(ops.PORTFOLIO_UPDATES, {}, {
      next: ({ portfolio }) => setPortfolio(portfolio),
      error: onError,
    }),
  );
  followQuotes();
}

function followQuotes() {
  state.stopQuotes?.();
  state.stopQuotes = null;
  const symbols = state.watchlist?.symbols ?? [];
  if (!symbols.length) return;
  state.stopQuotes = api.subscribe(ops.QUOTES, { symbols }, {
    next: ({ quotes }) => onQuote(quotes),
    error: (error) => console.warn("quotes:", error),
  });
}

function stopFollowing() {
  state.stops.forEach((stop) => stop());
  state.stops = [];
  state.stopQuotes?.();
  state.stopQuotes = null;
}

function onQuote(quote) {
  const before = state.quotes.get(quote.symbol)?.quote;
  const tick = before ? sign(String(Number(quote.last) - Number(before.last))) : 0;
  state.quotes.set(quote.symbol, { quote, tick });
  renderWatchlist();
}

function onOrderUpdate(update) {
  upsertOrder(update.order);
  if (update.order.id === state.ticketOrderId) showTicketOrder();
  state.updates.unshift(update);
  state.updates.length = Math.min(state.updates.length, MAX_UPDATES);
  renderOrders();
  renderUpdates();
}

/** Keep the newest snapshot of an order: a late answer must not undo a fill it already saw. */
function upsertOrder(order) {
  const known = state.orders.get(order.id);
  if (!known || known.version <= order.version) state.orders.set(order.id, order);
}

function setPortfolio(portfolio) {
  state.portfolio = portfolio;
  const last = state.history.at(-1);
  const point = { timestamp: new Date().toISOString(), equity: portfolio.equity };
  if (last && Date.now() - Date.parse(last.timestamp) < LIVE_POINT_EVERY_MS) {
    state.history[state.history.length - 1] = point;
  } else if (last) {
    state.history.push(point);
  }
  renderAccount();
  renderPositions();
  renderChart();
}

async function loadHistory() {
  const span = state.span;
  const data = await api.request(ops.HISTORY, { span });
  if (span !== state.span) return;
  state.history = data.portfolio.history;
  renderChart();
}

// ---- actions ----------------------------------------------------------------------------

async function onDeposit(event) {
  event.preventDefault();
  const form = event.target;
  await submitting(form, async () => {
    const variables = { amount: form.amount.value.trim(), idempotencyKey: newKey() };
    const invalid = notDecimals({ amount: variables.amount });
    if (invalid.length) return showErrors(form, invalid);
    const { deposit } = await api.request(ops.DEPOSIT, variables);
    if (deposit.errors.length) return showErrors(form, deposit.errors);
    clearErrors(form);
    form.reset();
    setPortfolio(deposit.portfolio);
    showStatus(form, `Deposited ${formatMoney(variables.amount)}.`);
  });
}

function ticketInput(form) {
  const type = form.type.value;
  const byAmount = form.amountIn.value === "notional";
  return {
    symbol: form.symbol.value.trim().toUpperCase(),
    side: form.side.value,
    type,
    timeInForce: form.timeInForce.value,
    quantity: byAmount ? null : decimalOrNull(form.quantity.value),
    notional: byAmount ? decimalOrNull(form.notional.value) : null,
    limitPrice: type === "LIMIT" ? decimalOrNull(form.limitPrice.value) : null,
    stopPrice: type === "STOP" ? decimalOrNull(form.stopPrice.value) : null,
    idempotencyKey: newKey(),
  };
}

async function onPlaceOrder(event) {
  event.preventDefault();
  const form = event.target;
  await submitting(form, async () => {
    state.ticketOrderId = null;
    const input = ticketInput(form);
    const { quantity, notional, limitPrice, stopPrice } = input;
    const invalid = notDecimals({ quantity, notional, limitPrice, stopPrice });
    if (invalid.length) return showErrors(form, invalid);
    const { placeOrder } = await api.request(ops.PLACE_ORDER, { input });
    if (placeOrder.errors.length) return showErrors(form, placeOrder.errors);
    clearErrors(form);
    upsertOrder(placeOrder.order);
    renderOrders();
    state.ticketOrderId = placeOrder.order.id;
    showTicketOrder();
  });
}

/** The ticket's line for the order it placed last, at that order's newest status. */
function showTicketOrder() {
  const form = $("#order-form");
  const order = state.orders.get(state.ticketOrderId);
  if (!order) return;
  form.querySelector(".form-status")?.remove();
  const size = order.notional ? formatMoney(order.notional) : formatQuantity(order.quantity);
  showStatus(form, `${order.side} ${size} ${order.symbol} ${order.type}: ${order.status}`);
}

async function onCancel(id, button) {
  button.disabled = true;
  const slot = $("#orders-error");
  try {
    const { cancelOrder } = await api.request(ops.CANCEL_ORDER, { id });
    if (cancelOrder.errors.length) {
      slot.textContent = cancelOrder.errors.map((e) => e.message).join(" ");
    } else {
      slot.textContent = "";
      upsertOrder(cancelOrder.order);
    }
  } catch (error) {
    slot.textContent = error.message;
  } finally {
    renderOrders();
  }
}

async function createWatchlist() {
  const { createWatchlist } = await api.request(ops.CREATE_WATCHLIST, {
    name: "My watchlist",
    symbols: [],
  });
  return createWatchlist.watchlist;
}

async function onWatch(event) {
  event.preventDefault();
  const form = event.target;
  await submitting(form, async () => {
    const symbol = form.symbol.value.trim().toUpperCase();
    const { addToWatchlist } = await api.request(ops.ADD_TO_WATCHLIST, {
      id: state.watchlist.id,
      symbol,
    });
    if (addToWatchlist.errors.length) return showErrors(form, addToWatchlist.errors);
    clearErrors(form);
    form.reset();
    state.watchlist = addToWatchlist.watchlist;
    renderWatchlist();
    followQuotes();
  });
}

async function onUnwatch(symbol) {
  const { removeFromWatchlist } = await api.request(ops.REMOVE_FROM_WATCHLIST, {
    id: state.watchlist.id,
    symbol,
  });
  if (removeFromWatchlist.watchlist) state.watchlist = removeFromWatchlist.watchlist;
  state.quotes.delete(symbol);
  renderWatchlist();
  followQuotes();
}

// ---- rendering --------------------------------------------------------------------------

const signClass = (value) => ["neg", "", "pos"][sign(value) + 1];

function renderAccount() {
  const p = state.portfolio;
  $("#account-summary").innerHTML = `
    <dt>Equity</dt><dd data-testid="equity">${formatMoney(p.equity)}</dd>
    <dt>Cash</dt><dd data-testid="cash">${formatMoney(p.cash)}</dd>
    <dt>Buying power</dt><dd data-testid="buying-power">${formatMoney(p.buyingPower)}</dd>
    <dt>Market value</dt><dd>${formatMoney(p.marketValue)}</dd>
    <dt>Realized P&amp;L</dt><dd class="${signClass(p.realizedPnl)}">${formatSignedMoney(p.realizedPnl)}</dd>
    <dt>Unrealized P&amp;L</dt><dd class="${signClass(p.unrealizedPnl)}">${formatSignedMoney(p.unrealizedPnl)}</dd>`;
}

function renderWatchlist() {
  const symbols = state.watchlist?.symbols ?? [];
  $("#watchlist").innerHTML = symbols.length
    ? symbols
        .map((symbol) => {
          const { quote, tick } = state.quotes.get(symbol) ?? {};
          return `<tr data-symbol="${escapeHtml(symbol)}">
            <td><button class="link" data-trade="${escapeHtml(symbol)}">${escapeHtml(symbol)}</button></td>
            <td>${formatPrice(quote?.bid)}</td><td>${formatPrice(quote?.ask)}</td>
            <td class="${["neg", "", "pos"][(tick ?? 0) + 1]}" data-testid="last">${formatPrice(quote?.last)}</td>
            <td><button class="link remove" data-unwatch="${escapeHtml(symbol)}" title="remove">×</button></td>
          </tr>`;
        })
        .join("")
    : `<tr><td colspan="5" class="muted">Add a symbol to watch its quotes live.</td></tr>`;
}

function renderPositions() {
  const positions = state.portfolio.positions;
  $("#positions").innerHTML = positions.length
    ? positions
        .map(
          (p) => `<tr data-symbol="${escapeHtml(p.symbol)}">
            <td>${escapeHtml(p.symbol)}</td>
            <td data-testid="quantity">${formatQuantity(p.quantity)}</td>
            <td>${formatPrice(p.averageCost)}</td>
            <td>${formatPrice(p.quote?.last)}</td>
            <td>${formatMoney(p.marketValue)}</td>
            <td class="${signClass(p.unrealizedPnl)}" data-testid="pnl">${formatSignedMoney(p.unrealizedPnl)}
              <small>${formatPercent(p.unrealizedPnlPercent)}</small></td>
          </tr>`,
        )
        .join("")
    : `<tr><td colspan="6" class="muted">No positions yet.</td></tr>`;
}

function renderOrders() {
  const open = [...state.orders.values()]
    .filter((o) => ops.OPEN_STATUSES.includes(o.status))
    .sort((a, b) => b.createdAt.localeCompare(a.createdAt));
  $("#open-orders").innerHTML = open.length
    ? open
        .map(
          (o) => `<tr data-order-id="${escapeHtml(o.id)}" data-symbol="${escapeHtml(o.symbol)}">
            <td>${escapeHtml(o.symbol)}</td><td class="${o.side === "BUY" ? "pos" : "neg"}">${o.side}</td>
            <td>${o.type}</td>
            <td>${formatQuantity(o.filledQuantity)}/${formatQuantity(o.quantity)}</td>
            <td>${formatPrice(o.limitPrice ?? o.stopPrice)}</td>
            <td data-testid="status">${o.status}</td>
            <td><button class="secondary small" data-cancel="${escapeHtml(o.id)}">Cancel</button></td>
          </tr>`,
        )
        .join("")
    : `<tr><td colspan="7" class="muted">No open orders.</td></tr>`;
}

function renderUpdates() {
  $("#order-updates").innerHTML = state.updates
    .map(({ event, order, execution }) => {
      const detail = execution
        ? `${formatQuantity(execution.quantity)} @ ${formatPrice(execution.price)} on ${escapeHtml(execution.venue)}`
        : escapeHtml(order.rejectReason ?? order.status);
      return `<li data-event="${event}" data-symbol="${escapeHtml(order.symbol)}">
        <time>${formatTime(order.updatedAt)}</time>
        <strong>${event.replace("_", " ")}</strong>
        ${order.side} ${escapeHtml(order.symbol)} ${order.type}: ${detail}</li>`;
    })
    .join("");
}

function renderChart() {
  $("#chart").innerHTML = equityChart(state.history);
}

// ---- wiring -----------------------------------------------------------------------------

function syncTicket() {
  const form = $("#order-form");
  const byAmount = form.amountIn.value === "notional";
  for (const el of form.querySelectorAll("[data-when-type]")) {
    el.hidden = el.dataset.whenType !== form.type.value;
  }
  for (const el of form.querySelectorAll("[data-when-amount]")) {
    el.hidden = el.dataset.whenAmount !== (byAmount ? "notional" : "quantity");
  }
}

function wire() {
  $("#auth-form").addEventListener("submit", onAuth);
  $("#sign-out").addEventListener("click", onSignOut);
  $("#deposit-form").addEventListener("submit", onDeposit);
  $("#watch-form").addEventListener("submit", onWatch);
  const ticket = $("#order-form");
  ticket.addEventListener("submit", onPlaceOrder);
  ticket.addEventListener("change", syncTicket);
  $(".orders").insertAdjacentHTML("beforeend", `<p class="form-error" id="orders-error"></p>`);
  document.addEventListener("click", (event) => {
    const target = event.target.closest("button");
    if (!target) return;
    if (target.dataset.cancel) onCancel(target.dataset.cancel, target);
    if (target.dataset.unwatch) onUnwatch(target.dataset.unwatch);
    if (target.dataset.trade) {
      ticket.symbol.value = target.dataset.trade;
      ticket.quantity.focus();
    }
    if (target.dataset.span) {
      state.span = target.dataset.span;
      for (const b of $("#spans").children) b.classList.toggle("active", b === target);
      loadHistory();
    }
  });
  syncTicket();
}

async function start() {
  wire();
  if (!api.token) return signedOut();
  try {
    const { me } = await api.request(ops.ME);
    if (me) await signedIn(me);
    else signedOut("Your session has ended: sign in again.");
  } catch (error) {
    signedOut(error.message);
  }
}

start();
