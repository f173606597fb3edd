"""The console's staff inbox in a real browser (Playwright driving Debian's chromium), driven by role and accessible
name: a user asks the rules agent for a person in one browser context; a staff member signed in to the console in
another sees the handoff arrive in the inbox live (and the count in the page title), claims it and replies; typing
shows both ways, unread counts show and clear when a session is opened, user text stays text, and when the staff
member resolves the session the user's view shows it resolved. No page logs an error or violates its CSP."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from conftest import PASSWORD, post_json, register
from test_agents import add_user, session, wait_for
from test_console import (CHROMIUM, MARKUP, Watched, assert_stayed_text, chromium_browser,  # noqa: F401 (fixture)
                          conversation, message_box, messages, screenshot, sign_in)
from test_read_state import listed, queued
from test_room_access import AGENTS_YAML, waiting_handoff

STAFF_PASSWORD = "staff-password-1"  # what add_user gives its users
TITLE = "chat-backend console"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium "
                                                              "(`make test` installs it)")


@pytest.fixture
def inbox_server(start_server, tmp_path):
    agents = tmp_path / "agents.yaml"
    agents.write_text(AGENTS_YAML)
    return start_server(env={"AGENTS_FILE": str(agents)})


@pytest.fixture
def browser_pages(chromium_browser):
    """Factory: a page in a browser context of its own (its own sign-in), watched and checked at teardown as
    test_console's `watched` is."""
    opened: list[Watched] = []

    def open_page() -> Watched:
        opened.append(Watched.open(chromium_browser))
        return opened[-1]

    yield open_page
    for watched in opened:
        watched.context.close()
    problems = [f"page {i} of {len(opened)}: {problem}"
                for i, watched in enumerate(opened, 1) for problem in watched.problems()]
    assert problems == [], "\n".join(problems)


