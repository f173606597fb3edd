"""The web console at /console/ in a real browser (Playwright driving Debian's chromium), driven by role and
accessible name: sign in, sessions, a conversation with an agent whose reply streams in live, reload, sign-out,
user text shown as text (never as markup), the server's error messages, and no Content-Security-Policy violation
nor console error.

The helpers the other browser tests share live here: `Watched` (a page in a context of its own, whose console
messages, CSP violations, uncaught errors and dialogs are recorded and checked) and `screenshot` (where the
scenarios' screenshots go: $CHAT_SCREENSHOTS when set, which `make screenshots` uses for docs/screenshots)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, expect, sync_playwright

from conftest import PASSWORD, Server, assert_json_error, auth_get, create_session, post_json, register
from fakes import OpenAIServer

CHROMIUM = Path("/usr/bin/chromium")
LLM_KEY = "sk-console-test"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium "
                                                              "(`make test` installs it)")

# The default agent streams: an OpenAI-compatible fake sends the reply word by word, so the page shows it growing.
AGENTS_YAML = """\
default_agent: assistant
agents:
  - name: assistant
    kind: openai
    base_url: {llm_url}/v1
    model: test-model
    api_key_env: LLM_KEY
    timeout: 10s
"""

# The build and the tests share two cores with other work: give the page time.
expect.set_options(timeout=15_000)


# Not named `browser`: that name belongs to pytest-playwright's fixture when the plugin is installed.
@pytest.fixture(scope="module")
def chromium_browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield browser
        browser.close()


@pytest.fixture
def llm():
    fake = OpenAIServer(LLM_KEY, chunk_delay=0.3)
    yield fake
    fake.close()


@pytest.fixture
def console_server(start_server, llm, tmp_path):
    agents = tmp_path / "agents.yaml"
    agents.write_text(AGENTS_YAML.format(llm_url=llm.url))
    return start_server(env={"AGENTS_FILE": str(agents), "LLM_KEY": LLM_KEY})


# Markup a user may type: it must show as text, never become elements, never run (window.__xss stays undefined, no
# dialog opens).
MARKUP = "<img src=x onerror=alert(1)><script>window.__xss=1</script>"

# A desktop window: the size every test page has, and so the README's screenshots.
VIEWPORT = {"width": 1280, "height": 800}


def screenshot(page: Page, name: str, tmp_path: Path) -> Path:
    """Saves what `page` shows (its viewport, not the full page) as `name`.png: into the directory that
    $CHAT_SCREENSHOTS names when it is set (`make screenshots` regenerates docs/screenshots/ so), else into the
    test's tmp_path."""
    directory = Path(os.environ.get("CHAT_SCREENSHOTS") or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    page.screenshot(path=str(path), animations="disabled", caret="hide")
    return path


class Watched:
    """A page in a browser context of its own (its own storage, so its own sign-in) whose console messages (its
    frames' too), Content-Security-Policy violations, uncaught errors and dialogs are recorded; `check()` fails
    on any of them, but for the errors a test causes on purpose and names with `expect_error` or
    `expect_failed_request`."""

    def __init__(self, context: BrowserContext, page: Page, violations: list[str]):
        self.context = context
        self.page = page
        self.violations = violations  # securitypolicyviolation events, reported by the init script of `open`
        self.console: list[str] = []
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.expected: list[re.Pattern] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.errors.append(str(error)))

        def on_dialog(dialog):
            self.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        page.on("dialog", on_dialog)

    @classmethod
    def open(cls, browser: Browser) -> "Watched":
        context = browser.new_context(viewport=VIEWPORT)
        context.set_default_timeout(15_000)
        # Besides the console messages, the securitypolicyviolation events (whatever their wording) of the page and
        # of every frame in it; the init script and the binding come in through the DevTools protocol, which the
        # pages' policies do not govern.
        violations: list[str] = []
        context.expose_binding("__reportCspViolation",
                               lambda source, text: violations.append(f"{text} in {source['frame'].url}"))
        context.add_init_script("document.addEventListener('securitypolicyviolation', "
                                "(e) => window.__reportCspViolation(`${e.violatedDirective} ${e.blockedURI}`));")
        return cls(context, context.new_page(), violations)

    def _on_console(self, message: ConsoleMessage) -> None:
        # The location is where the message comes from: for a request that failed, its URL.
        url = message.location.get("url") if message.location else ""
        self.console.append(f"{message.type}: {message.text}" + (f" [{url}]" if url else ""))

    def expect_error(self, pattern: str) -> None:
        """Console errors and CSP violations that match `pattern` (a regular expression) are no failure: the test
        causes them on purpose."""
        self.expected.append(re.compile(pattern))

    def expect_failed_request(self, status: int, path: str) -> None:
        """The browser's console error for a request to `path` (a regular expression of the URL's path) that the
        server answered with `status` is no failure: the test causes that answer on purpose."""
        self.expect_error(rf"^error: Failed to load resource: the server responded with a status of {status} "
                          rf"\([^)]*\) \[http://127\.0\.0\.1:\d+{path}\]$")

    def _unexpected(self, lines: list[str]) -> list[str]:
        return [line for line in lines if not any(pattern.search(line) for pattern in self.expected)]

    def csp_violations(self) -> list[str]:
        return self._unexpected(self.violations + [m for m in self.console
                                                   if "Content Security Policy" in m or "Refused to" in m])

    def console_errors(self) -> list[str]:
        return self._unexpected([m for m in self.console if m.startswith("error: ")])

    def problems(self) -> list[str]:
        """What the page (or a frame in it) did that it should not have: anything refused by a CSP, an error logged
        to the console, a script that failed, a dialog; but for the errors the test expects."""
        return ([f"CSP violation: {line}" for line in self.csp_violations()]
                + [f"console {line}" for line in self.console_errors()]
                + [f"uncaught: {error}" for error in self.errors] + [f"dialog: {dialog}" for dialog in self.dialogs])

    def check(self) -> None:
        problems = self.problems()
        assert problems == [], "\n".join(problems + ["all console messages:", *self.console])


