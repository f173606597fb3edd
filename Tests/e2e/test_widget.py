"""The website widget in a real browser (Playwright driving Debian's chromium), driven by role and accessible name:
a website on another origin includes /widget.js; its visitor chats as a guest in the widget's frame, asks for a
person, reloads and finds the same conversation; a staff member sees the handoff arrive in the console's inbox
live, claims it, types and replies, and resolves it, all of which the visitor sees at once; a new conversation
gets a bot reply that streams in. A site not in WIDGET_ORIGINS cannot show the frame, and with guest access off
the widget says chat is unavailable. User text stays text everywhere. Neither the site's page nor the widget's frame
logs an error or violates a CSP, but for the refusal to frame the widget on a site not allowed to."""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from playwright.sync_api import expect

from test_agents import add_user
from test_console import (CHROMIUM, LLM_KEY, MARKUP, assert_stayed_text, chromium_browser,  # noqa: F401 (fixtures)
                          conversation, llm, messages, screenshot, sign_in)
from test_console_inbox import STAFF_PASSWORD, browser_pages  # noqa: F401 (fixture)

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium "
                                                              "(`make test` installs it)")

# The front desk replies and hands off to people; a session whose first message asks about pricing goes to an
# agent whose reply streams in (the OpenAI-compatible fake echoes, word by word).
AGENTS_YAML = """\
default_agent: front
routing:
  - keywords: [pricing]
    agent: assistant
agents:
  - name: front
    kind: rules
    intents:
      - keywords: [person, human]
        reply: Let me find a person for you.
        handoff: human
      - keywords: [hello, hi]
        reply: Hello! How can I help?
    fallback: I can find you a person, just ask.
  - name: assistant
    kind: openai
    base_url: {llm_url}/v1
    model: test-model
    api_key_env: LLM_KEY
    timeout: 10s
"""

