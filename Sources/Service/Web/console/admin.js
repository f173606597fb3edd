// The admin view (role admin): #/admin/users lists accounts (search, role filter, paging) and creates, changes,
// disables, enables, gives a new password to and deletes them; #/admin/activity shows the server's status, the
// agents and the last 30 days as charts (charts.js). The server's error messages are shown as they are. The view's
// elements come from a <template>: they are in the page only while an admin is signed in.

import * as api from "./api.js";
import { byId, element } from "./conversation.js";
import { renderActivity } from "./charts.js";

const PAGE = 20;
const ROLES = { user: "User", agent: "Agent", admin: "Admin", guest: "Guest" };
const day = new Intl.DateTimeFormat(undefined, { dateStyle: "medium" });

/** The admin view. Returns `{start, show, suspend, stop, open}`; `open(section)`: "users" or "activity". */
export function mountAdmin() {
  let admin = null; // the view in the page, while an admin is signed in
  return {
    /** Puts the view in the page for `user` (role admin), hidden. */
    start(user) {
      admin?.remove();
      admin = wire(user);
    },
    /** Shows the view with `section`. */
    show: (section) => admin?.show(section),
    open: (section) => admin?.open(section),
    /** Hides the view (another one is shown). */
    suspend: () => admin?.suspend(),
    /** Takes the view out of the page (sign-out). */
    stop() {
      admin?.remove();
      admin = null;
    },
  };
}

