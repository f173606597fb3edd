// The chat view: the signed-in user's sessions on the left, the open session's conversation on the right.
// History comes over REST, live messages, agent reply streams and typing over the realtime connection.
// User text is only ever put into the page with textContent.

import * as api from "./api.js";

const SESSION_PAGE = 50;
const TYPING_IDLE_MS = 3_000; // stop saying "typing" after this long without a keystroke
const TYPING_STALE_MS = 8_000; // forget someone's typing if their "stopped" never arrives

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
// Seconds in session titles: sessions opened in the same minute must still be told apart.
const createdTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
const timeOnly = new Intl.DateTimeFormat(undefined, { timeStyle: "short" });
const STATE_LABELS = { active: "Active", expired: "Expired", resolved: "Resolved" };
const CONNECTION_LABELS = { online: "Live", connecting: "Connecting…", offline: "Offline, reconnecting…" };

const byId = (id) => document.getElementById(id);

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function sessionTitle(session) {
  const title = session.metadata && session.metadata.title;
  return typeof title === "string" && title.trim() ? title.trim() : `Session of ${createdTime.format(new Date(session.createdAt))}`;
}

function sessionDetails(session) {
  const parts = [STATE_LABELS[session.state] ?? session.state];
  if (session.handoff) parts.push(session.handoff.status === "waiting" ? "waiting for a person" : "with a person");
  else if (session.agent) parts.push(`agent ${session.agent}`);
  return parts.join(" · ");
}

function agentName(metadata) {
  return metadata && typeof metadata.agent === "string" ? metadata.agent : null;
}

function authorOf(message, me) {
  if (message.type === "system") return "System";
  if (message.direction === "inbound") return message.userId === me.id ? "You" : "User";
  const agent = agentName(message.metadata);
  if (agent === "human") return "Support";
  return agent ? `Agent (${agent})` : "Agent";
}

function kindOf(message, me) {
  if (message.type === "system") return "system";
  return message.direction === "inbound" && message.userId === me.id ? "mine" : "theirs";
}

function messageElement(author, kind, createdAt, text) {
  const article = element("article", "message");
  article.dataset.kind = kind;
  const head = element("header", "message-head");
  head.append(element("span", "message-author", author));
  if (createdAt) {
    const time = element("time", "message-time", timeOnly.format(new Date(createdAt)));
    time.dateTime = createdAt;
    time.title = dateTime.format(new Date(createdAt));
    head.append(time);
  }
  article.append(head, element("p", "message-text", text));
  return article;
}

