// The widget's page (/widget/, in a frame on a website; /widget.js makes the frame): a compact chat for a website
// visitor, as a guest account (POST /auth/guest). Its refresh token and the open conversation are kept in
// localStorage, so a reload continues the same conversation. The conversation pane, the API and the realtime
// client are the console's own modules.

import * as api from "/console/api.js";
import { Realtime } from "/console/realtime.js";
import { byId, mountConversation, renderConnection } from "/console/conversation.js";

const SESSION_KEY = "chat-backend.widget.sessionId";
const JOIN_WAIT_MS = 3_000;

api.keepRefreshToken(() => localStorage, "chat-backend.widget.refreshToken");

const stateLine = byId("state");
const errorBox = byId("error");
const personButton = byId("talk-to-person");
const againButton = byId("new-conversation");
const connection = byId("connection");

let user = null;
let unavailable = false; // the server has guest access off
let shown = true; // the frame is on screen (the loader says when it is not)
let resumed = false;
const joins = new Map(); // sessionId → resolve, for the first join of a new conversation

function remember(sessionId) {
  try {
    if (sessionId) localStorage.setItem(SESSION_KEY, sessionId);
    else localStorage.removeItem(SESSION_KEY);
  } catch {
    // storage blocked: the conversation lasts as long as the page
  }
}

function remembered() {
  try {
    return localStorage.getItem(SESSION_KEY);
  } catch {
    return null;
  }
}

function showError(error) {
  errorBox.textContent = error ? error.message || String(error) : "";
}

const realtime = new Realtime({
  getToken: async (fresh) => {
    if (fresh) await api.refresh();
    return api.freshAccessToken();
  },
});

const pane = mountConversation(realtime, {
  scroller: byId("messages-scroll"),
  loadEarlier: byId("load-earlier"),
  empty: byId("empty"),
  log: byId("messages"),
  typingLine: byId("typing"),
  composer: byId("composer"),
  input: byId("message-input"),
  sendButton: byId("send"),
  files: byId("message-files"),
}, {
  canWrite: (session) => !unavailable && (!session || !session.isResolved),
  renderHeader: renderState,
  create: startConversation,
  inView: () => shown,
  agentLabel: () => "Assistant",
  onError: showError,
  onSendFailed(error, sessionId) {
    // Expired (a day without messages): resume it and send again, once.
    if (error.code === "session_expired" && !resumed) {
      resumed = true;
      resume(sessionId).then(() => pane.send()).finally(() => { resumed = false; });
    }
  },
  onLeft() {
    // No longer readable: deleted (by an admin). Start afresh.
    remember(null);
    pane.close();
  },
});

function renderState(session) {
  const handoff = session && session.handoff;
  let text = "";
  if (unavailable) text = "Chat is not available right now.";
  else if (session && session.isResolved) text = "This conversation is resolved.";
  else if (handoff && handoff.status === "waiting") text = "Waiting for a person to join…";
  else if (handoff) text = "You are chatting with our support team.";
  stateLine.textContent = text;
  connection.hidden = unavailable;
  againButton.hidden = !session || !session.isResolved;
  personButton.hidden = unavailable || Boolean(handoff) || Boolean(session && session.isResolved);
  personButton.disabled = false;
}

// The visitor's account: the guest of this browser (its stored refresh token), or a new guest.
async function signIn() {
  if (user) return user;
  let signedIn = null;
  try {
    signedIn = await api.restore();
  } catch (error) {
    if (error.status !== 401) throw error; // a refused token: that guest is gone, make a new one
  }
  try {
    signedIn = signedIn ?? (await api.signInAsGuest());
  } catch (error) {
    if (error.code === "guest_access_disabled") {
      unavailable = true;
      pane.render();
    }
    throw error;
  }
  user = signedIn;
  pane.setUser(user);
  realtime.start();
  return user;
}

// Opens a new session for the first message of a conversation, and waits until live events of it arrive.
async function startConversation() {
  await signIn();
  const session = await api.createSession();
  remember(session.sessionId);
  const joined = new Promise((resolve) => {
    joins.set(session.sessionId, resolve);
    setTimeout(resolve, realtime.status === "online" ? JOIN_WAIT_MS : 0);
  });
  await pane.open(session.sessionId);
  await joined;
  joins.delete(session.sessionId);
}

async function resume(sessionId) {
  const result = await api.resumeSession(sessionId);
  pane.setSession(result.session);
  pane.showMessages(result.messages, { stick: true });
  pane.rejoin();
}

async function openConversation(sessionId) {
  try {
    const session = await pane.open(sessionId);
    if (session && session.state === "expired" && !session.isResolved) await resume(sessionId);
  } catch (error) {
    if (error.status !== 404) throw error;
    remember(null); // deleted meanwhile
    pane.render();
  }
}

realtime.on("status", (status) => renderConnection(connection, status));
realtime.on("joined", (ack) => joins.get(ack.sessionId)?.());

api.onSignedOut(() => {
  // The guest was deleted or disabled: the next message starts over as a new guest.
  user = null;
  realtime.stop();
  remember(null);
  pane.forget();
  stateLine.textContent = "This chat has ended. Write to start a new one.";
});

// The conversation (a new one if there is none yet) goes to the staff inbox at once, whatever agents there are;
// the session's note says a person will reply.
personButton.addEventListener("click", async () => {
  personButton.disabled = true;
  showError(null);
  try {
    if (!pane.session) await startConversation();
    const session = pane.session;
    if (session && !session.handoff && !session.isResolved) pane.setSession(await api.requestPerson(session.sessionId));
  } catch (error) {
    showError(error);
    personButton.disabled = false;
  }
});
againButton.addEventListener("click", () => {
  remember(null);
  showError(null);
  pane.close();
  pane.focusInput();
});

// The loader hears that the chat runs (a site the server does not allow gets an error page instead, and a note).
if (parent !== window) parent.postMessage({ chatBackendWidget: "started" }, "*");

// The loader's frame: Escape closes it; the loader says whether it is on screen (read markers move only then).
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && parent !== window) parent.postMessage({ chatBackendWidget: "close" }, "*");
});
addEventListener("message", (event) => {
  const what = event.source === parent && event.data ? event.data.chatBackendWidget : null;
  if (what !== "shown" && what !== "hidden") return;
  shown = what === "shown";
  if (shown) {
    pane.markRead();
    pane.focusInput();
  }
});

async function start() {
  try {
    await signIn();
    const sessionId = remembered();
    if (sessionId) await openConversation(sessionId);
    else pane.render();
  } catch (error) {
    if (!unavailable) showError(error);
    pane.render();
  }
  pane.focusInput();
}

start();
