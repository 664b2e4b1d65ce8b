// Every GraphQL document the app sends (names as in the served schema.graphql).

const ORDER = `
  fragment OrderFields on Order {
    id symbol side type timeInForce quantity notional limitPrice stopPrice status
    filledQuantity averageFillPrice rejectReason createdAt updatedAt version
  }`;

const PORTFOLIO = `
  fragment PortfolioFields on Portfolio {
    id cash buyingPower marketValue equity realizedPnl unrealizedPnl
    positions {
      id symbol quantity reservedQuantity averageCost costBasis marketValue unrealizedPnl
      unrealizedPnlPercent quote { id last }
    }
  }`;

const ERRORS = "errors { code message field }";

export const OPEN_STATUSES = ["PENDING", "SUBMITTED", "PARTIALLY_FILLED"];

export const ME = `query Me { me { id email } }`;

export const REGISTER = `
  mutation Register($email: String!, $password: String!) {
    register(email: $email, password: $password) { token user { id email } ${ERRORS} }
  }`;

export const LOGIN = `
  mutation Login($email: String!, $password: String!) {
    login(email: $email, password: $password) { token user { id email } ${ERRORS} }
  }`;

export const LOGOUT = `mutation Logout { logout }`;

export const DASHBOARD = `
  query Dashboard($open: [OrderStatus!]) {
    portfolio { ...PortfolioFields }
    orders(status: $open, first: 100) { edges { node { ...OrderFields } } }
    watchlists { id name symbols }
  }
  ${PORTFOLIO}
  ${ORDER}`;

export const HISTORY = `
  query History($span: HistorySpan!) {
    portfolio { id history(span: $span) { timestamp equity } }
  }`;

export const DEPOSIT = `
  mutation Deposit($amount: Decimal!, $idempotencyKey: String!) {
    deposit(amount: $amount, idempotencyKey: $idempotencyKey) {
      portfolio { ...PortfolioFields } ${ERRORS}
    }
  }
  ${PORTFOLIO}`;

export const PLACE_ORDER = `
  mutation PlaceOrder($input: PlaceOrderInput!) {
    placeOrder(input: $input) { order { ...OrderFields } ${ERRORS} }
  }
  ${ORDER}`;

export const CANCEL_ORDER = `
  mutation CancelOrder($id: ID!) {
    cancelOrder(id: $id) { order { ...OrderFields } ${ERRORS} }
  }
  ${ORDER}`;

export const CREATE_WATCHLIST = `
  mutation CreateWatchlist($name: String!, $symbols: [String!]!) {
    createWatchlist(name: $name, symbols: $symbols) { watchlist { id name symbols } ${ERRORS} }
  }`;

export const ADD_TO_WATCHLIST = `
  mutation AddToWatchlist($id: ID!, $symbol: String!) {
    addToWatchlist(watchlistId: $id, symbol: $symbol) { watchlist { id name symbols } ${ERRORS} }
  }`;

export const REMOVE_FROM_WATCHLIST = `
  mutation RemoveFromWatchlist($id: ID!, $symbol: String!) {
    removeFromWatchlist(watchlistId: $id, symbol: $symbol) {
      watchlist { id name symbols } ${ERRORS}
    }
  }`;

export const QUOTES = `
  subscription Quotes($symbols: [String!]!) {
    quotes(symbols: $symbols) { id symbol bid ask last timestamp }
  }`;

export const ORDER_UPDATES = `
  subscription OrderUpdates {
    orderUpdates { event order { ...OrderFields } execution { id quantity price venue } }
  }
  ${ORDER}`;

export const PORTFOLIO_UPDATES = `
  subscription PortfolioUpdates { portfolio { ...PortfolioFields } }
  ${PORTFOLIO}`;
