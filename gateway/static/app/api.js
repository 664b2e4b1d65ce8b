// The app's GraphQL client: queries and mutations over HTTP (fetch, GraphQL over HTTP),
// subscriptions over WebSocket with graphql-ws (the graphql-transport-ws protocol). The session
// token is kept in localStorage and sent as `Authorization: Bearer` on both.
import { createClient } from "graphql-ws";

const TOKEN_KEY = "tradeql.token";

/** A top-level GraphQL error (malformed request, UNAUTHENTICATED, RATE_LIMITED, ...). */
export class GraphQLRequestError extends Error {
  constructor(errors, status) {
    super(errors.map((e) => e.message).join("; ") || `HTTP ${status}`);
    this.errors = errors;
    this.status = status;
    this.code = errors[0]?.extensions?.code ?? null;
  }
}

function socketUrl(httpPath) {
  const url = new URL(httpPath, window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.toString();
}

export class Api {
  /**
   * @param {{ path?: string, onSessionEnded?: () => void,
   *           onConnection?: (status: "connecting" | "live" | "offline", retried: boolean) => void
   *        }} options
   */
  constructor({ path = "/graphql", onSessionEnded = () => {}, onConnection = () => {} } = {}) {
    this.path = path;
    this.onSessionEnded = onSessionEnded;
    this.onConnection = onConnection;
    this.socket = null;
  }

  get token() {
    return window.localStorage.getItem(TOKEN_KEY);
  }

  /** Sign in (a token) or out (null): a new session needs a new socket. */
  setToken(token) {
    if (token) window.localStorage.setItem(TOKEN_KEY, token);
    else window.localStorage.removeItem(TOKEN_KEY);
    this.socket?.dispose();
    this.socket = null;
  }

  /** Run a query or mutation; resolves to `data`, rejects with GraphQLRequestError. */
  async request(query, variables = {}) {
    const headers = {
      "Content-Type": "application/json",
      Accept: "application/graphql-response+json, application/json",
    };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    const response = await fetch(this.path, {
      method: "POST",
      headers,
      body: JSON.stringify({ query, variables }),
    });
    let body;
    try {
      body = await response.json();
    } catch {
      throw new GraphQLRequestError([], response.status);
    }
    if (body.errors?.length) {
      const error = new GraphQLRequestError(body.errors, response.status);
      if (error.code === "UNAUTHENTICATED") this.onSessionEnded();
      throw error;
    }
    return body.data;
  }

  /** Start a subscription; returns the function that stops it. */
  subscribe(query, variables, { next, error = console.error }) {
    return this.#client().subscribe(
      { query, variables },
      {
        next: (result) => {
          if (result.errors?.length) error(new GraphQLRequestError(result.errors, 200));
          if (result.data) next(result.data);
        },
        error,
        complete: () => {},
      },
    );
  }

  #client() {
    if (!this.socket) {
      const token = this.token;
      this.socket = createClient({
        url: socketUrl(this.path),
        lazy: true,
        connectionParams: () => (token ? { Authorization: `Bearer ${token}` } : {}),
        retryAttempts: Infinity,
        // 4401: the session is gone (expired, revoked, signed out elsewhere): stop retrying.
        shouldRetry: (event) => !(event && typeof event === "object" && event.code === 4401),
        on: {
          connecting: (retrying) => this.onConnection("connecting", retrying),
          // After a reconnect the app reloads what it shows: events may have gone by meanwhile.
          connected: (_socket, _payload, retried) => this.onConnection("live", retried),
          closed: (event) => {
            this.onConnection("offline", false);
            if (event && typeof event === "object" && event.code === 4401) this.onSessionEnded();
          },
        },
      });
    }
    return this.socket;
  }
}
