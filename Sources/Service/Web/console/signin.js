// The sign-in form: username and password to POST /auth/login; the server's error message is shown as it is.

import * as api from "./api.js";

/** Wires the sign-in form; `onSignedIn(user)` runs after a successful sign-in. Returns `{show, hide}`. */
export function mountSignIn({ onSignedIn }) {
  const section = document.getElementById("signin");
  const form = document.getElementById("signin-form");
  const username = document.getElementById("signin-username");
  const password = document.getElementById("signin-password");
  const alert = document.getElementById("signin-error");
  const submit = document.getElementById("signin-submit");

  async function signIn(event) {
    event.preventDefault();
    alert.textContent = "";
    const name = username.value.trim();
    if (!name || !password.value) {
      alert.textContent = "Enter your username and password.";
      (name ? password : username).focus();
      return;
    }
    submit.disabled = true;
    form.setAttribute("aria-busy", "true");
    try {
      const user = await api.signIn(name, password.value);
      password.value = "";
      onSignedIn(user);
    } catch (error) {
      alert.textContent = error.message;
      password.select();
      password.focus();
    } finally {
      submit.disabled = false;
      form.removeAttribute("aria-busy");
    }
  }

  form.addEventListener("submit", signIn);
  // Enabled only now: a submit before this script ran would have had nothing to handle it.
  submit.disabled = false;

  return {
    /** Shows the form, with `message` (if any) in its alert. */
    show(message = "") {
      section.hidden = false;
      alert.textContent = message || "";
      (username.value ? password : username).focus();
    },
    /** Hides the form. */
    hide() {
      section.hidden = true;
      alert.textContent = "";
      password.value = "";
    },
  };
}
