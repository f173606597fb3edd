// Entry point: restores the sign-in of this tab, then shows either the sign-in form or the chat view, and keeps
// the open session in the address (#/sessions/<id>) so that reload, back, forward and links to a session work.

import * as api from "./api.js";
import { Realtime } from "./realtime.js";
import { mountSignIn } from "./signin.js";
import { mountChat } from "./chat.js";

const SESSION_HASH = /^#\/sessions\/([0-9a-f-]{36})$/i;

const boot = document.getElementById("boot");
const account = document.getElementById("account");
const whoami = document.getElementById("whoami");
const signOutButton = document.getElementById("sign-out");

const realtime = new Realtime({
  getToken: async (fresh) => {
    if (fresh) await api.refresh();
    return api.freshAccessToken();
  },
});
const chat = mountChat(realtime);
const signIn = mountSignIn({ onSignedIn: showChat });
let signedIn = false;

function sessionFromHash() {
  const match = SESSION_HASH.exec(location.hash);
  return match ? match[1].toLowerCase() : null;
}

function showChat(user) {
  signedIn = true;
  boot.hidden = true;
  signIn.hide();
  whoami.textContent = user.username;
  account.hidden = false;
  realtime.start();
  chat.show(user, sessionFromHash());
}

function showSignIn(message = "") {
  signedIn = false;
  boot.hidden = true;
  realtime.stop();
  chat.hide();
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
    if (signedIn) chat.open(sessionFromHash());
  });
  try {
    const user = await api.restore();
    if (user) showChat(user);
    else showSignIn();
  } catch (error) {
    // A refused refresh token has already brought up the form (onSignedOut); this is the server being unreachable.
    if (error.status !== 401) showSignIn(error.message);
  }
}

start();
