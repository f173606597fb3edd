// The chat view: the signed-in user's sessions on the left (with what is unread in each), the open session's
// conversation on the right (the pane of conversation.js). User text is only ever put into the page with textContent.

import * as api from "./api.js";
import {
  STATE_LABELS, byId, element, focusStayed, merged, mountConversation, renderConnection, sessionTitle, unreadBadge,
} from "./conversation.js";

const SESSION_PAGE = 50;

function sessionDetails(session) {
  const parts = [STATE_LABELS[session.state] ?? session.state];
  if (session.handoff) parts.push(session.handoff.status === "waiting" ? "waiting for a person" : "with a person");
  else if (session.agent) parts.push(`agent ${session.agent}`);
  return parts.join(" · ");
}

/** Wires the chat view to the page; `realtime` is the shared /ws client. Returns `{start, show, suspend, stop, open}`. */
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

  let me = null;
  let sessions = new Map(); // sessionId → session, in list order
  let sessionsTotal = 0;

  const pane = mountConversation(realtime, {
    scroller: byId("messages-scroll"),
    loadEarlier: byId("load-earlier"),
    empty: byId("conversation-empty"),
    log: byId("messages"),
    typingLine: byId("typing"),
    composer: byId("composer"),
    input: byId("message-input"),
    sendButton: byId("send"),
    files: byId("message-files"),
  }, {
    canWrite: (session) => Boolean(session) && session.state === "active",
    renderHeader,
    onMessage(message) {
      // A reply by another agent than the session's (the first one routed, or handed on): no event says so.
      const agent = message.metadata && message.metadata.agent;
      const session = pane.session;
      if (typeof agent === "string" && agent !== "human" && session && !session.handoff && session.agent !== agent) {
        refreshSession(message.sessionId);
      }
    },
    // Resolved, resumed, handed to a person, claimed, released: the server says so as it happens.
    onUpdated: updateSession,
    onLeft,
    onRead(sessionId, unread) {
      const session = sessions.get(sessionId);
      if (!session || session.unread === unread) return;
      sessions.set(sessionId, { ...session, unread });
      renderSessions();
    },
    onUnread(sessionId) {
      const session = sessions.get(sessionId);
      if (!session) return;
      sessions.set(sessionId, { ...session, unread: (session.unread ?? 0) + 1 });
      renderSessions();
    },
    onError: showError,
    onSendFailed(error, sessionId) {
      if (error.code === "session_expired" || error.code === "session_resolved") refreshSession(sessionId);
    },
  });

  function showError(error) {
    errorBox.textContent = error ? error.message || String(error) : "";
  }

  // ---- sessions list ----

  function renderSessions() {
    list.replaceChildren();
    const open = pane.session;
    for (const session of sessions.values()) {
      const link = element("a");
      link.href = `#/sessions/${session.sessionId}`;
      if (open && open.sessionId === session.sessionId) link.setAttribute("aria-current", "page");
      const row = element("span", "session-row");
      row.append(element("span", "session-name", sessionTitle(session)));
      const badge = unreadBadge(session.unread);
      if (badge) row.append(badge);
      const state = element("span", "session-state", sessionDetails(session));
      state.dataset.state = session.state;
      link.append(row, state);
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
    const known = sessions.get(session.sessionId);
    if (known && known.updatedAt > session.updatedAt) return; // a read that crossed a newer change
    if (known) sessions.set(session.sessionId, merged(known, session));
    else {
      sessions = new Map([[session.sessionId, session], ...sessions]);
      sessionsTotal += 1;
    }
    pane.setSession(session);
    renderSessions();
  }

  // ---- conversation header ----

  function renderHeader(session) {
    title.textContent = session ? sessionTitle(session) : "No session open";
    meta.textContent = session ? sessionDetails(session) : "";
    resolveButton.disabled = !session || session.isResolved;
    resumeButton.hidden = !session || session.state !== "expired";
  }

  async function refreshSession(sessionId) {
    try {
      updateSession(await api.getSession(sessionId));
    } catch (error) {
      if (error.status === 404) dropSession(sessionId, "This session is no longer available.");
    }
  }

  async function onLeft(event) {
    try {
      const session = await api.getSession(event.sessionId);
      updateSession(session);
      // Still readable (the change did not concern this user after all): listen again from where we were.
      if (pane.isOpen(event.sessionId)) pane.rejoin();
    } catch (error) {
      if (error.status === 404) dropSession(event.sessionId, "This session is no longer available to you.");
      else showError(error);
    }
  }

  function dropSession(sessionId, message) {
    sessions.delete(sessionId);
    if (pane.isOpen(sessionId)) {
      pane.close();
      showError({ message });
    }
    renderSessions();
  }

  // ---- opening, resolving, resuming, creating ----

  /**
   * Opens a session by id (null closes the conversation), and puts the focus in it unless the person moved it away
   * from `focused` while it loaded.
   */
  async function open(sessionId, focused = document.activeElement) {
    showError(null);
    if (!sessionId) {
      pane.close();
      renderSessions();
      return;
    }
    if (pane.isOpen(sessionId)) return;
    try {
      const session = await pane.open(sessionId);
      if (!session) return; // another session was chosen meanwhile
      updateSession(session);
      pane.focusInput(focused);
    } catch (error) {
      if (error.status === 404) dropSession(sessionId, "This session does not exist, or it is not yours.");
      else showError(error);
    }
  }

  async function resolve() {
    const session = pane.session;
    if (!session) return;
    showError(null);
    resolveButton.disabled = true;
    try {
      updateSession(await api.resolveSession(session.sessionId));
    } catch (error) {
      showError(error);
      pane.render();
    }
  }

  async function resume() {
    const session = pane.session;
    if (!session) return;
    showError(null);
    try {
      const result = await api.resumeSession(session.sessionId);
      if (!pane.isOpen(session.sessionId)) return;
      updateSession(result.session);
      pane.showMessages(result.messages, { stick: true });
      pane.rejoin();
      pane.focusInput(resumeButton);
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

  newSession.addEventListener("click", create);
  moreSessions.addEventListener("click", () => loadSessions({ more: true }).catch(showError));
  resolveButton.addEventListener("click", resolve);
  resumeButton.addEventListener("click", resume);

  realtime.on("status", (status) => renderConnection(connection, status));
  realtime.on("error", (error) => {
    if (!view.hidden) showError(error);
  });

  return {
    /** The signed-in user (before the first `show`). */
    start(user) {
      me = user;
      pane.setUser(user);
    },
    /** Shows the view and opens `sessionId` if given; `focus`: put the focus in it when nothing is open. */
    async show(sessionId, { focus = false } = {}) {
      const focused = document.activeElement;
      view.hidden = false;
      renderConnection(connection, realtime.status);
      pane.render();
      try {
        await loadSessions();
      } catch (error) {
        showError(error);
      }
      await open(sessionId, focused);
      if (focus && !pane.session && focusStayed(focused)) newSession.focus();
    },
    /** Hides the view (another one is shown) and closes its conversation. */
    suspend() {
      pane.close();
      view.hidden = true;
      showError(null);
    },
    /** Hides the view and forgets everything it showed (sign-out). */
    stop() {
      pane.forget();
      view.hidden = true;
      me = null;
      sessions = new Map();
      sessionsTotal = 0;
      list.replaceChildren();
      showError(null);
    },
    open,
  };
}