/** Wires the chat view to the page; `realtime` is the shared /ws client. Returns `{show, hide, open}`. */
export function mountChat(realtime) {
  const view = byId("chat");
  const list = byId("session-list");
  const sessionsEmpty = byId("sessions-empty");
  const moreSessions = byId("more-sessions");
  const newSession = byId("new-session");
  const title = byId("conversation-title");
  const meta = byId("conversation-meta");
  const connection = byId("connection");
  const resumeButton = byId("resume");
  const resolveButton = byId("resolve");
  const errorBox = byId("chat-error");
  const scroller = byId("messages-scroll");
  const loadEarlier = byId("load-earlier");
  const empty = byId("conversation-empty");
  const log = byId("messages");
  const typingLine = byId("typing");
  const composer = byId("composer");
  const input = byId("message-input");
  const sendButton = byId("send");

  let me = null;
  let sessions = new Map(); // sessionId → session, in list order
  let sessionsTotal = 0;
  let current = null; // the open session and what is on screen of it
  let typingTimer = 0;
  let openSeq = 0;

  function showError(error) {
    errorBox.textContent = error ? error.message || String(error) : "";
  }

  // ---- sessions list ----

  function renderSessions() {
    list.replaceChildren();
    for (const session of sessions.values()) {
      const link = element("a");
      link.href = `#/sessions/${session.sessionId}`;
      if (current && current.session.sessionId === session.sessionId) link.setAttribute("aria-current", "page");
      const state = element("span", "session-state", sessionDetails(session));
      state.dataset.state = session.state;
      link.append(element("span", "session-name", sessionTitle(session)), state);
      const item = element("li");
      item.append(link);
      list.append(item);
    }
    sessionsEmpty.hidden = sessions.size > 0;
    moreSessions.hidden = sessions.size >= sessionsTotal;
  }

  async function loadSessions({ more = false } = {}) {
    const page = await api.listSessions(me.id, { limit: SESSION_PAGE, offset: more ? sessions.size : 0 });
    if (!more) sessions = new Map();
    for (const session of page.sessions) sessions.set(session.sessionId, session);
    sessionsTotal = page.total;
    renderSessions();
  }

  function updateSession(session) {
    if (sessions.has(session.sessionId)) sessions.set(session.sessionId, session);
    else {
      sessions = new Map([[session.sessionId, session], ...sessions]);
      sessionsTotal += 1;
    }
    if (current && current.session.sessionId === session.sessionId) {
      current.session = session;
      renderHeader();
    }
    renderSessions();
  }

  // ---- conversation header and composer ----

  function renderHeader() {
    const session = current && current.session;
    title.textContent = session ? sessionTitle(session) : "No session open";
    meta.textContent = session ? sessionDetails(session) : "";
    resolveButton.disabled = !session || session.isResolved;
    resumeButton.hidden = !session || session.state !== "expired";
    const writable = Boolean(session) && session.state === "active";
    input.disabled = !writable;
    sendButton.disabled = !writable;
    empty.hidden = Boolean(session);
    loadEarlier.hidden = !current || !current.hasMoreBefore;
  }

  function renderConnection(status) {
    connection.dataset.status = status;
    connection.textContent = CONNECTION_LABELS[status] ?? status;
  }

  // ---- messages ----

  function nearBottom() {
    return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
  }

  function scrollToBottom() {
    scroller.scrollTop = scroller.scrollHeight;
  }

  function insertMessage(message) {
    if (!current || message.sessionId !== current.session.sessionId) return;
    realtime.seen(message);
    const streamId = message.metadata && message.metadata.streamId;
    const draft = streamId ? current.drafts.get(streamId) : null;
    if (current.nodes.has(message.id)) {
      // Already shown (the REST answer and the live event both bring a sent message): messages never change.
      if (draft) draft.node.remove();
      current.drafts.delete(streamId);
      return;
    }
    const node = messageElement(authorOf(message, me), kindOf(message, me), message.createdAt, message.content);
    if (draft) {
      // The stored reply takes the place of the text streamed so far.
      draft.node.replaceWith(node);
      current.drafts.delete(streamId);
    } else {
      // Ids are time-ordered: find the first message that is newer and go before it.
      const later = [...current.nodes.keys()].filter((id) => id > message.id).sort()[0];
      if (later) current.nodes.get(later).before(node);
      else {
        const firstDraft = current.drafts.values().next().value;
        if (firstDraft) firstDraft.node.before(node);
        else log.append(node);
      }
    }
    current.nodes.set(message.id, node);
    if (!current.oldestId || message.id < current.oldestId) current.oldestId = message.id;
  }

  function showMessages(messages, { stick = false } = {}) {
    const follow = stick || nearBottom();
    for (const message of messages) insertMessage(message);
    if (follow) scrollToBottom();
  }

  function onDelta(event) {
    if (!current || event.sessionId !== current.session.sessionId) return;
    const follow = nearBottom();
    let draft = current.drafts.get(event.streamId);
    if (!draft) {
      const node = messageElement(`Agent (${event.agent})`, "theirs", null, "");
      node.setAttribute("aria-busy", "true"); // assistive tech reads the reply once, when it is complete
      log.append(node);
      draft = { node, parts: [] };
      current.drafts.set(event.streamId, draft);
    }
    draft.parts[event.index] = event.delta;
    draft.node.querySelector(".message-text").textContent = draft.parts.join("");
    if (follow) scrollToBottom();
  }

  // ---- typing ----

  function renderTyping() {
    if (!current || current.typers.size === 0) {
      typingLine.textContent = "";
      return;
    }
    const keys = [...current.typers.keys()];
    typingLine.textContent = keys.some((key) => key.startsWith("agent:")) ? "Agent is typing…" : "Someone is typing…";
  }

  function setTyping(key, isTyping) {
    if (!current) return;
    clearTimeout(current.typers.get(key));
    if (isTyping) current.typers.set(key, setTimeout(() => setTyping(key, false), TYPING_STALE_MS));
    else current.typers.delete(key);
    renderTyping();
  }

  function onTyping(event) {
    if (!current || event.sessionId !== current.session.sessionId || (event.userId && event.userId === me.id)) return;
    setTyping(event.agent ? `agent:${event.agent}` : `user:${event.userId}`, event.isTyping);
  }

  function onLiveMessage(message) {
    if (!current || message.sessionId !== current.session.sessionId) return;
    if (message.direction === "outbound") {
      const agent = agentName(message.metadata);
      if (agent && agent !== "human") setTyping(`agent:${agent}`, false);
      else if (message.userId) setTyping(`user:${message.userId}`, false);
    }
    showMessages([message]);
    // Agents can hand off or resolve a session along with a message: read its state again.
    if (message.direction === "outbound" || message.type === "system") refreshSession(message.sessionId);
  }

  async function refreshSession(sessionId) {
    try {
      updateSession(await api.getSession(sessionId));
    } catch (error) {
      if (error.status === 404) dropSession(sessionId, "This session is no longer available.");
    }
  }

  function lastSeenId() {
    let last = null;
    for (const id of current.nodes.keys()) if (!last || id > last) last = id;
    return last;
  }

  async function onLeft(event) {
    if (!current || event.sessionId !== current.session.sessionId) return;
    const shown = current;
    try {
      updateSession(await api.getSession(event.sessionId));
      // Still readable (the change did not concern this user after all): listen again from where we were.
      if (current === shown) realtime.join(event.sessionId, lastSeenId());
    } catch (error) {
      if (error.status === 404) dropSession(event.sessionId, "This session is no longer available to you.");
      else showError(error);
    }
  }

  function dropSession(sessionId, message) {
    sessions.delete(sessionId);
    renderSessions();
    if (current && current.session.sessionId === sessionId) {
      close();
      showError({ message });
    }
  }

  // ---- opening, sending, resolving ----

  function close() {
    if (current) for (const timer of current.typers.values()) clearTimeout(timer);
    current = null;
    realtime.leave();
    log.replaceChildren();
    typingLine.textContent = "";
    renderHeader();
    renderSessions();
  }

  /** Opens a session by id (null closes the conversation). */
  async function open(sessionId) {
    const seq = ++openSeq;
    showError(null);
    if (!sessionId) {
      close();
      return;
    }
    if (current && current.session.sessionId === sessionId) return;
    try {
      const [session, page] = await Promise.all([api.getSession(sessionId), api.listMessages(sessionId)]);
      if (seq !== openSeq) return; // another session was chosen meanwhile
      close();
      current = { session, nodes: new Map(), drafts: new Map(), typers: new Map(), oldestId: null, hasMoreBefore: page.hasMore };
      updateSession(session);
      showMessages(page.messages, { stick: true });
      const last = page.messages.length ? page.messages[page.messages.length - 1].id : null;
      realtime.join(sessionId, last);
      if (!input.disabled) input.focus();
    } catch (error) {
      if (seq !== openSeq) return;
      if (error.status === 404) dropSession(sessionId, "This session does not exist, or it is not yours.");
      else showError(error);
    }
  }

  async function loadOlder() {
    if (!current || !current.oldestId) return;
    const session = current;
    loadEarlier.disabled = true;
    try {
      const page = await api.listMessages(session.session.sessionId, { before: session.oldestId });
      if (current !== session) return;
      const height = scroller.scrollHeight;
      for (const message of page.messages) insertMessage(message);
      // Keep the message the reader was looking at where it was.
      scroller.scrollTop += scroller.scrollHeight - height;
      current.hasMoreBefore = page.hasMore;
      renderHeader();
    } catch (error) {
      showError(error);
    } finally {
      loadEarlier.disabled = false;
    }
  }

  async function send() {
    const content = input.value;
    if (!current || !content.trim() || sendButton.disabled) return;
    const session = current;
    showError(null);
    clearTimeout(typingTimer);
    realtime.typing(false);
    sendButton.disabled = true;
    try {
      const message = await api.sendMessage(session.session.sessionId, content, api.randomId());
      if (input.value === content) input.value = "";
      if (current === session) showMessages([message], { stick: true });
    } catch (error) {
      showError(error);
      if (error.code === "session_expired" || error.code === "session_resolved") refreshSession(session.session.sessionId);
    } finally {
      renderHeader();
      if (!input.disabled) input.focus();
    }
  }

  async function resolve() {
    if (!current) return;
    showError(null);
    resolveButton.disabled = true;
    try {
      updateSession(await api.resolveSession(current.session.sessionId));
    } catch (error) {
      showError(error);
      renderHeader();
    }
  }

  async function resume() {
    if (!current) return;
    showError(null);
    const session = current;
    try {
      const result = await api.resumeSession(session.session.sessionId);
      if (current !== session) return;
      updateSession(result.session);
      showMessages(result.messages, { stick: true });
      realtime.join(result.session.sessionId, lastSeenId());
      input.focus();
    } catch (error) {
      showError(error);
    }
  }

  async function create() {
    showError(null);
    newSession.disabled = true;
    try {
      const session = await api.createSession();
      updateSession(session);
      location.hash = `#/sessions/${session.sessionId}`;
    } catch (error) {
      showError(error);
    } finally {
      newSession.disabled = false;
    }
  }

  // ---- events ----

  composer.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  input.addEventListener("keydown", (event) => {
    // Enter sends; Shift+Enter is a new line; Enter that confirms an input method's composition is neither.
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  input.addEventListener("input", () => {
    clearTimeout(typingTimer);
    if (!input.value) {
      realtime.typing(false);
      return;
    }
    realtime.typing(true);
    typingTimer = setTimeout(() => realtime.typing(false), TYPING_IDLE_MS);
  });
  newSession.addEventListener("click", create);
  moreSessions.addEventListener("click", () => loadSessions({ more: true }).catch(showError));
  resolveButton.addEventListener("click", resolve);
  resumeButton.addEventListener("click", resume);
  loadEarlier.addEventListener("click", loadOlder);

  realtime.on("message", onLiveMessage);
  realtime.on("delta", onDelta);
  realtime.on("typing", onTyping);
  realtime.on("status", renderConnection);
  realtime.on("left", onLeft);
  realtime.on("error", (error) => showError(error));

  return {
    /** Shows the view for `user` and opens `sessionId` if given. */
    async show(user, sessionId) {
      me = user;
      view.hidden = false;
      renderConnection(realtime.status);
      renderHeader();
      try {
        await loadSessions();
      } catch (error) {
        showError(error);
      }
      await open(sessionId);
      if (!current) newSession.focus();
    },
    /** Hides the view and forgets everything it showed (sign-out). */
    hide() {
      openSeq += 1;
      close();
      view.hidden = true;
      me = null;
      sessions = new Map();
      sessionsTotal = 0;
      list.replaceChildren();
      input.value = "";
      showError(null);
    },
    open,
  };
}
