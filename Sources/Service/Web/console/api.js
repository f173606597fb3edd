// REST client of the chat-backend API on the page's own origin.
//
// The access token lives in this module's memory only, so no other script can find it in storage. The refresh
// token is kept in sessionStorage: a reload of this tab stays signed in, other tabs and a restarted browser do not
// (the website widget keeps its guest's in localStorage instead, see `keepRefreshToken`). Refresh tokens are
// single-use and a second use signs the whole login out, so every refresh goes through one shared exchange, and
// under a Web Lock where the browser has them: tabs sharing a stored token never spend it twice.

const NETWORK_MESSAGE = "Cannot reach the server. Check the connection and try again.";
// Larger than any message id: `before` it gives the newest page of a session (the server's resume does the same).
const NEWEST = "ffffffff-ffff-ffff-ffff-ffffffffffff";

/** An error answer of the API: `status`, the stable `code`, and the server's human-readable `message`. */
export class ApiError extends Error {
  constructor(status, code, message, details = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

const auth = {
  accessToken: null,
  user: null,
  expiresAt: 0, // local clock, milliseconds
  refreshing: null,
  timer: 0,
};
const tokenListeners = new Set();
const signedOutListeners = new Set();

let storage = () => sessionStorage; // a function: merely reading `localStorage` throws where storage is blocked
let refreshKey = "chat-backend.console.refreshToken";

/** Keeps the refresh token under `key` in the storage `getStorage()` returns (call before anything else). */
export function keepRefreshToken(getStorage, key) {
  storage = getStorage;
  refreshKey = key;
}

function readRefreshToken() {
  try {
    return storage().getItem(refreshKey);
  } catch {
    return null; // storage disabled: the sign-in lasts as long as the page
  }
}

function writeRefreshToken(token) {
  try {
    if (token) storage().setItem(refreshKey, token);
    else storage().removeItem(refreshKey);
  } catch {
    // storage disabled: nothing to keep or forget
  }
}

function jwtClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part.padEnd(Math.ceil(part.length / 4) * 4, "=")));
  } catch {
    return {};
  }
}

// How long the token lives, from exp and iat of its payload: both are the server's clock, so a local clock that
// is off does not make the console refresh too late (or in a loop).
function lifetimeMs(token, expiresIn) {
  const { exp, iat } = jwtClaims(token);
  if (Number.isFinite(exp) && Number.isFinite(iat) && exp > iat) return (exp - iat) * 1000;
  if (Number.isFinite(exp)) return exp * 1000 - Date.now();
  return (Number(expiresIn) || 60) * 1000;
}

function scheduleRefresh(delay) {
  clearTimeout(auth.timer);
  auth.timer = setTimeout(() => {
    refresh().catch((error) => {
      // Signed out is final; anything else (server unreachable) is tried again a little later.
      if (auth.accessToken && !(error instanceof ApiError && error.status === 401)) scheduleRefresh(15_000);
    });
  }, Math.max(1_000, delay));
}

function adopt(body) {
  auth.accessToken = body.accessToken;
  auth.user = body.user;
  const lifetime = lifetimeMs(body.accessToken, body.expiresIn);
  auth.expiresAt = Date.now() + lifetime;
  writeRefreshToken(body.refreshToken);
  // A minute early, or a fifth of the lifetime when tokens are short-lived.
  scheduleRefresh(lifetime - Math.min(60_000, lifetime / 5));
  for (const listener of tokenListeners) listener(auth.accessToken);
}

function forget(reason) {
  clearTimeout(auth.timer);
  const wasSignedIn = auth.accessToken !== null || readRefreshToken() !== null;
  auth.accessToken = null;
  auth.user = null;
  auth.expiresAt = 0;
  writeRefreshToken(null);
  if (wasSignedIn) for (const listener of signedOutListeners) listener(reason);
}

async function call(method, path, { body, token } = {}) {
  const headers = { Accept: "application/json" };
  const raw = body instanceof Blob; // a file, sent as it is with its own type
  if (raw) headers["Content-Type"] = body.type || "application/octet-stream";
  else if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined || raw ? body : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, "network_error", NETWORK_MESSAGE);
  }
  const text = response.status === 204 ? "" : await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null; // not JSON: a proxy's error page, say
    }
  }
  if (!response.ok) {
    const error = data && data.error;
    if (error && typeof error.message === "string") {
      throw new ApiError(response.status, error.code, error.message, error.details ?? null);
    }
    throw new ApiError(response.status, `http_${response.status}`, `The server answered ${response.status}.`);
  }
  return data;
}

async function exchange() {
  const refreshToken = readRefreshToken();
  if (!refreshToken) {
    forget(null);
    throw new ApiError(401, "invalid_refresh_token", "Not signed in.");
  }
  try {
    adopt(await call("POST", "/auth/refresh", { body: { refreshToken } }));
    return auth.user;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) forget("Your sign-in has ended. Please sign in again.");
    throw error;
  }
}

