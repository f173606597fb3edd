// Entry point: restores the sign-in of this tab, then shows either the sign-in form or a view, and keeps what is
// open in the address so that reload, back, forward and links work: #/sessions/<id> is the chat view with a
// session open; for staff (role agent or admin) #/inbox and #/inbox/<id> are the inbox of handoffs; for admins
// #/admin/users and #/admin/activity the admin view.

import * as api from "./api.js";
import { Realtime } from "./realtime.js";
import { mountSignIn } from "./signin.js";
import { mountChat } from "./chat.js";
import { mountInbox } from "./inbox.js";
import { mountAdmin } from "./admin.js";
import { element } from "./conversation.js";

const SESSION_HASH = /^#\/sessions\/([0-9a-f-]{36})$/i;
const INBOX_HASH = /^#\/inbox(?:\/([0-9a-f-]{36}))?$/i;
const ADMIN_HASH = /^#\/admin(?:\/(users|activity))?$/;
const TITLE = "chat-backend console";
const VIEW_NAMES = { chat: "Chats", inbox: "Inbox", admin: "Admin" };

const boot = document.getElementById("boot");
const account = document.getElementById("account");
const whoami = document.getElementById("whoami");
const signOutButton = document.getElementById("sign-out");
const navigation = document.getElementById("views");
const links = {
  chat: document.getElementById("nav-chats"),
  inbox: document.getElementById("nav-inbox"),
  admin: document.getElementById("nav-admin"),
};
const inboxCount = document.getElementById("inbox-count");

const realtime = new Realtime({
  getToken: async (fresh) => {
    if (fresh) await api.refresh();
    return api.freshAccessToken();
  },
});
const views = {
  chat: mountChat(realtime),
  inbox: mountInbox(realtime, { onWaiting: showWaiting }),
  admin: mountAdmin(),
};
const signIn = mountSignIn({ onSignedIn: showConsole });
let user = null; // signed in
let shown = null; // the name of the view on screen
let waiting = 0; // sessions waiting for a person (staff)

const isStaff = () => Boolean(user) && (user.role === "agent" || user.role === "admin");
const isAdmin = () => Boolean(user) && user.role === "admin";

// The view the address names, and what it opens there (a session id, an admin section).
function route() {
  const admin = isAdmin() ? ADMIN_HASH.exec(location.hash) : null;
  if (admin) return { name: "admin", target: admin[1] ?? "users" };
  const inbox = isStaff() ? INBOX_HASH.exec(location.hash) : null;
  if (inbox) return { name: "inbox", target: inbox[1] ? inbox[1].toLowerCase() : null };
  const session = SESSION_HASH.exec(location.hash);
  return { name: "chat", target: session ? session[1].toLowerCase() : null };
}

function renderTitle() {
  if (!user || !isStaff()) {
    document.title = TITLE;
    return;
  }
  document.title = `${waiting > 0 ? `(${waiting}) ` : ""}${VIEW_NAMES[shown] ?? VIEW_NAMES.chat} · ${TITLE}`;
}

function renderNavigation() {
  navigation.hidden = !isStaff();
  links.admin.hidden = !isAdmin();
  for (const [name, link] of Object.entries(links)) {
    if (name === shown) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  inboxCount.hidden = waiting === 0;
  inboxCount.replaceChildren(String(waiting), element("span", "visually-hidden", " waiting"));
  renderTitle();
}

function showWaiting(count) {
  waiting = count;
  renderNavigation();
}

/** Shows the view the address names (switching views only when it changed). */
function showRoute({ focus = false } = {}) {
  const { name, target } = route();
  if (shown === name) {
    views[name].open(target);
    return;
  }
  if (shown) views[shown].suspend();
  shown = name;
  renderNavigation();
  views[name].show(target, { focus });
}

function showConsole(signedInUser) {
  user = signedInUser;
  boot.hidden = true;
  signIn.hide();
  whoami.textContent = user.username;
  account.hidden = false;
  realtime.start();
  views.chat.start(user);
  if (isStaff()) views.inbox.start(user);
  if (isAdmin()) views.admin.start(user);
  showRoute({ focus: true });
}

function showSignIn(message = "") {
  user = null;
  shown = null;
  waiting = 0;
  boot.hidden = true;
  realtime.stop();
  views.chat.stop();
  views.inbox.stop();
  views.admin.stop();
  renderNavigation();
  account.hidden = true;
  whoami.textContent = "";
  signIn.show(message);
}

async function signOut() {
  signOutButton.disabled = true;
  realtime.stop();
  // The next user starts without this one's session in the address.
  history.replaceState(null, "", location.pathname + location.search);
  try {
    await api.signOut();
  } catch (error) {
    signIn.show(`Signed out here, but the server did not confirm it: ${error.message}`);
  } finally {
    signOutButton.disabled = false;
  }
}

async function start() {
  api.onSignedOut((reason) => showSignIn(reason ?? ""));
  api.onTokenChange(() => realtime.reauthenticate());
  signOutButton.addEventListener("click", signOut);
  addEventListener("hashchange", () => {
    if (user) showRoute();
  });
  try {
    const restored = await api.restore();
    if (restored) showConsole(restored);
    else showSignIn();
  } catch (error) {
    // A refused refresh token has already brought up the form (onSignedOut); this is the server being unreachable.
    if (error.status !== 401) showSignIn(error.message);
  }
}

start();