function wire(me) {
  const template = byId("admin-template");
  template.before(template.content.cloneNode(true));
  const view = byId("admin");
  const tabs = { users: byId("tab-users"), activity: byId("tab-activity") };
  const panels = { users: byId("admin-users"), activity: byId("admin-activity") };
  const titles = { users: byId("users-title"), activity: byId("activity-title") };
  const errorBox = byId("admin-error");
  const notice = byId("admin-notice");
  const search = byId("user-search");
  const roleFilter = byId("user-role-filter");
  const rows = byId("user-rows");
  const range = byId("users-range");
  const previous = byId("users-previous");
  const next = byId("users-next");
  const createForm = byId("create-user");
  const refreshButton = byId("admin-refresh");
  const dialog = byId("admin-dialog");
  const dialogForm = byId("dialog-form");
  const dialogError = byId("dialog-error");
  const dialogPassword = byId("dialog-password");
  const dialogConfirm = byId("dialog-confirm");

  let section = null;
  let offset = 0;
  let total = 0;
  let loadSeq = 0;
  let activitySeq = 0;
  let searchTimer = 0;
  let pending = null; // what the dialog's confirm button does
  let opener = null; // the control that opened the dialog, focused again when it closes

  function say(text, error = null) {
    errorBox.textContent = error ? error.message || String(error) : "";
    notice.textContent = error ? "" : text;
  }

  // ---- users ----

  function button(text, label, onClick) {
    const node = element("button", "button secondary small", text);
    node.type = "button";
    node.setAttribute("aria-label", label);
    node.addEventListener("click", onClick);
    return node;
  }

  function cell(...children) {
    const td = element("td");
    td.append(...children);
    return td;
  }

  function roleCell(user) {
    if (user.id === me.id || user.role === "guest") {
      const tag = element("span", "tag", ROLES[user.role] ?? user.role);
      tag.dataset.role = user.role;
      return cell(tag);
    }
    const select = element("select");
    select.setAttribute("aria-label", `Role of ${user.username}`);
    for (const role of ["user", "agent", "admin"]) {
      const option = element("option", null, ROLES[role]);
      option.value = role;
      option.selected = role === user.role;
      select.append(option);
    }
    select.addEventListener("change", () => {
      const role = select.value;
      change(user, { role }, `${user.username} now has the role ${role}. Their sign-ins have ended.`, "select")
        .then((ok) => { if (!ok) select.value = user.role; });
    });
    return cell(select);
  }

  function userRow(user) {
    const own = user.id === me.id;
    const name = element("th", null, user.username);
    name.scope = "row";
    if (own) name.append(element("span", "muted", " (you)"));
    const status = element("span", "state", user.disabled ? "Disabled" : "Active");
    status.dataset.state = user.disabled ? "disabled" : "active";
    if (user.disabled && user.disabledAt) status.title = `since ${day.format(new Date(user.disabledAt))}`;
    const actions = element("td", "actions");
    if (own) actions.append(element("span", "muted", "Your account"));
    else {
      actions.append(user.disabled
        ? button("Enable", `Enable ${user.username}`, () => change(user, { disabled: false }, `${user.username} is enabled.`))
        : button("Disable", `Disable ${user.username}`, () => change(user, { disabled: true }, `${user.username} is disabled and signed out.`)));
      if (user.role !== "guest") actions.append(button("Reset password", `Reset password of ${user.username}`, () => askPassword(user)));
      actions.append(button("Delete", `Delete ${user.username}`, () => askDelete(user)));
    }
    const row = element("tr");
    row.dataset.user = user.id;
    row.append(name, cell(user.email ?? "—"), roleCell(user), cell(status), cell(day.format(new Date(user.createdAt))), actions);
    return row;
  }

  async function loadUsers() {
    const seq = ++loadSeq;
    const query = new URLSearchParams({ limit: PAGE, offset });
    if (search.value.trim()) query.set("search", search.value.trim());
    if (roleFilter.value) query.set("role", roleFilter.value);
    try {
      const page = await api.request("GET", `/api/admin/users?${query}`);
      if (seq !== loadSeq || !view.isConnected) return;
      if (page.users.length === 0 && offset > 0 && page.total > 0) {
        offset = Math.max(0, Math.floor((page.total - 1) / PAGE) * PAGE); // the last page went away: show the new last
        return loadUsers();
      }
      total = page.total;
      rows.replaceChildren(...page.users.map(userRow));
      range.textContent = total === 0 ? "No accounts match." : `${offset + 1}–${offset + page.users.length} of ${total}`;
      const focused = document.activeElement;
      previous.disabled = offset === 0;
      next.disabled = offset + page.users.length >= total;
      // At the first or last page: the keyboard goes to the other button rather than nowhere.
      if (focused === next && next.disabled && !previous.disabled) previous.focus();
      if (focused === previous && previous.disabled && !next.disabled) next.focus();
    } catch (error) {
      if (seq === loadSeq) say("", error);
    }
  }

  // PATCHes the account; `control`: what to focus in its row, drawn anew, if the focus was lost with the old one.
  async function change(user, body, done, control = "button") {
    say("");
    try {
      await api.request("PATCH", `/api/admin/users/${encodeURIComponent(user.id)}`, body);
      say(done);
      await loadUsers();
      if (!view.contains(document.activeElement)) rows.querySelector(`tr[data-user="${user.id}"] ${control}`)?.focus();
      return true;
    } catch (error) {
      say("", error);
      return false;
    }
  }

  async function create(event) {
    event.preventDefault();
    say("");
    const fields = createForm.elements;
    const account = { username: fields.username.value.trim(), password: fields.password.value, role: fields.role.value };
    if (fields.email.value.trim()) account.email = fields.email.value.trim();
    if (createForm.getAttribute("aria-busy")) return;
    createForm.setAttribute("aria-busy", "true");
    try {
      const user = await api.request("POST", "/api/admin/users", account);
      createForm.reset();
      say(`Created ${user.username} (${user.role}).`);
      search.value = "";
      roleFilter.value = "";
      offset = 0;
      fields.username.focus();
      await loadUsers();
    } catch (error) {
      say("", error);
      const field = error.details && error.details.field;
      (fields[field] ?? fields.username).focus();
    } finally {
      createForm.removeAttribute("aria-busy");
    }
  }

  // ---- the dialog: a new password, or confirming a deletion ----

  function ask({ title, text, confirm, password = false, action }) {
    byId("dialog-title").textContent = title;
    byId("dialog-text").textContent = text;
    byId("dialog-password-field").hidden = !password;
    dialogPassword.value = "";
    dialogError.textContent = "";
    dialogConfirm.textContent = confirm;
    dialogConfirm.classList.toggle("danger", !password);
    pending = action;
    opener = document.activeElement;
    dialog.showModal();
    (password ? dialogPassword : byId("dialog-cancel")).focus();
  }

  function askPassword(user) {
    byId("dialog-username").value = user.username;
    ask({
      title: `New password for ${user.username}`,
      text: "Their sign-ins end now; they sign in again with this password (8 to 128 characters).",
      confirm: "Set password",
      password: true,
      action: async () => {
        await api.request("POST", `/api/admin/users/${encodeURIComponent(user.id)}/password`, { password: dialogPassword.value });
        say(`${user.username} has a new password.`);
      },
    });
  }

  function askDelete(user) {
    ask({
      title: `Delete ${user.username}?`,
      text: "The account is deleted with its sessions and their messages. This cannot be undone.",
      confirm: "Delete user",
      action: async () => {
        await api.request("DELETE", `/api/admin/users/${encodeURIComponent(user.id)}`);
        say(`${user.username} is deleted.`);
        await loadUsers();
      },
    });
  }

  dialogForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!pending || dialogForm.getAttribute("aria-busy")) return;
    dialogForm.setAttribute("aria-busy", "true");
    dialogError.textContent = "";
    try {
      await pending();
      dialog.close();
    } catch (error) {
      dialogError.textContent = error.message;
    } finally {
      dialogForm.removeAttribute("aria-busy");
    }
  });
  byId("dialog-cancel").addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => {
    pending = null;
    dialogPassword.value = "";
    if (opener && opener.isConnected) opener.focus();
    else titles[section]?.focus();
  });

  // ---- activity ----

  async function loadActivity() {
    const seq = ++activitySeq;
    say("");
    try {
      const [status, agents, activity] = await Promise.all([
        api.request("GET", "/api/admin/status"),
        api.request("GET", "/api/admin/agents"),
        api.request("GET", "/api/admin/activity?days=30"),
      ]);
      if (seq === activitySeq && view.isConnected) renderActivity(status, agents.agents, activity);
    } catch (error) {
      if (seq === activitySeq) say("", error);
    }
  }

  // ---- wiring ----

  search.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => { offset = 0; loadUsers(); }, 250);
  });
  byId("user-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    clearTimeout(searchTimer);
    offset = 0;
    loadUsers();
  });
  roleFilter.addEventListener("change", () => { offset = 0; loadUsers(); });
  previous.addEventListener("click", () => { offset = Math.max(0, offset - PAGE); loadUsers(); });
  next.addEventListener("click", () => { offset += PAGE; loadUsers(); });
  createForm.addEventListener("submit", create);
  refreshButton.addEventListener("click", loadActivity);

  // Shows `name` ("users" or "activity"), loaded anew, with the focus on its heading.
  function open(name) {
    if (section === name) return;
    section = name;
    for (const [key, panel] of Object.entries(panels)) {
      panel.hidden = key !== name;
      if (key === name) tabs[key].setAttribute("aria-current", "page");
      else tabs[key].removeAttribute("aria-current");
    }
    say("");
    if (name === "users") loadUsers();
    else loadActivity();
    titles[name].focus();
  }

  return {
    show(name) {
      view.hidden = false;
      section = null;
      open(name);
    },
    open,
    suspend() {
      view.hidden = true;
      if (dialog.open) dialog.close();
      section = null;
      say("");
    },
    remove() {
      clearTimeout(searchTimer);
      view.remove();
    },
  };
}
