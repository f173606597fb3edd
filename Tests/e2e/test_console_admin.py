"""The console's admin view in a real browser (Playwright driving Debian's chromium), driven by role and accessible
name: an admin creates a staff account (which then signs in and has the inbox), changes a role, gives a new
password, disables an account whose open console is signed out at once, enables it again, deletes accounts
(whose consoles end too); guests are shown as such; the server's error messages are shown; the activity charts
and the counts shown as text follow new messages and resolved sessions when refreshed."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from conftest import PASSWORD, assert_json_error, auth_get, create_session, post_json, register, unique_name
from test_agents import add_user, wait_for
from test_console import CHROMIUM, chromium_browser, conversation, message_box, screenshot, sign_in  # noqa: F401 (fixture)
from test_console_inbox import STAFF_PASSWORD, browser_pages  # noqa: F401 (fixture)
from test_room_access import AGENTS_YAML

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium "
                                                              "(`make test` installs it)")

SIGNED_OUT = "Your sign-in has ended. Please sign in again."


@pytest.fixture
def admin_server(start_server, tmp_path):
    agents = tmp_path / "agents.yaml"
    agents.write_text(AGENTS_YAML)
    return start_server(env={"AGENTS_FILE": str(agents), "GUEST_ACCESS": "on", "RATE_LIMIT_GUEST": "off"})


def open_admin(page, server, admin, section: str = "Users"):
    page.goto(server.url("/console/"))
    sign_in(page, admin["user"]["username"], STAFF_PASSWORD)
    views = page.get_by_role("navigation", name="Views")
    views.get_by_role("link", name="Admin").click()
    expect(views.get_by_role("link", name="Admin")).to_have_attribute("aria-current", "page")
    if section != "Users":
        page.get_by_role("navigation", name="Admin sections").get_by_role("link", name=section).click()
    expect(page.get_by_role("heading", name=section, level=1)).to_be_focused()


def accounts(page):
    return page.get_by_role("table", name="Accounts")


def find(page, username: str):
    """Searches the accounts for `username`; returns its row."""
    page.get_by_label("Search users").fill(username)
    row = accounts(page).get_by_role("row").filter(has=page.get_by_role("rowheader", name=re.compile(rf"^{re.escape(username)}")))
    expect(row).to_have_count(1)
    expect(accounts(page).get_by_role("row")).to_have_count(2)  # the header and this one
    return row


def signed_in_console(page, server, username: str, password: str = PASSWORD):
    """A user's console, signed in, with a session open and live."""
    page.goto(server.url("/console/"))
    sign_in(page, username, password)
    page.get_by_role("button", name="New session").click()
    expect(message_box(page)).to_be_enabled()
    expect(conversation(page).get_by_text("Live", exact=True)).to_be_visible()


