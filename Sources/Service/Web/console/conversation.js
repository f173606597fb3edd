// The conversation pane shared by the chat view and the staff inbox: the open session's history over REST, live
// messages, agent reply streams and typing over the realtime connection, the composer, and the read marker
// (POST /api/sessions/{id}/read with the newest message whenever something new by others is on screen).
// Files chosen in the composer are uploaded to the session and sent with the message; a message's files show as
// buttons that download them. Also the small helpers both views use to show sessions. User text is only ever put into the page with textContent.

import * as api from "./api.js";

const TYPING_IDLE_MS = 3_000; // stop saying "typing" after this long without a keystroke
const TYPING_STALE_MS = 8_000; // forget someone's typing if their "stopped" never arrives
const MAX_FILES = 10; // files one message may carry (the server's limit)

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
// Seconds in session titles: sessions opened in the same minute must still be told apart.
const createdTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
export const timeOnly = new Intl.DateTimeFormat(undefined, { timeStyle: "short" });
export const STATE_LABELS = { active: "Active", expired: "Expired", resolved: "Resolved" };
const CONNECTION_LABELS = { online: "Live", connecting: "Connecting…", offline: "Offline, reconnecting…" };

export const byId = (id) => document.getElementById(id);

export function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function sessionTitle(session) {
  const title = session.metadata && session.metadata.title;
  return typeof title === "string" && title.trim() ? title.trim() : `Session of ${createdTime.format(new Date(session.createdAt))}`;
}

/** A session as it was before, with the fields of `update` (a session read alone has no `unread`: keep the count). */
export function merged(previous, update) {
  return previous && update.unread === undefined ? { ...update, unread: previous.unread } : update;
}

/** The "3 unread" badge of a session in a list (the number visible, the word for screen readers), or null at 0. */
export function unreadBadge(count) {
  if (!count) return null;
  const badge = element("span", "unread", String(count));
  badge.append(element("span", "visually-hidden", " unread"));
  return badge;
}

/** Shows the realtime connection's status in `node`. */
export function renderConnection(node, status) {
  node.dataset.status = status;
  node.textContent = CONNECTION_LABELS[status] ?? status;
}

function agentName(metadata) {
  return metadata && typeof metadata.agent === "string" ? metadata.agent : null;
}