@pytest.fixture
def watched(chromium_browser):
    watched = Watched.open(chromium_browser)
    yield watched
    watched.context.close()
    watched.check()  # every test


def assert_stayed_text(log, *documents) -> None:
    """No element came of the markup in `log`, and no script of it ran in `documents` (pages or frames)."""
    assert log.locator("img, script, b").count() == 0
    for document in documents:
        assert document.evaluate("() => typeof window.__xss") == "undefined", document.url


def sign_in(page: Page, username: str, password: str = PASSWORD) -> None:
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def new_user_in_a_new_session(server: Server, page: Page) -> dict:
    """Registers a user, signs in to the console as them and opens a new session; the registration's answer."""
    user = register(server)
    page.goto(server.url("/console/"))
    sign_in(page, user["user"]["username"])
    page.get_by_role("button", name="New session").click()
    return user


def conversation(page: Page):
    return page.get_by_role("region", name="Conversation")


def message_box(page: Page):
    # exact: a plain "Message" would also match the log labelled "Messages".
    return page.get_by_label("Message", exact=True)


def messages(page: Page):
    return page.get_by_role("log", name="Messages")


def test_sign_in_chat_with_a_streaming_agent_reload_and_sign_out(console_server, watched, tmp_path):
    page = watched.page
    user = register(console_server)

    # `/` lands on the console's sign-in form, served under the strict CSP.
    response = page.goto(console_server.url("/"))
    assert response is not None and response.ok, response
    assert page.url == console_server.url("/console/")
    csp = response.headers.get("content-security-policy", "")
    assert "script-src 'self'" in csp and "default-src 'none'" in csp, csp
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()

    sign_in(page, user["user"]["username"])
    header = page.get_by_role("banner")
    expect(header.get_by_text(user["user"]["username"], exact=True)).to_be_visible()
    expect(header.get_by_role("button", name="Sign out")).to_be_visible()

    # A new session shows up in the list and opens.
    sessions = page.get_by_role("navigation", name="Sessions")
    page.get_by_role("button", name="New session").click()
    expect(sessions.get_by_role("link")).to_have_count(1)
    expect(sessions.get_by_role("link").first).to_have_accessible_name(re.compile(r"Session of .*Active"))
    expect(message_box(page)).to_be_enabled()
    expect(conversation(page).get_by_text("Live", exact=True)).to_be_visible()

    # Record what the log shows while the reply streams in (before the final message replaces the draft).
    page.evaluate("""() => {
        const log = document.querySelector('[role="log"]');
        window.__snapshots = [];
        new MutationObserver(() => window.__snapshots.push(log.innerText))
            .observe(log, {childList: true, subtree: true, characterData: true});
    }""")
    message_box(page).fill("hello from the console")
    message_box(page).press("Enter")
    log = messages(page)
    expect(log.get_by_text("hello from the console", exact=True)).to_be_visible()
    expect(message_box(page)).to_have_value("")

    expect(page.get_by_text("Agent is typing…")).to_be_visible()
    reply = "Echoing: hello from the console"
    expect(log.get_by_text(reply, exact=True)).to_be_visible()
    expect(log.get_by_role("article")).to_have_count(2)  # the draft was replaced, not kept beside the reply
    expect(log.get_by_role("article").last).to_contain_text("Agent (assistant)")
    expect(page.get_by_text("Agent is typing…")).to_have_count(0)
    snapshots = page.evaluate("window.__snapshots")
    partial = [s for s in snapshots if "Echoing:" in s and reply not in s]
    assert partial, f"the reply never showed while it streamed: {snapshots}"

    screenshot(page, "console-chat", tmp_path)

    # A reload keeps the sign-in (the refresh token is in sessionStorage) and the open session with its history.
    page.reload()
    expect(header.get_by_text(user["user"]["username"], exact=True)).to_be_visible()
    expect(log.get_by_role("article")).to_have_count(2)
    expect(log.get_by_text("hello from the console", exact=True)).to_be_visible()
    expect(log.get_by_text(reply, exact=True)).to_be_visible()
    expect(sessions.get_by_role("link")).to_have_count(1)

    # Sign out: back at the form, and the refresh token this tab held is dead on the server too.
    refresh_token = page.evaluate("() => Object.values(sessionStorage)[0]")
    assert refresh_token, "no refresh token in sessionStorage"
    header.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    expect(page.get_by_label("Username")).to_be_visible()
    expect(page.get_by_role("navigation", name="Sessions")).to_have_count(0)
    assert page.evaluate("() => sessionStorage.length") == 0
    assert_json_error(post_json(console_server.url("/auth/refresh"), {"refreshToken": refresh_token}), 401,
                      "invalid_refresh_token")
    # And a reload stays signed out.
    page.reload()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()