# Included twice, as a careless site might: one button all the same.
HOST_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Example shop</title><link rel="icon" href="data:,">
<style>body {{ font: 17px/1.5 system-ui, sans-serif; color: #222; max-width: 40rem; margin: 3rem auto; padding: 0 1.5rem; }}</style>
</head>
<body>
<h1>Example shop</h1>
<p>Shoes, socks and more.</p>
<script src="{chat}/widget.js" async></script>
<script src="{chat}/widget.js" async></script>
</body>
</html>
"""
REFRESH_KEY = "chat-backend.widget.refreshToken"


class HostSite:
    """A website on an origin of its own (another port of 127.0.0.1): one page that includes the widget."""

    def __init__(self):
        self.chat_url = ""
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = HOST_PAGE.format(chat=site.chat_url).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def sites():
    """Factory: a new HostSite; all are closed at teardown."""
    made: list[HostSite] = []

    def make() -> HostSite:
        made.append(HostSite())
        return made[-1]

    yield make
    for site in made:
        site.close()


def widget_frame(page):
    return page.frame_locator('iframe[title="Chat"]')


def until(page, predicate, what: str, timeout_ms: int = 15_000):
    """Waits for `predicate()` while the page's events keep coming in (the sync API delivers them only while it
    is called, so no time.sleep here)."""
    for _ in range(timeout_ms // 100):
        if predicate():
            return
        page.wait_for_timeout(100)
    assert predicate(), f"timed out waiting for {what}"


def widget_document(page):
    """The widget's frame as a Playwright Frame (for evaluate)."""
    until(page, lambda: page.frame(url=re.compile(r"/widget/$")) is not None, "the widget's frame")
    return page.frame(url=re.compile(r"/widget/$"))


def visitor_and_staff(server, browser_pages):
    """A visitor's browser, and a staff member's signed in to the console's empty inbox: (visitor, staff,
    the staff page, its handoff queue)."""
    staff = add_user(server, "agent")
    visitor, agent = browser_pages(), browser_pages()
    agent.page.goto(server.url("/console/#/inbox"))
    sign_in(agent.page, staff["user"]["username"], STAFF_PASSWORD)
    queue = agent.page.get_by_role("navigation", name="Handoff queue")
    expect(queue.get_by_text("No one is waiting.")).to_be_visible()
    return visitor, agent, agent.page, queue


def test_a_visitor_chats_through_the_widget_and_staff_answer_live(start_server, sites, llm, browser_pages, tmp_path):
    site = sites()
    agents = tmp_path / "agents.yaml"
    agents.write_text(AGENTS_YAML.format(llm_url=llm.url))
    server = start_server(env={"AGENTS_FILE": str(agents), "LLM_KEY": LLM_KEY, "GUEST_ACCESS": "on",
                               "WIDGET_ORIGINS": site.origin, "RATE_LIMIT_GUEST": "off"})
    site.chat_url = server.base_url

    # The server's side of embedding: the script may be loaded by other sites, the page framed by this one only.
    r = requests.get(server.url("/widget.js"), timeout=10)
    assert r.status_code == 200 and r.headers["Cross-Origin-Resource-Policy"] == "cross-origin", r.headers
    r = requests.get(server.url("/widget/"), timeout=10)
    assert r.status_code == 200, r.status_code
    csp = r.headers["Content-Security-Policy"]
    assert f"frame-ancestors {site.origin}" in csp and "script-src 'self'" in csp, csp

    # A staff member waits in the inbox.
    visitor, agent, staff_page, queue = visitor_and_staff(server, browser_pages)
    page = visitor.page
    expect(conversation(staff_page).get_by_text("Live", exact=True)).to_be_visible()

    # The visitor opens the site: one chat button (the script is included twice), one global.
    page.goto(site.origin + "/")
    chat_button = page.get_by_role("button", name="Chat with us")
    expect(chat_button).to_have_count(1)
    expect(chat_button).to_have_attribute("aria-expanded", "false")
    extra_globals = page.evaluate("""() => {
        const pristine = document.createElement('iframe');
        document.body.append(pristine);
        const known = new Set(Object.getOwnPropertyNames(pristine.contentWindow));
        pristine.remove();
        return Object.getOwnPropertyNames(window).filter((name) => !known.has(name) && !name.startsWith('__'));
    }""")
    assert extra_globals == ["ChatBackendWidget"], extra_globals

    # Opened from the keyboard: the frame shows the chat, ready to write.
    chat_button.focus()
    # Its focus ring has two colours (white inside dark), so it shows on light and dark sites alike.
    expect(chat_button).to_have_css("box-shadow", re.compile(r"^rgb\(255, 255, 255\) 0px 0px 0px 3px, rgb\(27, 31, 36\) 0px 0px 0px 6px$"))
    page.keyboard.press("Enter")
    expect(chat_button).to_have_attribute("aria-expanded", "true")
    frame = widget_frame(page)
    box = frame.get_by_label("Message", exact=True)
    log = frame.get_by_role("log", name="Messages")
    expect(box).to_be_enabled()
    expect(frame.get_by_text("Live", exact=True)).to_be_visible()

    box.fill("Hello there")
    box.press("Enter")
    expect(log.get_by_text("Hello there", exact=True)).to_be_visible()
    expect(log.get_by_text("Hello! How can I help?", exact=True)).to_be_visible()
    expect(box).to_have_value("")
    screenshot(page, "widget-open", tmp_path)

    # Asking for a person: the conversation goes to people at once (whatever the agents would do); the staff
    # member's inbox shows it live.
    frame.get_by_role("button", name="Talk to a person").click()
    expect(log.get_by_text("You are being connected to a person; someone will reply here shortly.", exact=True)).to_be_visible()
    expect(frame.get_by_role("status")).to_have_text("Waiting for a person to join…")
    expect(frame.get_by_role("button", name="Talk to a person")).to_have_count(0)
    waiting = queue.get_by_role("list", name=re.compile("^Waiting")).get_by_role("link")
    expect(waiting).to_have_count(1)

    # A reload of the site continues the same conversation (the guest's refresh token is kept, and rotates).
    stored = widget_document(page).evaluate(f"() => localStorage.getItem('{REFRESH_KEY}')")
    assert stored
    page.reload()
    page.get_by_role("button", name="Chat with us").click()
    expect(log.get_by_role("article")).to_have_count(3)  # the message, its reply, the handoff note
    expect(log.get_by_text("Hello there", exact=True)).to_be_visible()
    expect(frame.get_by_role("status")).to_have_text("Waiting for a person to join…")
    expect(frame.get_by_text("Live", exact=True)).to_be_visible()
    assert widget_document(page).evaluate(f"() => localStorage.getItem('{REFRESH_KEY}')") not in (None, stored)

    # The staff member opens and claims it.
    waiting.click()
    staff_log = messages(staff_page)
    expect(staff_log.get_by_text("Hello there", exact=True)).to_be_visible()
    staff_talk = conversation(staff_page)
    staff_talk.get_by_role("button", name="Claim").click()
    reply_box = staff_page.get_by_label("Reply")
    expect(reply_box).to_be_enabled()
    expect(log.get_by_text("A support agent joined the conversation.", exact=True)).to_be_visible()
    expect(frame.get_by_role("status")).to_have_text("You are chatting with our support team.")

    # Typing and the reply reach the visitor live.
    reply_box.press_sequentially("Hi, this is")
    expect(frame.get_by_text("Support is typing…")).to_be_visible()
    reply_box.press_sequentially(" Sam from support. How can I help?")
    reply_box.press("Enter")
    staff_reply = log.get_by_role("article").filter(has_text="Hi, this is Sam from support. How can I help?")
    expect(staff_reply).to_have_count(1)
    expect(staff_reply).to_contain_text("Support")
    expect(frame.get_by_text("Support is typing…")).to_have_count(0)
    # The visitor had it on screen: read, and the staff member sees that.
    expect(staff_log.get_by_role("article").filter(has_text="Sam from support")).to_contain_text("Seen")

    # The visitor answers; staff see that live too.
    box.fill("My order 1234 is late")
    box.press("Enter")
    expect(staff_log.get_by_text("My order 1234 is late", exact=True)).to_be_visible()

    screenshot(page, "widget-with-support", tmp_path)

    # Markup the visitor types stays text, live and from the history (both pages loaded again), in the frame and
    # in the staff member's inbox; nothing of it runs, in the frame, the site or the console.
    payload = f"Is this {MARKUP} shown as text?"
    box.fill(payload)
    box.press("Enter")
    expect(log.get_by_text(payload, exact=True)).to_be_visible()
    expect(staff_log.get_by_text(payload, exact=True)).to_be_visible()
    assert_stayed_text(log, page, widget_document(page))
    assert_stayed_text(staff_log, staff_page)
    page.reload()
    staff_page.reload()
    chat_button.click()
    expect(log.get_by_text(payload, exact=True)).to_be_visible()
    expect(frame.get_by_role("status")).to_have_text("You are chatting with our support team.")
    expect(staff_log.get_by_text(payload, exact=True)).to_be_visible()
    expect(staff_talk.get_by_role("button", name="Resolve")).to_be_enabled()
    assert_stayed_text(log, page, widget_document(page))
    assert_stayed_text(staff_log, staff_page)
    assert visitor.dialogs == [] and agent.dialogs == []

    # Resolved by the staff member: the visitor sees it at once, and may start a new conversation.
    staff_talk.get_by_role("button", name="Resolve").click()
    expect(frame.get_by_role("status")).to_have_text("This conversation is resolved.")
    expect(box).to_be_disabled()
    new_conversation = frame.get_by_role("button", name="Start a new conversation")
    new_conversation.click()
    expect(log.get_by_role("article")).to_have_count(0)
    expect(box).to_be_enabled()
    expect(box).to_be_focused()

    # A new conversation about pricing goes to the streaming agent: its reply grows in place, then stays once.
    widget_document(page).evaluate("""() => {
        const log = document.querySelector('[role="log"]');
        window.__snapshots = [];
        new MutationObserver(() => window.__snapshots.push(log.innerText))
            .observe(log, {childList: true, subtree: true, characterData: true});
    }""")
    box.fill("What is your pricing?")
    box.press("Enter")
    expect(frame.get_by_text("Agent is typing…")).to_be_visible()
    reply = "Echoing: What is your pricing?"
    expect(log.get_by_text(reply, exact=True)).to_be_visible()
    expect(log.get_by_role("article")).to_have_count(2)
    expect(log.get_by_role("article").last).to_contain_text("Assistant")
    snapshots = widget_document(page).evaluate("window.__snapshots")
    assert [s for s in snapshots if "Echoing:" in s and reply not in s], f"the reply never showed while it streamed: {snapshots}"

    # Escape closes the panel and gives the focus back to the button.
    box.press("Escape")
    expect(page.locator("iframe")).to_be_hidden()
    expect(chat_button).to_have_attribute("aria-expanded", "false")
    expect(chat_button).to_be_focused()
    screenshot(page, "widget-closed", tmp_path)


def test_a_visitor_reaches_a_person_with_no_agents_configured(start_server, sites, browser_pages):
    """No agents file: "Talk to a person", before the visitor wrote anything, puts a conversation in the inbox."""
    site = sites()
    server = start_server(env={"GUEST_ACCESS": "on", "WIDGET_ORIGINS": site.origin, "RATE_LIMIT_GUEST": "off"})
    site.chat_url = server.base_url
    visitor, agent, staff_page, queue = visitor_and_staff(server, browser_pages)
    page = visitor.page

    page.goto(site.origin + "/")
    page.get_by_role("button", name="Chat with us").click()
    frame = widget_frame(page)
    frame.get_by_role("button", name="Talk to a person").click()
    expect(frame.get_by_role("status")).to_have_text("Waiting for a person to join…")
    expect(frame.get_by_role("button", name="Talk to a person")).to_have_count(0)
    expect(queue.get_by_role("list", name=re.compile("^Waiting")).get_by_role("link")).to_have_count(1)
    box = frame.get_by_label("Message", exact=True)
    box.fill("Where is my parcel?")
    box.press("Enter")
    queue.get_by_role("list", name=re.compile("^Waiting")).get_by_role("link").click()
    expect(messages(staff_page).get_by_text("Where is my parcel?", exact=True)).to_be_visible()
    assert visitor.dialogs == [] and agent.dialogs == []


def test_a_site_not_in_widget_origins_cannot_show_the_widget(start_server, sites, browser_pages):
    allowed, other = sites(), sites()
    server = start_server(env={"GUEST_ACCESS": "on", "WIDGET_ORIGINS": allowed.origin})
    other.chat_url = server.base_url
    visitor = browser_pages()
    page = visitor.page
    # Chromium refuses to render the frame (the widget page's frame-ancestors does not name this site) and logs
    # that: the one error this test causes, and expects.
    refusal = (rf"^error: Framing '{re.escape(server.base_url)}/' violates the following Content Security Policy "
               rf"directive: \"frame-ancestors {re.escape(allowed.origin)}\"\. The request has been blocked\.\s*$")
    visitor.expect_error(refusal)
    page.goto(other.origin + "/")
    page.get_by_role("button", name="Chat with us").click()
    expect(page.locator("iframe")).to_have_count(1)
    # An error page instead.
    until(page, lambda: any(re.search(refusal, line) for line in visitor.console), "the refusal to frame the widget")
    until(page, lambda: len(page.frames) == 2 and page.frames[1].url.startswith("chrome-error:"), "the blocked frame")
    expect(widget_frame(page).get_by_role("log")).to_have_count(0)
    expect(widget_frame(page).get_by_label("Message", exact=True)).to_have_count(0)
    # The loader notices the chat did not start: it says so on the page, and names the setting in the console.
    expect(page.get_by_role("status").filter(has_text="Chat is not available on this site.")).to_be_visible(timeout=10_000)
    assert any("WIDGET_ORIGINS" in line and other.origin in line for line in visitor.console), visitor.console


def test_with_guest_access_off_the_widget_says_chat_is_unavailable(start_server, browser_pages):
    server = start_server(env={"GUEST_ACCESS": "off"})
    visitor = browser_pages()
    page = visitor.page
    visitor.expect_failed_request(403, "/auth/guest")  # the browser logs the server's refusal of a guest account
    # The widget's page works on its own too.
    page.goto(server.url("/widget/"))
    expect(page.get_by_role("status")).to_have_text("Chat is not available right now.")
    expect(page.get_by_label("Message", exact=True)).to_be_disabled()
    expect(page.get_by_role("button", name="Send")).to_be_disabled()
    expect(page.get_by_role("button", name="Talk to a person")).to_have_count(0)
    expect(page.get_by_role("alert")).to_have_text("")
    # No account was made.
    assert page.evaluate(f"() => localStorage.getItem('{REFRESH_KEY}')") is None