def test_an_admin_manages_accounts_and_a_disabled_or_deleted_users_console_ends_at_once(admin_server, browser_pages, tmp_path):
    server = admin_server
    admin = add_user(server, "admin")
    token = admin["accessToken"]
    victim = register(server)
    name = victim["user"]["username"]
    admin_console, victim_console, staff_console = browser_pages(), browser_pages(), browser_pages()
    admin_page, victim_page, staff_page = admin_console.page, victim_console.page, staff_console.page
    # The browser logs each refusal below that the test causes on purpose: the forms' invalid password and
    # taken username, ...
    admin_console.expect_failed_request(400, "/api/admin/users")
    admin_console.expect_failed_request(409, "/api/admin/users")
    admin_console.expect_failed_request(400, rf"/api/admin/users/{victim['user']['id']}/password")
    # ... and, in the user's console, each sign-in the admin ends (its refresh token refused: the console then
    # shows the sign-in form), and the sign-in refused while the account is disabled.
    victim_console.expect_failed_request(401, "/auth/refresh")
    victim_console.expect_failed_request(403, "/auth/login")

    # Users see no admin view.
    signed_in_console(victim_page, server, name)
    expect(victim_page.get_by_role("link", name="Admin")).to_have_count(0)

    open_admin(admin_page, server, admin)
    expect(admin_page).to_have_title("Admin · chat-backend console")
    # The admin's own row offers nothing that would lock them out.
    own = find(admin_page, admin["user"]["username"])
    expect(own).to_contain_text("(you)")
    expect(own.get_by_role("button")).to_have_count(0)
    expect(own.get_by_role("combobox")).to_have_count(0)

    # Creating a staff account; the server's messages show when it refuses one.
    form = admin_page.get_by_role("form", name="Create a user")
    staff_name = unique_name("staff")
    form.get_by_label("New username").fill(staff_name)
    form.get_by_label("Initial password").fill("short")
    form.get_by_label("Role", exact=True).select_option("agent")
    form.get_by_role("button", name="Create user").click()
    error = assert_json_error(post_json(server.url("/api/admin/users"), {"username": staff_name, "password": "short", "role": "agent"},
                                        token=token), 400, "validation_failed")
    expect(admin_page.get_by_role("alert").first).to_have_text(error["message"])
    expect(form.get_by_label("Initial password")).to_be_focused()  # the field the server named
    form.get_by_label("Initial password").fill("a-staff-password-1")
    form.get_by_role("button", name="Create user").click()
    expect(admin_page.get_by_role("status").first).to_have_text(f"Created {staff_name} (agent).")
    expect(accounts(admin_page).get_by_role("rowheader", name=staff_name)).to_be_visible()
    expect(form.get_by_label("New username")).to_have_value("")
    form.get_by_label("New username").fill(name.upper())
    form.get_by_label("Initial password").fill("a-staff-password-1")
    form.get_by_role("button", name="Create user").click()
    error = assert_json_error(post_json(server.url("/api/admin/users"), {"username": name.upper(), "password": PASSWORD},
                                        token=token), 409, "username_taken")
    expect(admin_page.get_by_role("alert").first).to_have_text(error["message"])

    # The new staff member signs in and has the inbox.
    staff_page.goto(server.url("/console/"))
    sign_in(staff_page, staff_name, "a-staff-password-1")
    expect(staff_page.get_by_role("navigation", name="Views").get_by_role("link", name="Inbox")).to_be_visible()
    expect(staff_page.get_by_role("link", name="Admin")).to_have_count(0)

    # Disabled: the user's open console is signed out at once, and signing in is refused.
    row = find(admin_page, name)
    expect(row.get_by_role("cell", name="Active", exact=True)).to_be_visible()
    row.get_by_role("button", name=f"Disable {name}").click()
    expect(admin_page.get_by_role("status").first).to_have_text(f"{name} is disabled and signed out.")
    expect(row.get_by_role("cell", name="Disabled", exact=True)).to_be_visible()
    expect(row.get_by_role("button", name=f"Enable {name}")).to_be_focused()
    expect(victim_page.get_by_role("button", name="Sign in")).to_be_visible(timeout=5_000)
    expect(victim_page.get_by_role("alert")).to_have_text(SIGNED_OUT)
    expect(victim_page.get_by_role("navigation", name="Sessions")).to_have_count(0)
    sign_in(victim_page, name)
    error = assert_json_error(post_json(server.url("/auth/login"), {"username": name, "password": PASSWORD}), 403, "account_disabled")
    expect(victim_page.get_by_role("alert")).to_have_text(error["message"])

    # Enabled again: the user signs in.
    row.get_by_role("button", name=f"Enable {name}").click()
    expect(row.get_by_role("cell", name="Active", exact=True)).to_be_visible()
    signed_in_console(victim_page, server, name)

    # A new role ends the user's sign-in as well; they sign in again as staff.
    row.get_by_role("combobox", name=f"Role of {name}").select_option("agent")
    expect(admin_page.get_by_role("status").first).to_have_text(f"{name} now has the role agent. Their sign-ins have ended.")
    expect(victim_page.get_by_role("alert")).to_have_text(SIGNED_OUT)
    sign_in(victim_page, name)
    expect(victim_page.get_by_role("navigation", name="Views").get_by_role("link", name="Inbox")).to_be_visible()

    # A new password, from the keyboard; a password the server refuses keeps the dialog open with its message.
    row.get_by_role("button", name=f"Reset password of {name}").focus()
    admin_page.keyboard.press("Enter")
    dialog = admin_page.get_by_role("dialog", name=f"New password for {name}")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_label("New password")).to_be_focused()
    admin_page.keyboard.type("short")
    admin_page.keyboard.press("Enter")
    expect(dialog.get_by_role("alert")).to_contain_text("password")
    dialog.get_by_label("New password").fill("another-password-2")
    dialog.get_by_role("button", name="Set password").click()
    expect(dialog).to_be_hidden()
    expect(admin_page.get_by_role("status").first).to_have_text(f"{name} has a new password.")
    expect(victim_page.get_by_role("alert")).to_have_text(SIGNED_OUT)
    assert post_json(server.url("/auth/login"), {"username": name, "password": "another-password-2"}).status_code == 200

    # Deleting asks first; Escape keeps the account.
    signed_in_console(victim_page, server, name, "another-password-2")
    row.get_by_role("button", name=f"Delete {name}").click()
    dialog = admin_page.get_by_role("dialog", name=f"Delete {name}?")
    expect(dialog).to_be_visible()
    admin_page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(row.get_by_role("button", name=f"Delete {name}")).to_be_focused()
    row.get_by_role("button", name=f"Delete {name}").click()
    dialog.get_by_role("button", name="Delete user").click()
    expect(admin_page.get_by_role("status").first).to_have_text(f"{name} is deleted.")
    expect(accounts(admin_page).get_by_role("rowheader", name=name)).to_have_count(0)
    expect(admin_page.get_by_text("No accounts match.")).to_be_visible()
    expect(victim_page.get_by_role("button", name="Sign in")).to_be_visible(timeout=5_000)
    expect(victim_page.get_by_role("alert")).to_have_text(SIGNED_OUT)
    assert_json_error(auth_get(server.url(f"/api/admin/users/{victim['user']['id']}"), token), 404, "not_found")

    # Website visitors are accounts with role guest: shown as such, found with the role filter.
    guest = post_json(server.url("/auth/guest"), {})
    assert guest.status_code == 201, guest.text
    admin_page.get_by_label("Search users").fill("")
    admin_page.get_by_label("Filter by role").select_option("guest")
    guest_row = accounts(admin_page).get_by_role("row", name=re.compile(guest.json()["user"]["username"]))
    expect(guest_row).to_have_count(1)
    expect(guest_row.get_by_role("cell", name="Guest", exact=True)).to_be_visible()
    expect(accounts(admin_page).get_by_role("row")).to_have_count(2)
    expect(guest_row.get_by_role("button", name=re.compile("^Reset password"))).to_have_count(0)
    admin_page.get_by_label("Filter by role").select_option("")
    # All of them: the guest, the staff member and the admin. (The form is emptied of what it kept when the
    # server refused it, for the screenshot.)
    expect(accounts(admin_page).get_by_role("row")).to_have_count(4)
    form.get_by_label("New username").fill("")
    form.get_by_label("Initial password").fill("")
    screenshot(admin_page, "console-admin-users", tmp_path)

    # Paging, 20 accounts a page, newest first.
    tag = unique_name("page")
    for i in range(23):
        r = post_json(server.url("/api/admin/users"), {"username": f"{tag}_{i:02d}", "password": PASSWORD}, token=token)
        assert r.status_code == 201, r.text
    admin_page.get_by_label("Search users").fill(tag)
    expect(admin_page.get_by_text("1–20 of 23", exact=True)).to_be_visible()
    expect(accounts(admin_page).get_by_role("rowheader").first).to_have_text(f"{tag}_22")
    previous, following = admin_page.get_by_role("button", name="Previous"), admin_page.get_by_role("button", name="Next")
    expect(previous).to_be_disabled()
    following.click()
    expect(admin_page.get_by_text("21–23 of 23", exact=True)).to_be_visible()
    expect(accounts(admin_page).get_by_role("rowheader")).to_have_text([f"{tag}_02", f"{tag}_01", f"{tag}_00"])
    expect(following).to_be_disabled()
    previous.click()
    expect(admin_page.get_by_text("1–20 of 23", exact=True)).to_be_visible()