/** Exchanges the refresh token for a new token pair; concurrent callers share one exchange. Resolves to the user. */
export function refresh() {
  if (!auth.refreshing) {
    const locks = navigator.locks;
    auth.refreshing = (locks ? locks.request(`refresh:${refreshKey}`, exchange) : exchange()).finally(() => {
      auth.refreshing = null;
    });
  }
  return auth.refreshing;
}

/** Signs in with a username and password; resolves to the user. */
export async function signIn(username, password) {
  const body = await call("POST", "/auth/login", { body: { username, password } });
  adopt(body);
  return body.user;
}

/** Makes a guest account (a website visitor, `POST /auth/guest`) and signs it in; resolves to the user. */
export async function signInAsGuest() {
  const body = await call("POST", "/auth/guest", { body: {} });
  adopt(body);
  return body.user;
}

/** After a reload: the user signed in with this tab's refresh token, or null when there is none. */
export async function restore() {
  if (!readRefreshToken()) return null;
  return refresh();
}

/** Signs out on the server (revoking both tokens), then forgets them here even if the server cannot be reached. */
export async function signOut() {
  try {
    if (auth.accessToken || readRefreshToken()) await request("POST", "/auth/logout");
  } finally {
    forget(null);
  }
}

/** The signed-in user (`id`, `username`, `role`, …), or null. */
export function currentUser() {
  return auth.user;
}

/** An access token that is not about to expire, refreshing it first when needed. */
export async function freshAccessToken() {
  if (!auth.accessToken || Date.now() > auth.expiresAt - 5_000) await refresh();
  return auth.accessToken;
}

/** Calls `listener(accessToken)` whenever a new access token is adopted (sign-in or refresh). */
export function onTokenChange(listener) {
  tokenListeners.add(listener);
}

/** Calls `listener(reason)` when the sign-in ends: signed out here (reason null) or refused by the server. */
export function onSignedOut(listener) {
  signedOutListeners.add(listener);
}

/** Calls an authenticated route; on a 401 the token is refreshed once and the call repeated. */
export async function request(method, path, body) {
  const token = await freshAccessToken();
  try {
    return await call(method, path, { body, token });
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 401) throw error;
    await refresh();
    return call(method, path, { body, token: auth.accessToken });
  }
}

const id = (value) => encodeURIComponent(value);

/** A page of a user's sessions, newest first: `{sessions, total, limit, offset}`. */
export function listSessions(userId, { limit = 50, offset = 0 } = {}) {
  return request("GET", `/api/users/${id(userId)}/sessions?limit=${limit}&offset=${offset}`);
}

/** Opens a new chat session owned by the caller. */
export function createSession() {
  return request("POST", "/api/sessions", {});
}

/** Reads one session. */
export function getSession(sessionId) {
  return request("GET", `/api/sessions/${id(sessionId)}`);
}

/** Marks a session resolved (final). */
export function resolveSession(sessionId) {
  return request("POST", `/api/sessions/${id(sessionId)}/resolve`);
}

/** The owner asks for a person: the session waits in the staff inbox; resolves to the session. */
export function requestPerson(sessionId) {
  return request("POST", `/api/sessions/${id(sessionId)}/handoff`);
}

/** Makes an expired session active again: `{session, messages, hasMoreMessages}`. */
export function resumeSession(sessionId) {
  return request("POST", `/api/sessions/${id(sessionId)}/resume`);
}

/** The newest `limit` messages before `before` (default: the newest of all), oldest first: `{messages, hasMore}`. */
export function listMessages(sessionId, { before = NEWEST, limit = 50 } = {}) {
  return request("GET", `/api/sessions/${id(sessionId)}/messages?before=${id(before)}&limit=${limit}`);
}

/** Marks the session read up to `lastMessageId`: `{sessionId, userId, lastMessageId, readAt, unread}`. */
export function markRead(sessionId, lastMessageId) {
  return request("POST", `/api/sessions/${id(sessionId)}/read`, { lastMessageId });
}

/** Staff: sessions waiting for a person and those the caller claimed (admins: every claimed one), oldest first. */
export function listHandoffs() {
  return request("GET", "/api/handoffs");
}

/** Staff: takes a waiting session; resolves to the session (409 `handoff_unavailable` if someone else has it). */
export function claimHandoff(sessionId) {
  return request("POST", `/api/handoffs/${id(sessionId)}/claim`);
}

/** Staff: hands a claimed session back to the default agent; resolves to the session. */
export function releaseHandoff(sessionId) {
  return request("POST", `/api/handoffs/${id(sessionId)}/release`);
}

/** Sends a text message; `clientMessageId` makes a retry return the first message instead of storing two. */
export function sendMessage(sessionId, content, clientMessageId, attachments = []) {
  return request("POST", `/api/sessions/${id(sessionId)}/messages`, { content, clientMessageId, attachments });
}

/** Uploads a file into a session (its bytes as the body): the attachment, whose `id` a message then carries. */
export function uploadAttachment(sessionId, file) {
  return request("POST", `/api/sessions/${id(sessionId)}/attachments?filename=${id(file.name || "file")}`, file);
}

/** A random id for `clientMessageId` (crypto.randomUUID needs a secure context; getRandomValues does not). */
export function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return "c-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