def test_staff_take_a_handoff_live_from_the_inbox(inbox_server, browser_pages, tmp_path):
    server = inbox_server
    owner = register(server)
    owner_token, owner_id = owner["accessToken"], owner["user"]["id"]
    staff = add_user(server, "agent")
    staff_token = staff["accessToken"]
    customer, agent = browser_pages(), browser_pages()
    user_page, staff_page = customer.page, agent.page

    # The staff member signs in and goes to the inbox from the keyboard: nothing is waiting yet.
    staff_page.goto(server.url("/console/"))
    sign_in(staff_page, staff["user"]["username"], STAFF_PASSWORD)
    views = staff_page.get_by_role("navigation", name="Views")
    expect(views.get_by_role("link", name="Chats")).to_have_attribute("aria-current", "page")
    expect(staff_page).to_have_title(f"Chats · {TITLE}")
    views.get_by_role("link", name="Inbox").focus()
    staff_page.keyboard.press("Enter")
    expect(views.get_by_role("link", name="Inbox")).to_have_attribute("aria-current", "page")
    expect(staff_page).to_have_title(f"Inbox · {TITLE}")
    queue = staff_page.get_by_role("navigation", name="Handoff queue")
    expect(queue.get_by_text("No one is waiting.")).to_be_visible()
    staff_conversation = conversation(staff_page)
    expect(staff_conversation.get_by_text("Live", exact=True)).to_be_visible()
    staff_page.evaluate("() => { window.__sameDocument = true; }")  # gone if the page were loaded again

    # A user asks the bot for a person.
    user_page.goto(server.url("/console/"))
    sign_in(user_page, owner["user"]["username"], PASSWORD)
    user_page.get_by_role("button", name="New session").click()
    expect(message_box(user_page)).to_be_enabled()
    expect(conversation(user_page).get_by_text("Live", exact=True)).to_be_visible()
    sid = user_page.url.rsplit("/", 1)[1]
    message_box(user_page).fill("I need a human, please")
    message_box(user_page).press("Enter")
    user_log = messages(user_page)
    expect(user_log.get_by_text("Let me find a person for you.", exact=True)).to_be_visible()
    expect(conversation(user_page).get_by_text(re.compile("waiting for a person"))).to_be_visible()

    # The inbox shows it live, marked as waiting, with its unread count; the title counts it.
    waiting = queue.get_by_role("list", name=re.compile("^Waiting")).get_by_role("link")
    expect(waiting).to_have_count(1)
    expect(staff_page).to_have_title(f"(1) Inbox · {TITLE}")
    expect(views.get_by_role("link", name="Inbox")).to_have_accessible_name("Inbox 1 waiting")
    unread = queued(server, staff_token, sid)["unread"]
    assert unread >= 2, unread  # the user's message and the bot's answer, at least
    expect(waiting).to_have_accessible_name(re.compile(rf"{unread} unread.*Waiting"))

    # Opened: the whole history, readable before claiming; it is marked read, so the count goes.
    waiting.click()
    expect(staff_page).to_have_url(re.compile(rf"#/inbox/{sid}$"))
    staff_log = messages(staff_page)
    expect(staff_log.get_by_text("I need a human, please", exact=True)).to_be_visible()
    expect(staff_log.get_by_text("Let me find a person for you.", exact=True)).to_be_visible()
    expect(waiting).not_to_have_accessible_name(re.compile("unread"))
    wait_for(lambda: queued(server, staff_token, sid)["unread"] == 0, what="the staff member's read marker")
    reply_box = staff_page.get_by_label("Reply")
    expect(reply_box).to_be_disabled()
    expect(staff_conversation.get_by_role("button", name="Release")).to_have_count(0)

    # Claimed: it moves to "Yours", nothing waits any more, and the composer opens.
    staff_conversation.get_by_role("button", name="Claim").click()
    expect(reply_box).to_be_enabled()
    expect(reply_box).to_be_focused()
    expect(staff_conversation.get_by_role("button", name="Claim")).to_have_count(0)
    mine = queue.get_by_role("list", name=re.compile("^Yours")).get_by_role("link")
    expect(mine).to_have_count(1)
    expect(mine).to_have_accessible_name(re.compile("Yours"))
    expect(queue.get_by_text("No one is waiting.")).to_be_visible()
    expect(staff_page).to_have_title(f"Inbox · {TITLE}")
    expect(user_log.get_by_text("A support agent joined the conversation.", exact=True)).to_be_visible()
    expect(staff_log.get_by_text("A support agent joined the conversation.", exact=True)).to_be_visible()

    # The staff member types: the user sees it; the reply arrives live.
    reply_box.press_sequentially("Hello")
    expect(user_page.get_by_text("Support is typing…")).to_be_visible()
    reply_box.press_sequentially(", a person here. How can I help?")
    reply_box.press("Enter")
    expect(reply_box).to_have_value("")
    staff_reply = user_log.get_by_role("article").filter(has_text="Hello, a person here. How can I help?")
    expect(staff_reply).to_have_count(1)
    expect(staff_reply).to_contain_text("Support")
    expect(user_page.get_by_text("Support is typing…")).to_have_count(0)
    # The user had it open: read at once, and the staff member sees that the reply was seen.
    expect(staff_log.get_by_role("article").filter(has_text="Hello, a person here.")).to_contain_text("Seen")

    # The user types: the staff member sees it.
    message_box(user_page).press_sequentially("My order")
    expect(staff_page.get_by_text("User is typing…")).to_be_visible()
    # Typing on for longer than a silent typist is shown (8 s): the user's page says so again, the line stays.
    for _ in range(5):
        user_page.wait_for_timeout(2_000)
        message_box(user_page).press("Space")
    expect(staff_page.get_by_text("User is typing…")).to_be_visible(timeout=1_000)
    message_box(user_page).fill("My order 1234 is late, can you check?")
    message_box(user_page).press("Enter")
    expect(staff_log.get_by_text("My order 1234 is late, can you check?", exact=True)).to_be_visible()
    expect(staff_page.get_by_text("User is typing…")).to_have_count(0)
    wait_for(lambda: queued(server, staff_token, sid)["unread"] == 0, what="the new message marked read")
    expect(mine).not_to_have_accessible_name(re.compile("unread"))

    screenshot(staff_page, "console-inbox", tmp_path)
    screenshot(user_page, "console-chat-with-support", tmp_path)

    # Markup in a message stays text on both sides, and nothing of it runs.
    payload = f"Is this {MARKUP} shown as text?"
    message_box(user_page).fill(payload)
    message_box(user_page).press("Enter")
    expect(user_log.get_by_text(payload, exact=True)).to_be_visible()
    expect(staff_log.get_by_text(payload, exact=True)).to_be_visible()
    assert_stayed_text(user_log, user_page)
    assert_stayed_text(staff_log, staff_page)
    assert customer.dialogs == [] and agent.dialogs == []
    wait_for(lambda: queued(server, staff_token, sid)["unread"] == 0, what="the new message marked read")

    # The user opens another session; a reply in the first one is then unread there, until it is opened.
    user_page.get_by_role("button", name="New session").click()
    expect(user_page).not_to_have_url(re.compile(sid))
    reply_box.fill("Anything else?")
    reply_box.press("Enter")
    expect(staff_log.get_by_text("Anything else?", exact=True)).to_be_visible()
    wait_for(lambda: listed(server, owner_token, owner_id, sid)["unread"] == 1, what="the reply counted unread")
    user_page.reload()
    sessions = user_page.get_by_role("navigation", name="Sessions")
    expect(sessions.get_by_role("link")).to_have_count(2)
    with_unread = sessions.get_by_role("link", name=re.compile(r"\b1 unread\b"))
    expect(with_unread).to_have_count(1)
    expect(with_unread).to_have_accessible_name(re.compile("with a person"))
    with_unread.click()
    expect(user_log.get_by_text("Anything else?", exact=True)).to_be_visible()
    expect(user_log.get_by_text(payload, exact=True)).to_be_visible()  # from the history now: text still
    assert_stayed_text(user_log, user_page)
    expect(sessions.get_by_role("link", name=re.compile("unread"))).to_have_count(0)
    wait_for(lambda: listed(server, owner_token, owner_id, sid)["unread"] == 0, what="the user's read marker")

    # Resolved by the staff member: out of the queue, no more replies; the user's view shows it resolved.
    staff_conversation.get_by_role("button", name="Resolve").click()
    expect(staff_conversation.get_by_role("status")).to_have_text("Resolved. The session is closed.")
    expect(staff_conversation.get_by_text("Resolved", exact=True)).to_be_visible()
    expect(reply_box).to_be_disabled()
    expect(mine).to_have_count(0)
    expect(staff_conversation.get_by_role("button", name="Resolve")).to_have_count(0)
    expect(user_page.get_by_role("button", name="Resolve")).to_be_disabled()
    expect(message_box(user_page)).to_be_disabled()
    expect(sessions.get_by_role("link", name=re.compile("Resolved"))).to_have_count(1)

    # Back to the chats from the keyboard; all of this happened without the staff page being loaded again.
    views.get_by_role("link", name="Chats").focus()
    staff_page.keyboard.press("Enter")
    expect(staff_page.get_by_role("navigation", name="Sessions")).to_be_visible()
    expect(staff_page).to_have_title(f"Chats · {TITLE}")
    assert staff_page.evaluate("() => window.__sameDocument") is True


