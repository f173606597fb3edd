// Client of the plain JSON WebSocket at /ws: one connection, authenticated with the access token, joined to the
// one session on screen. Server events go out to callbacks registered with `on`; staff connections also hear of
// every change of the handoff queue (`handoff`), joined or not.
//
// A connection lives only as long as the token it authenticated with, so after every token refresh it is replaced
// by a new one; rejoining with the last message id seen makes the server replay whatever arrived in between.

const BACKOFF_MS = [500, 1_000, 2_000, 4_000, 8_000, 15_000, 30_000];
const TYPING_REPEAT_MS = 3_000; // well inside the 8 s after which the conversation view forgets a silent typist
// Error codes after which the server closes the connection because of its token.
const TOKEN_ERRORS = new Set(["unauthenticated", "invalid_token", "token_expired", "token_revoked"]);

/** Connection to /ws; `getToken(fresh)` resolves to an access token, a newly refreshed one when `fresh` is true. */
export class Realtime {
  constructor({ getToken }) {
    this.getToken = getToken;
    this.listeners = new Map();
    this.socket = null;
    this.authenticated = false;
    this.running = false;
    this.generation = 0;
    this.attempt = 0;
    this.retryTimer = 0;
    this.needFreshToken = false;
    this.sessionId = null;
    this.lastMessageId = null;
    this.status = "offline";
    this.typingSent = false;
    this.typingSentAt = 0;
    this.reconnectNow = () => { if (this.running && !this.socket) this.open(); };
  }