function kindOf(message, me) {
  if (message.type === "system") return "system";
  return message.userId && message.userId === me.id ? "mine" : "theirs";
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

const sizeFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

/** `1.5 MB`, `12 KB`, `300 bytes`. */
export function fileSize(bytes) {
  if (bytes < 1000) return `${bytes} bytes`;
  if (bytes < 1_000_000) return `${sizeFormat.format(bytes / 1000)} KB`;
  return `${sizeFormat.format(bytes / 1_000_000)} MB`;
}

/**
 * Downloads an attachment: its URL needs the bearer token, so it is fetched here and handed to the browser as
 * a file (never opened in the page).
 */
async function download(file, button) {
  button.disabled = true;
  try {
    const response = await fetch(file.url, { headers: { Authorization: `Bearer ${await api.freshAccessToken()}` } });
    if (!response.ok) throw new Error(`the file could not be downloaded (HTTP ${response.status})`);
    const url = URL.createObjectURL(await response.blob());
    const link = element("a");
    link.href = url;
    link.download = file.filename;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (error) {
    button.title = error.message;
  } finally {
    button.disabled = false;
  }
}

/** The message's files, as buttons that download them (replaced on every change of the message). */
function showFiles(node, message) {
  node.querySelector(".message-files")?.remove();
  const files = message.deletedAt ? [] : message.attachments ?? [];
  if (!files.length) return;
  const list = element("ul", "message-files");
  for (const file of files) {
    const button = element("button", "message-file", `${file.filename} (${fileSize(file.size)})`);
    button.type = "button";
    button.setAttribute("aria-label", `Download ${file.filename}, ${fileSize(file.size)}`);
    button.addEventListener("click", () => download(file, button));
    const item = element("li");
    item.append(button);
    list.append(item);
  }
  node.append(list);
}

/** Shows `message` as it is now in its `node`: its text, its files and "edited", or that it was deleted. */
function showState(node, message) {
  node.dataset.updatedAt = message.updatedAt;
  const text = node.querySelector(".message-text");
  if (message.deletedAt) {
    node.dataset.deleted = "";
    text.textContent = "Message deleted";
  } else {
    text.textContent = message.content;
  }
  showFiles(node, message);
  let mark = node.querySelector(".message-edited");
  if (message.editedAt && !message.deletedAt) {
    if (!mark) {
      mark = element("span", "message-edited", "edited");
      node.querySelector(".message-head").append(mark);
    }
    mark.title = dateTime.format(new Date(message.editedAt));
  } else if (mark) {
    mark.remove();
  }
}

/** Whether the focus is still on `element` (where it was before something slow), or on nothing. */
export function focusStayed(element) {
  const now = document.activeElement;
  return now === element || now === null || now === document.body;
}

/**
 * Wires a conversation pane. `parts` are its elements (scroller, loadEarlier, empty, log, typingLine, composer,
 * input, sendButton); the view says whether the composer is open (`canWrite(session | null)`) and hears of what
 * happens: `renderHeader(session)` after every change, `onMessage(message)` for a live message of the open
 * session, `onUpdated(session)` when the server says the open session changed (default: show it), `onLeft(event)`
 * when the connection was taken out of its room, `onRead(sessionId, unread)` when the caller's unread count of it
 * is known anew, `onUnread(sessionId)` for a new message of others while the page is out of view,
 * `onError(error | null)`, `onSendFailed(error, sessionId)`. Optional: `create()` opens a new session in the pane
 * when something is sent with none open; `inView()` whether the pane can be seen at all; `agentLabel(name)`.
 */
export function mountConversation(realtime, parts, view) {
  const { scroller, loadEarlier, empty, log, typingLine, composer, input, sendButton, files } = parts;
  const agentLabel = view.agentLabel ?? ((name) => `Agent (${name})`);
  const inView = () => document.visibilityState === "visible" && (!view.inView || view.inView());
  let me = null;
  let current = null; // the open session and what is on screen of it
  let typingTimer = 0;
  let openSeq = 0;
  const uploaded = new WeakMap(); // a chosen file → {sessionId, id} once uploaded

  function authorOf(message) {
    if (message.type === "system") return "System";
    if (message.userId && message.userId === me.id) return "You";
    if (message.direction === "inbound") return "User";
    const agent = agentName(message.metadata);
    if (agent === "human") return "Support";
    return agentLabel(agent ?? "agent");
  }

  // ---- messages ----

  function nearBottom() {
    return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
  }

  function scrollToBottom() {
    scroller.scrollTop = scroller.scrollHeight;
  }

  function lastSeenId() {
    let last = null;
    if (current) for (const id of current.nodes.keys()) if (!last || id > last) last = id;
    return last;
  }

  function insertMessage(message) {
    if (!current || message.sessionId !== current.session.sessionId) return;
    realtime.seen(message);
    const streamId = message.metadata && message.metadata.streamId;
    const draft = streamId ? current.drafts.get(streamId) : null;
    if (current.nodes.has(message.id)) {
      // Already shown (the REST answer and the live event both bring a sent message); edits come as `changed`.
      if (draft) draft.node.remove();
      current.drafts.delete(streamId);
      return;
    }
    const node = messageElement(authorOf(message), kindOf(message, me), message.createdAt, message.content);
    showState(node, message);
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
    if (message.userId !== me.id && (!current.newestOther || message.id > current.newestOther)) current.newestOther = message.id;
  }

  function showMessages(messages, { stick = false } = {}) {
    const follow = stick || nearBottom();
    for (const message of messages) insertMessage(message);
    renderSeen();
    if (follow) scrollToBottom();
    markRead();
  }

  // An edit or a delete (live, or replayed on reconnecting): the newest version of a message shown wins.
  function onChanged(message) {
    if (!current || message.sessionId !== current.session.sessionId) return;
    const node = current.nodes.get(message.id);
    if (node && !(node.dataset.updatedAt > message.updatedAt)) showState(node, message);
  }

  function onDelta(event) {
    if (!current || event.sessionId !== current.session.sessionId) return;
    const follow = nearBottom();
    let draft = current.drafts.get(event.streamId);
    if (!draft) {
      const node = messageElement(agentLabel(event.agent), "theirs", null, "");
      node.setAttribute("aria-busy", "true"); // assistive tech reads the reply once, when it is complete
      log.append(node);
      draft = { node, parts: [] };
      current.drafts.set(event.streamId, draft);
    }
    draft.parts[event.index] = event.delta;
    draft.node.querySelector(".message-text").textContent = draft.parts.join("");
    if (follow) scrollToBottom();
  }

  // ---- read state ----

  // Moves the caller's read marker to the newest message when others wrote something after it, and only while
  // the page is in view: a conversation in a background tab has not been read.
  async function markRead() {
    const shown = current;
    if (!shown || !inView()) return;
    if (!shown.newestOther || (shown.readId && shown.readId >= shown.newestOther)) return;
    if (shown.reading) {
      shown.readAgain = true;
      return;
    }
    shown.reading = true;
    try {
      const state = await api.markRead(shown.session.sessionId, lastSeenId());
      if (!shown.readId || state.lastMessageId > shown.readId) shown.readId = state.lastMessageId;
      view.onRead?.(shown.session.sessionId, state.unread);
    } catch {
      // The count stays as it was; the next message tries again.
    } finally {
      shown.reading = false;
      if (shown.readAgain && current === shown) {
        shown.readAgain = false;
        markRead();
      }
    }
  }

  function onRead(event) {
    if (!current || event.sessionId !== current.session.sessionId) return;
    if (event.userId === me.id) {
      // This user read it elsewhere (another tab), or this tab's own marker came back.
      if (!current.readId || event.lastMessageId > current.readId) current.readId = event.lastMessageId;
      if (!current.newestOther || current.readId >= current.newestOther) view.onRead?.(event.sessionId, 0);
    } else if (!current.seenUpTo || event.lastMessageId > current.seenUpTo) {
      current.seenUpTo = event.lastMessageId;
      renderSeen();
    }
  }

  // "Seen" on the newest of this user's messages that the other side has read.
  function renderSeen() {
    for (const old of log.querySelectorAll(".message-seen")) old.remove();
    if (!current || !current.seenUpTo) return;
    let newest = null;
    for (const [id, node] of current.nodes) {
      if (node.dataset.kind === "mine" && id <= current.seenUpTo && (!newest || id > newest)) newest = id;
    }
    if (newest) current.nodes.get(newest).querySelector(".message-head").append(element("span", "message-seen", "Seen"));
  }

  // ---- typing ----

  function renderTyping() {
    if (!current || current.typers.size === 0) {
      typingLine.textContent = "";
      return;
    }
    const keys = [...current.typers.keys()];
    if (keys.some((key) => key.startsWith("agent:"))) typingLine.textContent = "Agent is typing…";
    else if (keys.includes(`user:${current.session.userId}`)) typingLine.textContent = "User is typing…";
    else typingLine.textContent = "Support is typing…";
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

  function stopTyping() {
    clearTimeout(typingTimer);
    realtime.typing(false);
  }

  // ---- live events ----

  function onLiveMessage(message) {
    if (!current || message.sessionId !== current.session.sessionId) return;
    const agent = agentName(message.metadata);
    if (message.direction === "outbound" && agent && agent !== "human") setTyping(`agent:${agent}`, false);
    else if (message.userId) setTyping(`user:${message.userId}`, false);
    const fresh = !current.nodes.has(message.id);
    showMessages([message]);
    // Not read while the page is out of view: the list counts it until the reader comes back.
    if (fresh && message.userId !== me.id && !inView()) view.onUnread?.(message.sessionId);
    view.onMessage?.(message);
  }

  function onLeft(event) {
    if (current && event.sessionId === current.session.sessionId) view.onLeft?.(event);
  }

  function onUpdated(event) {
    if (!current || event.sessionId !== current.session.sessionId) return;
    if (view.onUpdated) view.onUpdated(event.session);
    else setSession(event.session);
  }

  function setSession(session) {
    if (!current || current.session.sessionId !== session.sessionId) return;
    // A read that crossed a change in flight (RFC 3339 times of one format compare as text): the newer stays.
    if (current.session.updatedAt > session.updatedAt) return;
    current.session = session;
    render();
  }

  // ---- the pane ----

  function render() {
    const session = current && current.session;
    const writable = view.canWrite(session);
    input.disabled = !writable;
    sendButton.disabled = !writable;
    if (files) files.disabled = !writable;
    empty.hidden = Boolean(session);
    loadEarlier.hidden = !current || !current.hasMoreBefore;
    view.renderHeader(session);
  }

  function closeCurrent() {
    if (current) {
      for (const timer of current.typers.values()) clearTimeout(timer);
      stopTyping();
      realtime.leave(current.session.sessionId);
    }
    current = null;
    log.replaceChildren();
    typingLine.textContent = "";
  }

  /** Opens a session: resolves to it, or to null when another open came after this one. Errors are thrown. */
  async function open(sessionId) {
    const seq = ++openSeq;
    let session, page;
    try {
      [session, page] = await Promise.all([api.getSession(sessionId), api.listMessages(sessionId)]);
    } catch (error) {
      if (seq !== openSeq) return null;
      throw error;
    }
    if (seq !== openSeq) return null; // another session was chosen meanwhile
    closeCurrent();
    current = {
      session, nodes: new Map(), drafts: new Map(), typers: new Map(), oldestId: null, hasMoreBefore: page.hasMore,
      newestOther: null, readId: null, reading: false, readAgain: false, seenUpTo: null,
    };
    render(); // first: the pane's layout settles before it scrolls to the newest message
    showMessages(page.messages, { stick: true });
    realtime.join(sessionId, lastSeenId());
    return session;
  }

  async function loadOlder() {
    if (!current || !current.oldestId) return;
    const shown = current;
    loadEarlier.disabled = true;
    try {
      const page = await api.listMessages(shown.session.sessionId, { before: shown.oldestId });
      if (current !== shown) return;
      const height = scroller.scrollHeight;
      for (const message of page.messages) insertMessage(message);
      renderSeen();
      // Keep the message the reader was looking at where it was.
      scroller.scrollTop += scroller.scrollHeight - height;
      current.hasMoreBefore = page.hasMore;
      render();
    } catch (error) {
      view.onError(error);
    } finally {
      loadEarlier.disabled = false;
    }
  }

  // Sends what the composer holds (its text and chosen files), or `text` (leaving the composer as it is).
  async function send(text) {
    const content = text ?? input.value;
    const chosen = text === undefined && files ? [...files.files] : [];
    if ((!current && !view.create) || (!content.trim() && !chosen.length) || sendButton.disabled) return;
    if (chosen.length > MAX_FILES) {
      view.onError(new Error(`At most ${MAX_FILES} files go with one message.`));
      return;
    }
    view.onError(null);
    stopTyping();
    sendButton.disabled = true;
    let shown = current;
    try {
      if (!shown) {
        await view.create();
        shown = current;
        if (!shown) return;
      }
      // The files first (each refused file stops the send with the server's reason), then the message naming them.
      // A file uploaded before a send that failed is not uploaded again when the same send is retried.
      const attachments = [];
      for (const file of chosen) {
        let done = uploaded.get(file);
        if (!done || done.sessionId !== shown.session.sessionId) {
          done = { sessionId: shown.session.sessionId, id: (await api.uploadAttachment(shown.session.sessionId, file)).id };
          uploaded.set(file, done);
        }
        attachments.push(done.id);
      }
      const message = await api.sendMessage(shown.session.sessionId, content, api.randomId(), attachments);
      for (const file of chosen) uploaded.delete(file); // sent: choosing the same file again sends it anew
      if (text === undefined && input.value === content) input.value = "";
      // Emptied only if still the files that were sent (another choice made meanwhile stays).
      if (chosen.length && files.files.length === chosen.length && [...files.files].every((f, i) => f === chosen[i])) files.value = "";
      if (current === shown) showMessages([message], { stick: true });
    } catch (error) {
      view.onError(error);
      if (shown) view.onSendFailed?.(error, shown.session.sessionId);
    } finally {
      render();
      if (!input.disabled) input.focus();
    }
  }

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
    if (!current || !input.value) {
      realtime.typing(false);
      return;
    }
    realtime.typing(true);
    typingTimer = setTimeout(() => realtime.typing(false), TYPING_IDLE_MS);
  });
  loadEarlier.addEventListener("click", loadOlder);
  document.addEventListener("visibilitychange", () => markRead());

  realtime.on("message", onLiveMessage);
  realtime.on("delta", onDelta);
  realtime.on("changed", onChanged);
  realtime.on("typing", onTyping);
  realtime.on("read", onRead);
  realtime.on("left", onLeft);
  realtime.on("updated", onUpdated);

  return {
    /** The open session, or null. */
    get session() {
      return current ? current.session : null;
    },
    /** Whether `sessionId` is the open session. */
    isOpen(sessionId) {
      return Boolean(current) && current.session.sessionId === sessionId;
    },
    /** The signed-in user, whose messages are "You". */
    setUser(user) {
      me = user;
    },
    open,
    /** Closes the conversation (and forgets an open that is still under way). */
    close() {
      openSeq += 1;
      closeCurrent();
      render();
    },
    /** Closes it and empties the composer (sign-out). */
    forget() {
      this.close();
      input.value = "";
    },
    /** The open session changed (its state, handoff, …): show it as it is now. */
    setSession,
    render,
    showMessages,
    /** Sends `text` to the open session (or to a new one, see `create`), as if it had been typed. */
    send: (text) => send(text),
    /** Marks what is on screen read, if the pane is in view (after `inView()` changed). */
    markRead,
    /** Joins the open session's room again, replaying what came after the newest message on screen. */
    rejoin() {
      if (current) realtime.join(current.session.sessionId, lastSeenId());
    },
    /**
     * Focus to the message box, or to the history when the session cannot be written to. With `from` (where the
     * focus was when the person acted, before something slow such as loading the session): only if the focus is
     * still there or nowhere, so what they moved it to meanwhile (another view's link, say) keeps it.
     */
    focusInput(from = undefined) {
      if (from !== undefined && !focusStayed(from)) return;
      if (!input.disabled) input.focus();
      else scroller.focus();
    },
  };
}