def test_activity_charts_and_counts_follow_new_messages(admin_server, browser_pages, tmp_path):
    server = admin_server
    admin = add_user(server, "admin")
    page = browser_pages().page
    open_admin(page, server, admin, "Activity")

    def shown(label: str):
        """The figure the page shows for `label` (a term and its definition)."""
        term = page.get_by_role("term").filter(has_text=re.compile(rf"^{label}$"))
        return term.locator("xpath=following-sibling::dd[1]")

    def number(label: str) -> int:
        return int(shown(label).inner_text().replace(",", "").replace("\u202f", "").replace("\xa0", ""))

    expect(shown("Version")).not_to_have_text("")
    expect(shown("Storage")).to_have_text("sqlite, up")
    messages_before, sessions_before, stored_before = number("Messages"), number("Sessions opened"), number("Messages stored")
    messages_chart = page.get_by_role("img", name=re.compile(r"^Messages per day over 30 days"))
    sessions_chart = page.get_by_role("img", name=re.compile(r"^Sessions opened per day over 30 days"))
    resolved_chart = page.get_by_role("img", name=re.compile(r"^Sessions resolved over 30 days: "))
    reply_chart = page.get_by_role("img", name=re.compile(r"^Median first reply per day over 30 days: "))
    expect(messages_chart).to_have_accessible_name(re.compile(rf": {messages_before} in all"))
    expect(sessions_chart).to_be_visible()
    expect(resolved_chart).to_be_visible()
    agents = page.get_by_role("table", name="Agents")
    front = agents.get_by_role("row", name=re.compile(r"^front \(default\)"))
    expect(front.get_by_role("cell").nth(0)).to_have_text("rules")
    expect(front.get_by_role("cell").nth(1)).to_have_text("Closed")

    # A user writes three messages; the bot answers each.
    user = register(server)
    token = user["accessToken"]
    sid = create_session(server, token)["sessionId"]
    for text in ("one", "two", "three"):
        assert post_json(server.url(f"/api/sessions/{sid}/messages"), {"content": text}, token=token).status_code == 201
    wait_for(lambda: len(auth_get(server.url(f"/api/sessions/{sid}/messages"), token).json()["messages"]) == 6, what="the bot's replies")

    # Nothing moves until Refresh; then the figures, the charts' names and the table by day have them.
    expect(shown("Messages")).to_have_text(str(messages_before))
    page.get_by_role("button", name="Refresh").click()
    expect(shown("Messages")).to_have_text(str(messages_before + 6))
    expect(shown("Sessions opened")).to_have_text(str(sessions_before + 1))
    expect(shown("Messages stored")).to_have_text(str(stored_before + 6))
    expect(shown("Median first reply")).not_to_have_text("—")
    # The bot answered within seconds: today's median is the overall one, and today has a bar.
    overall = shown("Median first reply").inner_text()
    expect(reply_chart).to_have_accessible_name(re.compile(rf": {re.escape(overall)} overall, slowest on "))
    assert reply_chart.locator("rect.bar").count() >= 1
    expect(messages_chart).to_have_accessible_name(re.compile(rf": {messages_before + 6} in all"))
    expect(sessions_chart).to_have_accessible_name(re.compile(rf": {sessions_before + 1} in all"))
    opened = sessions_before + 1
    expect(resolved_chart).to_have_accessible_name(f"Sessions resolved over 30 days: 0 of {opened} (0 %), {opened} not resolved")
    expect(front.get_by_role("cell").nth(2)).to_have_text("3")  # calls
    page.get_by_text("Numbers by day").click()
    today = page.get_by_role("table", name="Messages and sessions per day").get_by_role("row").nth(1)
    expect(today.get_by_role("cell")).to_have_text([str(messages_before + 6), str(sessions_before + 1), re.compile(r"^(under 1 s|\d+ s)$")])

    # Resolving counts toward the resolved share (figure and chart); a second session stays open.
    create_session(server, token)
    assert post_json(server.url(f"/api/sessions/{sid}/resolve"), {}, token=token).status_code == 200
    page.get_by_role("button", name="Refresh").click()
    opened = sessions_before + 2
    share = int(100 / opened + 0.5)  # rounded as the page does (half up)
    expect(shown("Sessions opened")).to_have_text(str(opened))
    expect(shown("Resolved")).to_have_text(f"{share} % (1 of {opened})")
    expect(resolved_chart).to_have_accessible_name(
        f"Sessions resolved over 30 days: 1 of {opened} ({share} %), {opened - 1} not resolved")
    screenshot(page, "console-admin-activity", tmp_path)