def test_a_session_another_agent_takes_leaves_the_inbox_and_release_hands_one_back(inbox_server, browser_pages):
    server = inbox_server
    owner, sid = waiting_handoff(server)
    staff, colleague = add_user(server, "agent"), add_user(server, "agent")
    console = browser_pages()
    page = console.page
    # When a colleague has taken the open session, this staff member may no longer read it: the browser logs the
    # refusal of the session that tells the console so.
    console.expect_failed_request(404, f"/api/sessions/{sid}")

    # A link to a session of the inbox survives the sign-in form; staff may read it before claiming.
    page.goto(server.url(f"/console/#/inbox/{sid}"))
    sign_in(page, staff["user"]["username"], STAFF_PASSWORD)
    log, talk = messages(page), conversation(page)
    queue = page.get_by_role("navigation", name="Handoff queue")
    expect(log.get_by_text("a human please", exact=True)).to_be_visible()
    expect(talk.get_by_role("button", name="Claim")).to_be_visible()
    expect(page).to_have_title(f"(1) Inbox · {TITLE}")
    expect(talk.get_by_text("Live", exact=True)).to_be_visible()

    # A colleague claims it first: it leaves this screen and the queue at once.
    r = post_json(server.url(f"/api/handoffs/{sid}/claim"), {}, token=colleague["accessToken"])
    assert r.status_code == 200, r.text
    expect(talk.get_by_role("status")).to_have_text("Another agent has taken this session.")
    expect(log.get_by_role("article")).to_have_count(0)
    expect(page).to_have_url(re.compile(r"#/inbox$"))
    expect(queue.get_by_role("link")).to_have_count(0)
    expect(page).to_have_title(f"Inbox · {TITLE}")

    # Another handoff arrives, is claimed here and released: back with the bot, out of the queue.
    second_owner, second = waiting_handoff(server)
    waiting = queue.get_by_role("list", name=re.compile("^Waiting")).get_by_role("link")
    expect(waiting).to_have_count(1)
    waiting.press("Enter")
    expect(page).to_have_url(re.compile(rf"#/inbox/{second}$"))
    talk.get_by_role("button", name="Claim").click()
    expect(page.get_by_label("Reply")).to_be_enabled()
    expect(queue.get_by_role("list", name=re.compile("^Yours")).get_by_role("link")).to_have_count(1)
    talk.get_by_role("button", name="Release").click()
    expect(talk.get_by_role("status")).to_have_text("Released: the session is back with agent front.")
    expect(queue.get_by_role("link")).to_have_count(0)
    expect(page).to_have_url(re.compile(r"#/inbox$"))
    expect(talk.get_by_role("alert")).to_have_text("")
    released = session(server, second_owner["accessToken"], second)
    assert released["handoff"] is None and released["agent"] == "front", released
