// A small GraphQL over WebSocket client (the graphql-transport-ws protocol), shared by the
// dashboard and the GraphiQL page. One socket carries every subscription; when the socket
// drops, the client reconnects by itself with exponential backoff and jitter, and subscribes
// again, asking each subscription for its variables anew (so `priceUpdates` can resume from
// the last Price.cursor it saw). A ping every `pingInterval` ms finds a dead connection that
// the browser has not noticed yet.

const PROTOCOL = "graphql-transport-ws";

/** The ws:// or wss:// URL of an http(s) URL. */
export function webSocketUrl(httpUrl) {
  const url = new URL(httpUrl, location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.hash = "";
  return url.toString();
}

export class LiveClient {
  /**
   * @param {string} url  the ws:// URL of the GraphQL endpoint
   * @param {object} [options]
   * @param {(status: {state: string, attempt: number, retryAt: number|null, reason: string}) => void} [options.onStatus]
   *   told of every change: state is "connecting", "open", "waiting" (a retry is scheduled at
   *   `retryAt`, a Date.now() value) or "closed" (by `close()`)
   * @param {() => void} [options.onReconnect]  called on each acknowledged connection after a drop
   */
  constructor(url, options = {}) {
    this.url = url;
    this.onStatus = options.onStatus || (() => {});
    this.onReconnect = options.onReconnect || (() => {});
    // The connection_init payload, e.g. {Authorization: "Bearer <key>"} when reads need a key.
    this.connectionParams = options.connectionParams || {};
    this.pingInterval = options.pingInterval ?? 15000;
    this.pongTimeout = options.pongTimeout ?? 8000;
    this.ackTimeout = options.ackTimeout ?? 8000;
    this.minDelay = options.minDelay ?? 500;
    this.maxDelay = options.maxDelay ?? 15000;
    this.subscriptions = new Map(); // id -> {request, sink}
    this.nextId = 1;
    this.attempt = 0;
    this.everOpen = false;
    this.socket = null;
    this.acknowledged = false;
    this.timers = {};
    this.closed = false;
    this.status = { state: "connecting", attempt: 0, retryAt: null, reason: "" };
    this.onOnline = () => this.retryNow();
    window.addEventListener("online", this.onOnline);
  }

  /**
   * Subscribe; returns a function that ends the subscription.
   * @param {{query: string, operationName?: string, variables?: object | (() => object)}} request
   *   `variables` may be a function, called at each (re)subscription
   * @param {{next: (payload: object) => void, error?: (errors: object[]) => void, complete?: () => void}} sink
   *   `error` gets the GraphQL errors of a refused operation; it is not retried
   */
  subscribe(request, sink) {
    const id = String(this.nextId++);
    this.subscriptions.set(id, { request, sink });
    if (this.acknowledged) this.sendSubscribe(id);
    else if (!this.socket && !this.timers.retry) this.connect();
    return () => {
      if (!this.subscriptions.delete(id)) return;
      if (this.acknowledged) this.send({ id, type: "complete" });
    };
  }

  /** New connection_init parameters; a change reconnects (every subscription resumes). */
  setConnectionParams(params) {
    const next = params || {};
    if (JSON.stringify(next) === JSON.stringify(this.connectionParams)) return;
    this.connectionParams = next;
    if (this.socket) {
      this.drop("new connection parameters");
      this.retryNow();
    }
  }

  /** Connect at once when waiting for a retry (e.g. the browser came back online). */
  retryNow() {
    if (this.closed || this.socket) return;
    clearTimeout(this.timers.retry);
    this.timers.retry = null;
    this.connect();
  }

  /** Close the socket for good and end every subscription. */
  close() {
    this.closed = true;
    window.removeEventListener("online", this.onOnline);
    this.clearTimers();
    if (this.socket) this.detach().close(1000, "client closed");
    for (const { sink } of this.subscriptions.values()) sink.complete?.();
    this.subscriptions.clear();
    this.setStatus("closed", "closed by the page");
  }

  // ---- internals ----

  setStatus(state, reason = "", retryAt = null) {
    this.status = { state, attempt: this.attempt, retryAt, reason };
    this.onStatus(this.status);
  }

  connect() {
    this.setStatus("connecting");
    let socket;
    try {
      socket = new WebSocket(this.url, PROTOCOL);
    } catch (error) {
      this.scheduleRetry(String(error));
      return;
    }
    this.socket = socket;
    this.acknowledged = false;
    socket.onopen = () => {
      this.send({ type: "connection_init", payload: this.connectionParams });
      this.timers.ack = setTimeout(() => this.drop("the server did not acknowledge"), this.ackTimeout);
    };
    socket.onmessage = (event) => this.receive(event.data);
    socket.onerror = () => {}; // a close event follows, with the code
    socket.onclose = (event) => {
      this.detach();
      this.scheduleRetry(closeReason(event));
    };
  }

  receive(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      this.drop("the server sent a message that is not JSON");
      return;
    }
    const entry = message.id === undefined ? undefined : this.subscriptions.get(message.id);
    switch (message.type) {
      case "connection_ack": {
        clearTimeout(this.timers.ack);
        this.acknowledged = true;
        const reconnected = this.everOpen;
        this.everOpen = true;
        this.attempt = 0;
        this.setStatus("open");
        for (const id of this.subscriptions.keys()) this.sendSubscribe(id);
        this.schedulePing();
        if (reconnected) this.onReconnect();
        break;
      }
      case "ping":
        this.send({ type: "pong", payload: message.payload });
        break;
      case "pong":
        clearTimeout(this.timers.pong);
        this.schedulePing();
        break;
      case "next":
        entry?.sink.next(message.payload);
        break;
      case "error":
        if (entry) {
          this.subscriptions.delete(message.id);
          entry.sink.error?.(message.payload);
        }
        break;
      case "complete":
        if (entry) {
          this.subscriptions.delete(message.id);
          entry.sink.complete?.();
        }
        break;
      default:
        break;
    }
  }

  sendSubscribe(id) {
    const { request } = this.subscriptions.get(id);
    const variables =
      typeof request.variables === "function" ? request.variables() : request.variables || {};
    const payload = { query: request.query, variables };
    if (request.operationName) payload.operationName = request.operationName;
    this.send({ id, type: "subscribe", payload });
  }

  send(message) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(message));
    }
  }

  schedulePing() {
    clearTimeout(this.timers.ping);
    this.timers.ping = setTimeout(() => {
      this.send({ type: "ping" });
      this.timers.pong = setTimeout(() => this.drop("no answer to a ping"), this.pongTimeout);
    }, this.pingInterval);
  }

  /** Give up on the current socket (it may be half-dead) and schedule a new one. */
  drop(reason) {
    if (!this.socket) return;
    const socket = this.detach();
    try {
      socket.close(4000, reason.slice(0, 100));
    } catch {
      // already closing
    }
    this.scheduleRetry(reason);
  }

  /** Forget the current socket; its late events are ignored. */
  detach() {
    const socket = this.socket;
    if (socket) socket.onopen = socket.onmessage = socket.onerror = socket.onclose = null;
    this.socket = null;
    this.acknowledged = false;
    this.clearTimers();
    return socket;
  }

  scheduleRetry(reason) {
    if (this.closed) return;
    const ceiling = Math.min(this.maxDelay, this.minDelay * 2 ** this.attempt);
    const delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
    this.attempt += 1;
    clearTimeout(this.timers.retry);
    this.timers.retry = setTimeout(() => {
      this.timers.retry = null;
      this.connect();
    }, delay);
    this.setStatus("waiting", reason, Date.now() + delay);
  }

  clearTimers() {
    for (const name of ["ack", "ping", "pong"]) clearTimeout(this.timers[name]);
  }
}

function closeReason(event) {
  if (event.code === 1006) return "the connection was lost";
  if (event.reason) return `${event.reason} (${event.code})`;
  return `closed with code ${event.code}`;
}
