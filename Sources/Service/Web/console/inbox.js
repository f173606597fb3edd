// The staff inbox (role agent or admin): the queue of sessions handed to people, waiting ones and those this staff
// member claimed (an admin also sees those others claimed), kept current by the realtime `handoff` events; and the
// open session's conversation (the pane of conversation.js) with Claim, Release and Resolve. The queue is kept
// while another view is shown, so the page title can say how many are waiting.

import * as api from "./api.js";
import {
  STATE_LABELS, byId, element, focusStayed, mountConversation, renderConnection, sessionTitle, timeOnly, unreadBadge,
} from "./conversation.js";

// Unread counts of sessions that are not open change without an event: read the queue again now and then.
const REFRESH_MS = 30_000;
const GROUP_TAGS = { waiting: "Waiting", mine: "Yours", others: "Claimed" };

/**
 * Wires the inbox view; `realtime` is the shared /ws client, `onWaiting(count)` hears how many sessions wait for
 * a person whenever the queue is read. Returns `{start, show, suspend, stop, open}`.
 */
export function mountInbox(realtime, { onWaiting }) {
  const view = byId("inbox");
  const queueTitle = byId("queue-title");
  const queueError = byId("queue-error");
  const groups = {
    waiting: { list: byId("queue-waiting"), empty: byId("queue-waiting-empty"), count: byId("queue-waiting-count") },
    mine: { list: byId("queue-mine"), empty: byId("queue-mine-empty"), count: byId("queue-mine-count") },
    others: { list: byId("queue-others"), box: byId("queue-others-group"), count: byId("queue-others-count") },
  };
  const title = byId("inbox-conversation-title");
  const meta = byId("inbox-conversation-meta");
  const connection = byId("inbox-connection");
  const claimButton = byId("claim");
  const releaseButton = byId("release");
  const resolveButton = byId("inbox-resolve");
  const errorBox = byId("inbox-error");
  const notice = byId("inbox-notice");
  const hint = byId("reply-hint");

  let me = null;
  let queue = []; // sessions, oldest first, as GET /api/handoffs lists them
  let loadSeq = 0;
  let reloadTimer = 0;
  let refreshTimer = 0;
  let releasing = null; // the session this staff member is handing back: its `left` event is expected

  const pane = mountConversation(realtime, {
    scroller: byId("inbox-messages-scroll"),
    loadEarlier: byId("inbox-load-earlier"),
    empty: byId("inbox-empty"),
    log: byId("inbox-messages"),
    typingLine: byId("inbox-typing"),
    composer: byId("inbox-composer"),
    input: byId("reply-input"),
    sendButton: byId("inbox-send"),
    files: byId("reply-files"),
  }, {
    canWrite: (session) => Boolean(session) && session.state === "active" && isMine(session),
    renderHeader,
    onLeft,
    onRead(sessionId, unread) {
      const session = queue.find((s) => s.sessionId === sessionId);
      if (!session || session.unread === unread) return;
      session.unread = unread;
      renderQueue();
    },
    onUnread(sessionId) {
      const session = queue.find((s) => s.sessionId === sessionId);
      if (!session) return;
      session.unread = (session.unread ?? 0) + 1;
      renderQueue();
    },
    onError: showError,
    onSendFailed(error, sessionId) {
      if (["handoff_not_claimed", "session_resolved", "session_expired"].includes(error.code)) refreshSession(sessionId);
    },
  });

  const isWaiting = (session) => Boolean(session.handoff) && session.handoff.status === "waiting";
  const isMine = (session) => Boolean(session.handoff) && session.handoff.status === "assigned" && session.handoff.assigneeId === me.id;
  const groupOf = (session) => (isWaiting(session) ? "waiting" : isMine(session) ? "mine" : "others");

  function showError(error) {
    errorBox.textContent = error ? error.message || String(error) : "";
    if (error) notice.textContent = "";
  }

  function showNotice(text) {
    notice.textContent = text;
  }

  // ---- the queue ----

  function queueItem(session) {
    const link = element("a");
    link.href = `#/inbox/${session.sessionId}`;
    if (pane.isOpen(session.sessionId)) link.setAttribute("aria-current", "page");
    const group = groupOf(session);
    const row = element("span", "session-row");
    row.append(element("span", "session-name", sessionTitle(session)));
    const badge = unreadBadge(session.unread);
    if (badge) row.append(badge);
    const details = element("span", "session-state");
    const tag = element("span", "tag", GROUP_TAGS[group]);
    tag.dataset.group = group;
    details.append(tag, ` since ${timeOnly.format(new Date(session.handoff.since))}`);
    const owner = session.owner; // who asked: a user, or a website visitor (a guest)
    if (owner) details.append(` · ${owner.role === "guest" ? "website visitor" : owner.username}`);
    link.append(row, details);
    const item = element("li");
    item.append(link);
    return item;
  }

  function renderQueue() {
    const items = { waiting: [], mine: [], others: [] };
    for (const session of queue) if (session.handoff) items[groupOf(session)].push(queueItem(session));
    for (const [name, group] of Object.entries(groups)) {
      group.list.replaceChildren(...items[name]);
      group.count.textContent = String(items[name].length);
      if (group.empty) group.empty.hidden = items[name].length > 0;
      if (group.box) group.box.hidden = items[name].length === 0;
    }
  }

  async function loadQueue() {
    const seq = ++loadSeq;
    try {
      const body = await api.listHandoffs();
      if (seq !== loadSeq || !me) return;
      queue = body.sessions;
      queueError.textContent = "";
      renderQueue();
      onWaiting(queue.filter(isWaiting).length);
    } catch (error) {
      if (seq === loadSeq && me) queueError.textContent = error.message;
    }
  }

  function reloadSoon(delay = 50) {
    clearTimeout(reloadTimer);
    reloadTimer = setTimeout(loadQueue, delay);
  }

  function onHandoff(event) {
    if (!me) return;
    reloadSoon();
    if (event.session && pane.isOpen(event.sessionId)) pane.setSession(event.session);
  }

  // ---- the conversation ----

  function handoffText(session) {
    if (session.isResolved) return "";
    if (isWaiting(session)) return `waiting for a person since ${timeOnly.format(new Date(session.handoff.since))}`;
    if (isMine(session)) return "claimed by you";
    if (session.handoff) return "claimed by another agent";
    return session.agent ? `with agent ${session.agent}` : "";
  }

  function renderHeader(session) {
    title.textContent = session ? sessionTitle(session) : "No session open";
    meta.textContent = session ? [STATE_LABELS[session.state] ?? session.state, handoffText(session)].filter(Boolean).join(" · ") : "";
    const open = Boolean(session) && !session.isResolved;
    const holder = open && Boolean(session.handoff) && (isMine(session) || me.role === "admin");
    claimButton.hidden = !open || !isWaiting(session) || session.state !== "active";
    releaseButton.hidden = !holder || isWaiting(session);
    resolveButton.hidden = !holder;
    if (!session) hint.textContent = "Choose a session from the queue.";
    else if (session.isResolved) hint.textContent = "This session is resolved.";
    else if (session.state !== "active") hint.textContent = "This session is no longer active.";
    else if (isWaiting(session)) hint.textContent = "Claim this session to reply.";
    else if (!isMine(session)) hint.textContent = "Another agent handles this session.";
    else hint.textContent = "Enter sends, Shift+Enter starts a new line.";
  }

  async function refreshSession(sessionId) {
    try {
      pane.setSession(await api.getSession(sessionId));
    } catch (error) {
      if (error.status === 404) drop(sessionId, "This session is no longer available to you.");
    }
  }

  async function onLeft(event) {
    if (event.sessionId === releasing) return;
    try {
      const session = await api.getSession(event.sessionId);
      pane.setSession(session);
      if (pane.isOpen(event.sessionId)) pane.rejoin();
    } catch (error) {
      if (error.status !== 404) showError(error);
      else if (event.reason === "claimed") drop(event.sessionId, "Another agent has taken this session.");
      else drop(event.sessionId, "This session is no longer available to you.");
    }
  }

  // Closes a session this staff member may no longer read; the address goes back to the inbox itself.
  function drop(sessionId, text) {
    queue = queue.filter((s) => s.sessionId !== sessionId);
    renderQueue();
    reloadSoon();
    if (!pane.isOpen(sessionId)) return;
    pane.close();
    if (!view.hidden) history.replaceState(null, "", "#/inbox");
    showNotice(text);
  }

  /**
   * Opens a session of the queue by id (null closes the conversation), and puts the focus in it unless the person
   * moved it away from `focused` while it loaded.
   */
  async function open(sessionId, focused = document.activeElement) {
    showError(null);
    showNotice("");
    if (!sessionId) {
      pane.close();
      renderQueue();
      return;
    }
    if (pane.isOpen(sessionId)) return;
    try {
      const session = await pane.open(sessionId);
      if (!session) return; // another session was chosen meanwhile
      renderQueue();
      pane.focusInput(focused);
    } catch (error) {
      if (error.status !== 404) {
        showError(error);
        return;
      }
      queue = queue.filter((s) => s.sessionId !== sessionId);
      renderQueue();
      showError({ message: "This session does not exist, or it is no longer in your queue." });
    }
  }

  async function act(button, call, after) {
    const session = pane.session;
    if (!session) return;
    showError(null);
    showNotice("");
    button.disabled = true;
    try {
      const updated = await call(session.sessionId);
      after(updated);
    } catch (error) {
      showError(error);
      refreshSession(session.sessionId);
    } finally {
      button.disabled = false;
      reloadSoon(0);
    }
  }

  claimButton.addEventListener("click", () => act(claimButton, api.claimHandoff, (session) => {
    pane.setSession(session);
    pane.focusInput(claimButton);
  }));
  resolveButton.addEventListener("click", () => act(resolveButton, api.resolveSession, (session) => {
    pane.setSession(session);
    showNotice("Resolved. The session is closed.");
    if (focusStayed(resolveButton)) title.focus();
  }));
  releaseButton.addEventListener("click", () => {
    releasing = pane.session && pane.session.sessionId;
    act(releaseButton, api.releaseHandoff, (session) => {
      if (!pane.isOpen(session.sessionId)) return;
      pane.close();
      history.replaceState(null, "", "#/inbox");
      renderQueue();
      showNotice(session.agent ? `Released: the session is back with agent ${session.agent}.` : "Released: the session left the inbox.");
      if (focusStayed(releaseButton)) queueTitle.focus();
    }).finally(() => {
      releasing = null;
    });
  });

  realtime.on("handoff", onHandoff);
  realtime.on("status", (status) => {
    renderConnection(connection, status);
    if (status === "online" && me) reloadSoon(); // events may have been missed while the connection was down
  });
  realtime.on("error", (error) => {
    if (!view.hidden) showError(error);
  });

  return {
    /** Starts keeping the queue for `user` (staff only), whichever view is shown. */
    start(user) {
      me = user;
      pane.setUser(user);
      loadQueue();
      clearInterval(refreshTimer);
      refreshTimer = setInterval(() => {
        if (document.visibilityState === "visible") loadQueue();
      }, REFRESH_MS);
    },
    /** Shows the view and opens `sessionId` if given. */
    async show(sessionId) {
      view.hidden = false;
      renderConnection(connection, realtime.status);
      pane.render();
      loadQueue();
      await open(sessionId);
    },
    /** Hides the view (another one is shown) and closes its conversation. */
    suspend() {
      pane.close();
      view.hidden = true;
      showError(null);
      showNotice("");
    },
    /** Hides the view and forgets everything (sign-out). */
    stop() {
      clearInterval(refreshTimer);
      clearTimeout(reloadTimer);
      loadSeq += 1;
      pane.forget();
      view.hidden = true;
      me = null;
      queue = [];
      renderQueue();
      queueError.textContent = "";
      showError(null);
      showNotice("");
    },
    open,
  };
}