def test_short_lived_tokens_are_refreshed_and_the_live_connection_follows(start_server, llm, tmp_path, watched):
    agents = tmp_path / "agents.yaml"
    agents.write_text(AGENTS_YAML.format(llm_url=llm.url))
    server = start_server(env={"AGENTS_FILE": str(agents), "LLM_KEY": LLM_KEY, "JWT_ACCESS_TTL": "6s"})
    page = watched.page
    user = register(server)

    page.goto(server.url("/console/"))
    sign_in(page, user["user"]["username"])
    page.get_by_role("button", name="New session").click()
    expect(conversation(page).get_by_text("Live", exact=True)).to_be_visible()
    first_refresh_token = page.evaluate("() => Object.values(sessionStorage)[0]")

    # Past the first access token's expiry: the console refreshed before it ran out and replaced its /ws
    # connection (which the server would otherwise close with token_expired).
    page.wait_for_timeout(9_000)
    assert page.evaluate("() => Object.values(sessionStorage)[0]") not in (None, first_refresh_token)
    message_box(page).fill("still here?")
    page.get_by_role("button", name="Send").click()
    log = messages(page)
    expect(log.get_by_text("still here?", exact=True)).to_be_visible()
    expect(log.get_by_text("Echoing: still here?", exact=True)).to_be_visible()
    expect(conversation(page).get_by_text("Live", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def test_an_expired_session_shows_the_servers_answer_and_can_be_resumed(start_server, watched):
    server = start_server(env={"SESSION_TTL": "3s"})
    page = watched.page
    user = register(server)

    page.goto(server.url("/console/"))
    sign_in(page, user["user"]["username"])
    page.get_by_role("button", name="New session").click()
    expect(message_box(page)).to_be_enabled()
    session_id = page.url.rsplit("/", 1)[1]
    # The browser logs the server's refusal of the message sent after the session expired, as it should.
    watched.expect_failed_request(410, f"/api/sessions/{session_id}/messages")
    page.wait_for_timeout(3_500)

    message_box(page).fill("are you still there?")
    page.get_by_role("button", name="Send").click()
    error = assert_json_error(post_json(server.url(f"/api/sessions/{session_id}/messages"), {"content": "x"},
                                        token=user["accessToken"]), 410, "session_expired")
    expect(conversation(page).get_by_role("alert")).to_have_text(error["message"])
    expect(message_box(page)).to_have_value("are you still there?")  # nothing typed is lost

    page.get_by_role("button", name="Resume").click()
    expect(page.get_by_role("button", name="Resume")).to_have_count(0)
    expect(message_box(page)).to_be_enabled()
    page.get_by_role("button", name="Send").click()
    expect(messages(page).get_by_text("are you still there?", exact=True)).to_be_visible()


def test_a_long_history_pages_back_and_a_link_opens_its_session(server, watched):
    page = watched.page
    user = register(server)
    token = user["accessToken"]
    session_id = create_session(server, token)["sessionId"]
    for i in range(60):
        r = post_json(server.url(f"/api/sessions/{session_id}/messages"), {"content": f"message {i:02d}"}, token=token)
        assert r.status_code == 201, r.text

    # A link to the session survives the sign-in form.
    page.goto(server.url(f"/console/#/sessions/{session_id}"))
    sign_in(page, user["user"]["username"])
    log = messages(page)
    expect(log.get_by_role("article")).to_have_count(50)  # the newest page
    expect(log.get_by_text("message 59", exact=True)).to_be_visible()
    expect(log.get_by_text("message 09", exact=True)).to_have_count(0)
    page.get_by_role("button", name="Load earlier messages").click()
    expect(log.get_by_role("article")).to_have_count(60)
    expect(log.get_by_text("message 00", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Load earlier messages")).to_have_count(0)

    # Shift+Enter is a new line, Enter sends.
    box = message_box(page)
    box.fill("line one")
    box.press("Shift+Enter")
    box.press_sequentially("line two")
    box.press("Enter")
    expect(log.get_by_role("article")).to_have_count(61)
    r = auth_get(server.url(f"/api/sessions/{session_id}/messages?limit=1&before=ffffffff-ffff-ffff-ffff-ffffffffffff"), token)
    assert r.json()["messages"][0]["content"] == "line one\nline two"

    # Resolve ends the session: no more writing.
    page.get_by_role("button", name="Resolve").click()
    expect(page.get_by_role("button", name="Resolve")).to_be_disabled()
    expect(box).to_be_disabled()
    expect(page.get_by_role("navigation", name="Sessions").get_by_role("link")).to_have_accessible_name(re.compile("Resolved"))
    assert auth_get(server.url(f"/api/sessions/{session_id}"), token).json()["isResolved"] is True


def test_the_history_is_reachable_by_keyboard_and_keeps_room_on_narrow_screens(server, watched):
    """The history is a named region that takes the keyboard's focus (so it scrolls without a mouse); opening a
    session that cannot be written to puts the focus there, not on the page; on a phone-sized or zoomed window
    (320x640 CSS pixels) it keeps room for messages instead of shrinking to nothing."""
    page = watched.page
    user = register(server)
    token = user["accessToken"]
    sid = create_session(server, token, metadata={"title": "Finished order"})["sessionId"]
    for i in range(15):
        assert post_json(server.url(f"/api/sessions/{sid}/messages"), {"content": f"line {i} of a long talk"}, token=token).status_code == 201
    assert post_json(server.url(f"/api/sessions/{sid}/resolve"), {}, token=token).status_code == 200
    page.goto(server.url("/console/"))
    sign_in(page, user["user"]["username"])
    page.get_by_role("navigation", name="Sessions").get_by_role("link", name=re.compile("Finished order")).click()
    expect(messages(page).get_by_text("line 14 of a long talk")).to_be_visible()
    expect(message_box(page)).to_be_disabled()
    history = page.get_by_role("region", name="Message history")
    expect(history).to_be_focused()
    assert history.evaluate("(e) => e.scrollTop") > 0, "the history opens at its newest message"
    page.keyboard.press("Home")
    page.wait_for_function("() => document.activeElement.scrollTop === 0")
    expect(messages(page).get_by_text("line 0 of a long talk", exact=True)).to_be_in_viewport()

    page.set_viewport_size({"width": 320, "height": 640})
    box = history.bounding_box()
    assert box is not None and box["height"] >= 150, f"the history is {box} at 320x640"
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 320, "the page scrolls sideways at 320 px"


def test_a_session_that_loads_slowly_does_not_take_the_focus_moved_elsewhere_meanwhile(server, watched):
    """Opening a session puts the focus in its message box, but not when the person has moved the focus elsewhere
    (to another view's link, say) while the session loaded: their Enter would land in the message box."""
    page = watched.page
    user = register(server)
    token = user["accessToken"]
    slow = create_session(server, token, metadata={"title": "Slow one"})["sessionId"]
    assert post_json(server.url(f"/api/sessions/{slow}/messages"), {"content": "an old message"}, token=token).status_code == 201
    page.goto(server.url("/console/"))
    sign_in(page, user["user"]["username"])
    sessions = page.get_by_role("navigation", name="Sessions")
    expect(sessions.get_by_role("link", name=re.compile("Slow one"))).to_be_visible()

    held: list = []  # the history's request, answered once the focus has moved
    page.route(re.compile(rf"/api/sessions/{slow}/messages"), lambda route: held.append(route))
    sessions.get_by_role("link", name=re.compile("Slow one")).click()
    sign_out = page.get_by_role("button", name="Sign out")
    sign_out.focus()
    wait_for_held = 0
    while not held and wait_for_held < 100:
        page.wait_for_timeout(50)
        wait_for_held += 1
    assert held, "the history was not asked for"
    expect(messages(page).get_by_text("an old message", exact=True)).to_have_count(0)
    held[0].continue_()
    expect(messages(page).get_by_text("an old message", exact=True)).to_be_visible()
    page.wait_for_timeout(300)  # whatever the opening does after the history shows
    expect(sign_out).to_be_focused()

    # Nothing moved meanwhile: the focus goes to the message box, ready to type.
    page.unroute(re.compile(rf"/api/sessions/{slow}/messages"))
    page.get_by_role("button", name="New session").click()
    expect(message_box(page)).to_be_focused()


def test_markup_in_messages_is_shown_as_text(console_server, watched):
    page = watched.page
    new_user_in_a_new_session(console_server, page)
    payload = MARKUP + "<b>bold</b>"
    message_box(page).fill(payload)
    page.get_by_role("button", name="Send").click()

    log = messages(page)
    expect(log.get_by_text(payload, exact=True)).to_be_visible()
    # The agent echoes it back, streamed: the deltas are text too.
    expect(log.get_by_text("Echoing: " + payload, exact=True)).to_be_visible()
    assert_stayed_text(log, page)
    assert watched.dialogs == []


def test_edits_and_deletes_show_live_and_after_a_reload(console_server, watched):
    page = watched.page
    user = new_user_in_a_new_session(console_server, page)
    token = user["accessToken"]
    message_box(page).fill("first draft")
    page.get_by_role("button", name="Send").click()
    log = messages(page)
    expect(log.get_by_text("first draft", exact=True)).to_be_visible()
    message_box(page).fill("regrettable <b>words</b>")
    page.get_by_role("button", name="Send").click()
    expect(log.get_by_text("regrettable <b>words</b>", exact=True)).to_be_visible()
    sid = auth_get(console_server.url(f"/api/users/{user['user']['id']}/sessions"), token).json()["sessions"][0]["sessionId"]
    mine = [m for m in auth_get(console_server.url(f"/api/sessions/{sid}/messages"), token).json()["messages"] if m["userId"]]

    def change(method: str, message: dict, body=None):
        r = requests.request(method, console_server.url(f"/api/sessions/{sid}/messages/{message['id']}"), json=body, timeout=10,
                             headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text

    # Edited and deleted elsewhere (another tab, the API): the open conversation follows at once.
    change("PATCH", mine[0], {"content": "final <i>text</i>"})
    edited = log.get_by_role("article").filter(has_text="final <i>text</i>")
    expect(edited).to_contain_text("edited")
    expect(log.get_by_text("first draft", exact=True)).to_have_count(0)
    change("DELETE", mine[1])
    expect(log.get_by_text("Message deleted", exact=True)).to_be_visible()
    expect(log.get_by_text("regrettable <b>words</b>", exact=True)).to_have_count(0)
    assert_stayed_text(log, page)

    # After a reload, history shows the same.
    page.reload()
    log = messages(page)
    expect(log.get_by_text("final <i>text</i>", exact=True)).to_be_visible()
    expect(log.get_by_text("Message deleted", exact=True)).to_be_visible()
    expect(log.get_by_text("regrettable <b>words</b>", exact=True)).to_have_count(0)


def test_files_sent_with_a_message_show_and_download(console_server, watched, tmp_path):
    page = watched.page
    user = new_user_in_a_new_session(console_server, page)
    token = user["accessToken"]
    message_box(page).fill("here it comes")
    page.get_by_role("button", name="Send").click()
    log = messages(page)
    expect(log.get_by_text("here it comes", exact=True)).to_be_visible()
    sid = auth_get(console_server.url(f"/api/users/{user['user']['id']}/sessions"), token).json()["sessions"][0]["sessionId"]
    data = b"<script>window.__xss = 1</script> report body \x00\xff"
    r = requests.post(console_server.url(f"/api/sessions/{sid}/attachments"), params={"filename": "report <b>1.html"}, data=data,
                      headers={"Authorization": f"Bearer {token}", "Content-Type": "text/html"}, timeout=10)
    assert r.status_code == 201, r.text
    file = r.json()
    # Sent from elsewhere (the API), with no text: it appears live, as a button that downloads the file.
    assert post_json(console_server.url(f"/api/sessions/{sid}/messages"), {"type": "file", "attachments": [file["id"]]}, token=token).status_code == 201
    button = log.get_by_role("button", name=f"Download report <b>1.html, {len(data)} bytes")
    expect(button).to_be_visible()
    with page.expect_download() as info:
        button.click()
    download = info.value
    # The file's own name (the browser replaces the characters a file name may not have).
    assert re.fullmatch(r"report .b.1\.html", download.suggested_filename), download.suggested_filename
    saved = tmp_path / "saved.html"
    download.save_as(saved)
    assert saved.read_bytes() == data
    assert_stayed_text(log, page)
    # After a reload too; deleted with its message.
    page.reload()
    log = messages(page)
    expect(log.get_by_role("button", name=f"Download report <b>1.html, {len(data)} bytes")).to_be_visible()
    message = auth_get(console_server.url(f"/api/sessions/{sid}/messages"), token).json()["messages"][-1]
    assert requests.delete(console_server.url(f"/api/sessions/{sid}/messages/{message['id']}"), headers={"Authorization": f"Bearer {token}"},
                           timeout=10).status_code == 200
    expect(log.get_by_text("Message deleted", exact=True)).to_be_visible()
    expect(log.get_by_role("button", name=re.compile("^Download "))).to_have_count(0)


def test_files_attached_in_the_composer_are_sent_with_the_message(console_server, watched):
    page = watched.page
    user = new_user_in_a_new_session(console_server, page)
    token = user["accessToken"]
    log = messages(page)
    attach = conversation(page).get_by_label("Attach files")
    # A file whose declared type its bytes contradict is refused: the server's reason shows, nothing is sent,
    # the text stays in the composer.
    attach.set_input_files([{"name": "photo.png", "mimeType": "image/png", "buffer": b"not a png at all"}])
    message_box(page).fill("with a photo")
    page.get_by_role("button", name="Send").click()
    watched.expect_failed_request(415, r"/api/sessions/[0-9a-f-]+/attachments\?filename=photo\.png")
    expect(conversation(page).get_by_role("alert")).to_contain_text("does not begin as image/png does")
    expect(message_box(page)).to_have_value("with a photo")
    expect(log.get_by_role("article")).to_have_count(0)
    # Two good files: uploaded, then sent with the text in one message; the composer empties.
    notes, table = b"meeting notes <b>bold</b>\n", bytes(range(256)) * 40
    attach.set_input_files([
        {"name": "notes.txt", "mimeType": "text/plain", "buffer": notes},
        {"name": "table.bin", "mimeType": "application/octet-stream", "buffer": table},
    ])
    message_box(page).fill("two files")
    page.get_by_role("button", name="Send").click()
    expect(log.get_by_text("two files", exact=True)).to_be_visible()
    expect(log.get_by_role("button", name="Download notes.txt, 26 bytes")).to_be_visible()
    expect(log.get_by_role("button", name=re.compile(r"^Download table\.bin, 10\.2 KB$"))).to_be_visible()
    expect(message_box(page)).to_have_value("")
    assert attach.evaluate("input => input.files.length") == 0
    sid = auth_get(console_server.url(f"/api/users/{user['user']['id']}/sessions"), token).json()["sessions"][0]["sessionId"]
    history = auth_get(console_server.url(f"/api/sessions/{sid}/messages"), token).json()["messages"]
    assert [m["content"] for m in history] == ["two files"]
    files = history[0]["attachments"]
    assert [(f["filename"], f["contentType"], f["size"]) for f in files] == [
        ("notes.txt", "text/plain", len(notes)), ("table.bin", "application/octet-stream", len(table))]
    got = [requests.get(console_server.url(f["url"]), headers={"Authorization": f"Bearer {token}"}, timeout=10).content for f in files]
    assert got == [notes, table]
    # More files than one message may carry: refused before anything is uploaded.
    attach.set_input_files([{"name": f"f{i}.txt", "mimeType": "text/plain", "buffer": b"x"} for i in range(11)])
    page.get_by_role("button", name="Send").click()
    expect(conversation(page).get_by_role("alert")).to_have_text("At most 10 files go with one message.")
    attach.set_input_files([])
    # Files alone, without text, are a message too.
    attach.set_input_files([{"name": "alone.txt", "mimeType": "text/plain", "buffer": b"just this"}])
    page.get_by_role("button", name="Send").click()
    expect(log.get_by_role("button", name="Download alone.txt, 9 bytes")).to_be_visible()
    assert_stayed_text(log, page)


def test_wrong_password_shows_the_servers_message(console_server, watched):
    page = watched.page
    user = register(console_server)
    error = assert_json_error(post_json(console_server.url("/auth/login"),
                                        {"username": user["user"]["username"], "password": "not-the-password"}),
                              401, "invalid_credentials")
    watched.expect_failed_request(401, "/auth/login")  # the browser logs the refused sign-in, as it should

    page.goto(console_server.url("/console/"))
    page.get_by_label("Username").fill(user["user"]["username"])
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_label("Password").press("Enter")  # the keyboard submits the form too
    expect(page.get_by_role("alert")).to_have_text(error["message"])
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)


def test_pages_load_without_csp_violations(console_server, watched):
    page = watched.page
    for path in ("/", "/console/", "/console/index.html"):
        response = page.goto(console_server.url(path))
        assert response is not None and response.ok, (path, response)
        expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    # Every asset the page uses came from the server under the same policy.
    for asset in ("/console/app.js", "/console/api.js", "/console/realtime.js", "/console/chat.js",
                  "/console/conversation.js", "/console/inbox.js", "/console/signin.js", "/console/admin.js",
                  "/console/charts.js", "/console/console.css"):
        response = page.request.get(console_server.url(asset))
        assert response.ok, (asset, response.status)
    assert watched.csp_violations() == [], watched.console