  /**
   * Registers `callback` for an event: message, delta, typing, presence, read, handoff, updated (session.updated),
   * left, joined, error, status.
   */
  on(event, callback) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(callback);
  }

  /** Connects, and keeps reconnecting until `stop`. */
  start() {
    if (this.running) return;
    this.running = true;
    addEventListener("online", this.reconnectNow);
    this.open();
  }

  /** Closes the connection and stops reconnecting (sign-out). */
  stop() {
    this.running = false;
    removeEventListener("online", this.reconnectNow);
    this.drop();
    this.sessionId = null;
    this.lastMessageId = null;
    this.setStatus("offline");
  }

  /** Replaces the connection with one authenticated by the current token (after a token refresh). */
  reauthenticate() {
    if (!this.running) return;
    this.drop();
    this.open();
  }

  /** Joins `sessionId` (leaving the previous one); messages after `lastMessageId` are replayed first. */
  join(sessionId, lastMessageId = null) {
    if (this.sessionId && this.sessionId !== sessionId) this.send({ type: "leave", sessionId: this.sessionId });
    this.sessionId = sessionId;
    this.lastMessageId = lastMessageId;
    this.typingSent = false;
    this.sendJoin();
  }

  /** Leaves the joined session, if any (only if it is `sessionId`, when that is given). */
  leave(sessionId = null) {
    if (sessionId && sessionId !== this.sessionId) return;
    if (this.sessionId) this.send({ type: "leave", sessionId: this.sessionId });
    this.sessionId = null;
    this.lastMessageId = null;
  }

  /**
   * Tells the others in the joined session whether this user is typing: sent when it changes, and "typing" again
   * every TYPING_REPEAT_MS while it goes on (the others forget a typist they have not heard from for a while).
   */
  typing(isTyping) {
    if (!this.sessionId) return;
    if (this.typingSent === isTyping && !(isTyping && Date.now() - this.typingSentAt >= TYPING_REPEAT_MS)) return;
    if (this.send({ type: "typing", sessionId: this.sessionId, isTyping })) {
      this.typingSent = isTyping;
      this.typingSentAt = Date.now();
    }
  }

  /** Remembers a message of the joined session as seen, so a rejoin replays only what came after it. */
  seen(message) {
    if (message.sessionId !== this.sessionId) return;
    // Message ids are time-ordered UUIDv7 in lowercase: comparing the strings compares the times.
    if (!this.lastMessageId || message.id > this.lastMessageId) this.lastMessageId = message.id;
  }

  emit(event, value) {
    for (const callback of this.listeners.get(event) ?? []) {
      try {
        callback(value);
      } catch (error) {
        console.error(error); // one broken view must not stop the others from hearing the event
      }
    }
  }

  setStatus(status) {
    if (this.status === status) return;
    this.status = status;
    this.emit("status", status);
  }

  send(event) {
    if (!this.socket || !this.authenticated || this.socket.readyState !== WebSocket.OPEN) return false;
    this.socket.send(JSON.stringify(event));
    return true;
  }

  sendJoin() {
    if (!this.sessionId) return;
    const event = { type: "join", sessionId: this.sessionId, id: `join:${this.sessionId}` };
    if (this.lastMessageId) event.lastMessageId = this.lastMessageId;
    this.send(event);
  }

  drop() {
    this.generation += 1;
    clearTimeout(this.retryTimer);
    const socket = this.socket;
    this.socket = null;
    this.authenticated = false;
    if (socket) socket.close(1000);
  }

  async open() {
    clearTimeout(this.retryTimer);
    const generation = ++this.generation;
    this.setStatus("connecting");
    let token;
    try {
      token = await this.getToken(this.needFreshToken);
    } catch (error) {
      if (generation !== this.generation || !this.running) return;
      if (error && error.status === 401) this.stop(); // signed out: the app shows the sign-in form
      else this.retry();
      return;
    }
    if (generation !== this.generation || !this.running) return;
    this.needFreshToken = false;
    const url = new URL("/ws", location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(url);
    this.socket = socket;
    socket.addEventListener("open", () => {
      socket.send(JSON.stringify({ type: "authenticate", token, id: "authenticate" }));
    });
    socket.addEventListener("message", (event) => {
      if (this.socket === socket) this.receive(event.data);
    });
    socket.addEventListener("close", (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.authenticated = false;
      // 1008: the token expired or was revoked (signed out elsewhere, account disabled or deleted). Reconnect with
      // a newly refreshed one; when the refresh is refused too, the sign-in has ended and `open` stops.
      if (event.code === 1008) this.needFreshToken = true;
      if (this.running) this.retry();
    });
  }

  retry() {
    this.setStatus("offline");
    const base = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    this.attempt += 1;
    // Jitter, so that clients dropped together by a restart do not all come back in the same instant.
    this.retryTimer = setTimeout(() => this.open(), base * (0.75 + Math.random() * 0.5));
  }

  receive(data) {
    let event;
    try {
      event = JSON.parse(data);
    } catch {
      return;
    }
    switch (event.type) {
      case "ack":
        if (event.event === "authenticate") {
          this.authenticated = true;
          this.attempt = 0;
          this.typingSent = false;
          this.setStatus("online");
          this.sendJoin();
        } else if (event.event === "join") {
          this.emit("joined", event);
        }
        break;
      case "message":
        this.seen(event.message);
        this.emit("message", event.message);
        break;
      case "message.updated":
      case "message.deleted":
        this.emit("changed", event.message);
        break;
      case "message.delta":
        this.emit("delta", event);
        break;
      case "typing":
        this.emit("typing", event);
        break;
      case "presence":
        this.emit("presence", event);
        break;
      case "read":
        this.emit("read", event);
        break;
      case "handoff":
        this.emit("handoff", event);
        break;
      case "session.updated":
        this.emit("updated", event);
        break;
      case "left":
        if (event.sessionId === this.sessionId) {
          this.sessionId = null;
          this.lastMessageId = null;
        }
        this.emit("left", event);
        break;
      case "resync":
        if (event.sessionId === this.sessionId) this.sendJoin();
        break;
      case "error":
        if (event.error && TOKEN_ERRORS.has(event.error.code)) {
          // The server closes the connection next; the reconnect asks for a newly refreshed token.
          this.needFreshToken = true;
          break;
        }
        this.emit("error", event.error ?? { code: "error", message: "The realtime connection reported an error." });
        break;
      default:
        break;
    }
  }
}
