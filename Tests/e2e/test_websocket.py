"""The plain JSON WebSocket endpoint `/ws`: authentication, joining, sending, typing, presence, recovery of missed
messages across reconnects, slow consumers, malformed frames, per-user caps, logout and shutdown.

Each test drives real connections with the `websockets` client against a running chat-backend. Every receive has
a timeout and every scenario an overall deadline, so a misbehaving server fails a test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import jwt
import pytest
import requests
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from conftest import Server, auth_get, create_session, post_json, register, run_cli, unique_name
from test_websocket_frames import OP_TEXT, WS, frame

RECV = 5.0    # seconds to wait for a frame that must come
QUIET = 0.5   # seconds of silence that show a frame does not come

# ---- helpers ----------------------------------------------------------------------------------------------


def run(scenario, timeout: float = 30.0):
    """Runs a test coroutine with an overall deadline so a failure never hangs the suite."""
    async def bounded():
        return await asyncio.wait_for(scenario, timeout)
    return asyncio.run(bounded())


def ws_connect(server: Server, token: str | None = None, **kwargs):
    """`async with ws_connect(...) as ws` (or `await ws_connect(...)`): a /ws connection, with header auth if `token`."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    kwargs.setdefault("ping_interval", None)
    return connect(f"ws://127.0.0.1:{server.port}/ws", additional_headers=headers, compression=None, proxy=None,
                   open_timeout=5, close_timeout=2, **kwargs)


async def send(ws, type_: str, id=None, **fields) -> None:
    event = {"type": type_, **fields}
    if id is not None:
        event["id"] = id
    await ws.send(json.dumps(event))


async def recv(ws, timeout: float = RECV, what: str = "a frame") -> dict:
    try:
        raw = await asyncio.wait_for(ws.recv(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"waited {timeout}s for {what}; nothing came") from None
    assert isinstance(raw, str), f"expected a JSON text frame, got a binary frame {raw[:200]!r}"
    event = json.loads(raw)
    assert isinstance(event, dict) and isinstance(event.get("type"), str), f"not an event: {raw[:300]}"
    return event


async def expect(ws, type_: str, timeout: float = RECV) -> dict:
    event = await recv(ws, timeout, what=f"a '{type_}' event")
    assert event["type"] == type_, f"expected a '{type_}' event, got {event}"
    return event


async def expect_ack(ws, event_name: str, id, timeout: float = RECV) -> dict:
    ack = await expect(ws, "ack", timeout)
    assert ack["event"] == event_name and ack["id"] == id, ack
    return ack


async def expect_error(ws, code: str, id=None, field: str | None = None, timeout: float = RECV) -> dict:
    event = await expect(ws, "error", timeout)
    assert set(event) == {"type", "id", "error"}, event
    assert event["id"] == id, f"the error must echo id {id!r}: {event}"
    error = event["error"]
    assert set(error) == {"code", "message", "details"}, event
    assert error["code"] == code, f"expected error code {code!r}, got {event}"
    assert isinstance(error["message"], str) and error["message"], event
    if field is not None:
        assert isinstance(error["details"], dict) and error["details"].get("field") == field, \
            f"the error must name the field {field!r}: {event}"
    return error


async def assert_quiet(ws, seconds: float = QUIET, who: str = "the connection") -> None:
    try:
        raw = await asyncio.wait_for(ws.recv(), seconds)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"{who} should have received nothing within {seconds}s, got {str(raw)[:300]}")


async def expect_close(ws, timeout: float = RECV) -> tuple[int | None, list]:
    """Reads until the server closes the connection; returns the close code it sent (None: no close frame) and
    the frames that came before it."""
    frames = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"the connection is still open after {timeout}s; got {len(frames)} frames "
                                 f"(last: {str(frames[-1])[:200] if frames else None})")
        try:
            frames.append(await asyncio.wait_for(ws.recv(), remaining))
        except ConnectionClosed as e:
            return (e.rcvd.code if e.rcvd else None), frames
        except asyncio.TimeoutError:
            continue


async def join(ws, session_id: str, id="join") -> dict:
    await send(ws, "join", id=id, sessionId=session_id)
    ack = await expect(ws, "ack")
    assert ack == {"type": "ack", "event": "join", "id": id, "sessionId": session_id, "replayed": 0}, ack
    return ack


def presence(session_id: str, user_id: str, status: str) -> dict:
    return {"type": "presence", "sessionId": session_id, "userId": user_id, "status": status}


def messages_url(server: Server, session_id: str) -> str:
    return server.url(f"/api/sessions/{session_id}/messages")


def rest_post(server: Server, token: str, session_id: str, content: str, **extra) -> dict:
    r = post_json(messages_url(server, session_id), {"content": content, **extra}, token=token)
    assert r.status_code == 201, f"POST message: {r.status_code} {r.text}"
    return r.json()


def history(server: Server, token: str, session_id: str) -> list[dict]:
    """Every stored message of the session, oldest first, over REST."""
    out: list[dict] = []
    after = None
    while True:
        params = {"limit": 200, **({"after": after} if after else {})}
        r = auth_get(messages_url(server, session_id), token, params=params)
        assert r.status_code == 200, f"GET messages: {r.status_code} {r.text}"
        body = r.json()
        out += body["messages"]
        if not body["hasMore"]:
            return out
        after = out[-1]["id"]


def healthy(server: Server) -> None:
    r = requests.get(server.url("/health"), timeout=5)
    assert r.status_code == 200, f"/health: {r.status_code} {r.text}"


def login(server: Server, username: str, password: str) -> dict:
    r = post_json(server.url("/auth/login"), {"username": username, "password": password})
    assert r.status_code == 200, f"login {username}: {r.status_code} {r.text}"
    return r.json()


def add_admin(server: Server) -> tuple[str, str]:
    """Creates an admin with the CLI, against the server's database and environment; returns (name, password)."""
    name, password = unique_name("admin"), "admin-password-1"
    r = run_cli(server.bin_path, ["user", "add", name, "--admin", "--password-stdin",
                                  "--database-url", f"sqlite://{server.db_path}"], server.dir, server.env, input=password + "\n")
    assert r.returncode == 0, f"user add --admin: {r.stdout}\n{r.stderr}"
    return name, password


@pytest.fixture(scope="module")
def world(bin_path, tmp_path_factory):
    """One server shared by the tests that need default limits: an owner (a regular user) and an admin.
    REALTIME_AUTH_TIMEOUT is 1s so the authentication timeout can be observed quickly."""
    server = Server(bin_path, tmp_path_factory.mktemp("ws-shared"), env={"REALTIME_AUTH_TIMEOUT": "1s"})
    admin_name, admin_password = add_admin(server)
    server.start()
    try:
        owner = register(server)
        admin = login(server, admin_name, admin_password)
        assert admin["user"]["role"] == "admin", admin
        yield SimpleNamespace(server=server, owner=owner, owner_id=owner["user"]["id"], token=owner["accessToken"],
                              admin=admin, admin_id=admin["user"]["id"], admin_token=admin["accessToken"])
    finally:
        server.stop()


# ---- 1. authentication ------------------------------------------------------------------------------------


def test_authentication(world):
    server, token, owner_id = world.server, world.token, world.owner_id
    sid = create_session(server, token)["sessionId"]
    claims = jwt.decode(token, options={"verify_signature": False})
    forged = jwt.encode(claims, "another-secret-" + "x" * 64, algorithm="HS256")

    async def scenario():
        async with ws_connect(server) as silent, ws_connect(server) as anon, ws_connect(server, token) as by_header:
            opened = time.monotonic()

            # Before authenticating, every other event is refused, and the connection stays usable.
            attempts = [("join", {"sessionId": sid}), ("leave", {"sessionId": sid}),
                        ("message", {"sessionId": sid, "content": "hi"}), ("typing", {"sessionId": sid, "isTyping": True})]
            for i, (type_, fields) in enumerate(attempts):
                await send(anon, type_, id=f"e{i}", **fields)
                await expect_error(anon, "unauthenticated", id=f"e{i}")

            await send(anon, "authenticate", id="bad", token="not-a-jwt")
            await expect_error(anon, "invalid_token", id="bad")
            await send(anon, "authenticate", id="forged", token=forged)
            await expect_error(anon, "invalid_token", id="forged")

            await send(anon, "authenticate", id=7, token=token)
            ack = await expect(anon, "ack")
            assert ack == {"type": "ack", "event": "authenticate", "id": 7, "userId": owner_id}, ack
            await send(anon, "authenticate", id=8, token=token)
            await expect_error(anon, "already_authenticated", id=8)
            await join(anon, sid)

            # A valid Authorization header on the upgrade needs no authenticate event.
            await join(by_header, sid, id="hj")

            # The silent connection is closed when the auth timeout (1s) passes: an error, then close 1008.
            code, frames = await expect_close(silent, timeout=4)
            elapsed = time.monotonic() - opened
            assert code == 1008, f"close code {code}, frames {frames}"
            assert 0.7 <= elapsed <= 3.0, f"closed after {elapsed:.2f}s, expected about 1s"
            for raw in frames:
                event = json.loads(raw)
                assert event["type"] == "error" and event["error"]["code"] == "authentication_timeout", event

            # Authenticated connections outlive the timeout and still work.
            await asyncio.sleep(max(0.0, opened + 1.5 - time.monotonic()))
            await send(by_header, "message", id="m", sessionId=sid, content="after the auth timeout")
            sent = (await expect_ack(by_header, "message", "m"))["message"]
            assert (await expect(anon, "message"))["message"] == sent

        # A bad Authorization header: an error, then close 1008.
        async with ws_connect(server, "garbage.token.here") as bad_header:
            await expect_error(bad_header, "invalid_token")
            code, frames = await expect_close(bad_header)
            assert code == 1008, (code, frames)

    run(scenario())


# ---- 2. joining someone else's session --------------------------------------------------------------------


def test_join_other_users_session_is_not_found(world):
    server, token = world.server, world.token
    intruder = register(server)
    sid = create_session(server, token)["sessionId"]

    async def scenario():
        async with ws_connect(server, token) as owner_ws, ws_connect(server, intruder["accessToken"]) as intr:
            await join(owner_ws, sid)

            await send(intr, "join", id="j1", sessionId=sid)
            await expect_error(intr, "not_found", id="j1")
            # The same answer as for a session that does not exist: existence is not revealed.
            await send(intr, "join", id="j2", sessionId=str(uuid.uuid4()))
            await expect_error(intr, "not_found", id="j2")
            await send(intr, "message", id="m", sessionId=sid, content="let me in")
            await expect_error(intr, "not_found", id="m")
            await send(intr, "typing", id="t", sessionId=sid, isTyping=True)
            await expect_error(intr, "not_joined", id="t")
            await send(intr, "leave", id="l", sessionId=sid)
            answer = await recv(intr)
            assert answer["id"] == "l", answer

            posted = rest_post(server, token, sid, "private")
            # Nothing of the session reaches the intruder.
            await assert_quiet(intr, who="the intruder")
            # The owner gets the message and nothing from the intruder (no typing, no presence from a stranger).
            event = await recv(owner_ws)
            assert event == {"type": "message", "message": posted}, \
                f"the owner's connection got {event} (sent by the intruder's leave) before its own message"
            await assert_quiet(owner_ws, 0.2, who="the owner")

        assert [m["content"] for m in history(server, token, sid)] == ["private"]

    run(scenario())


# ---- 3. sending messages ----------------------------------------------------------------------------------


def test_message_flow(world):
    server, token, owner_id, admin_id = world.server, world.token, world.owner_id, world.admin_id
    sid = create_session(server, token)["sessionId"]

    async def scenario():
        async with ws_connect(server, token) as a, ws_connect(server, token) as b, \
                ws_connect(server, world.admin_token) as adm:
            await join(a, sid)
            await join(b, sid)
            await join(adm, sid)
            for ws in (a, b):
                assert await expect(ws, "presence") == presence(sid, admin_id, "online")

            # A sends: A gets an ack with the stored message, B and the admin get it as a `message` event.
            await send(a, "message", id=1, sessionId=sid, content="hello from A", messageType="markdown", metadata={"k": [1, 2]})
            ack = await expect_ack(a, "message", 1)
            assert set(ack) == {"type", "event", "id", "message", "duplicate"} and ack["duplicate"] is False, ack
            m = ack["message"]
            assert (m["content"], m["type"], m["metadata"], m["sessionId"], m["userId"]) == \
                ("hello from A", "markdown", {"k": [1, 2]}, sid, owner_id), m
            uuid.UUID(m["id"])
            for ws in (b, adm):
                assert await expect(ws, "message") == {"type": "message", "message": m}
            await assert_quiet(a, 0.3, who="the sender (it got an ack, not an echo)")
            assert history(server, token, sid) == [m]

            # A REST post reaches all three connections.
            posted = rest_post(server, token, sid, "hello over REST")
            for ws in (a, b, adm):
                assert await expect(ws, "message") == {"type": "message", "message": posted}

            # A retry with the same clientMessageId: the same stored message, marked duplicate, not broadcast again.
            await send(a, "message", id="c1", sessionId=sid, content="once", clientMessageId="cm-1")
            first = await expect_ack(a, "message", "c1")
            assert first["duplicate"] is False and first["message"]["clientMessageId"] == "cm-1", first
            for ws in (b, adm):
                assert await expect(ws, "message") == {"type": "message", "message": first["message"]}
            await send(a, "message", id="c2", sessionId=sid, content="once", clientMessageId="cm-1")
            again = await expect_ack(a, "message", "c2")
            assert again["duplicate"] is True, again
            assert again["message"]["id"] == first["message"]["id"], (first, again)
            await asyncio.gather(assert_quiet(b, who="B after a retry"), assert_quiet(adm, who="the admin after a retry"),
                                 assert_quiet(a, 0.2, who="A after its ack"))
            assert len(history(server, token, sid)) == 3

            # Validation errors name the field; nothing is stored or broadcast; the connection stays usable.
            cases = [
                ({"sessionId": sid, "content": ""}, "content"),
                ({"sessionId": sid, "content": "x", "colour": "red"}, "colour"),
                ({"sessionId": sid, "content": "x", "messageType": "shout"}, "messageType"),
                ({"sessionId": "not-a-uuid", "content": "x"}, "sessionId"),
            ]
            for i, (fields, field) in enumerate(cases):
                await send(a, "message", id=f"v{i}", **fields)
                await expect_error(a, "validation_failed", id=f"v{i}", field=field)
            await asyncio.gather(assert_quiet(b, who="B after invalid sends"), assert_quiet(adm, who="the admin after invalid sends"))
            assert len(history(server, token, sid)) == 3, "an invalid message was stored"

            await send(a, "message", id="ok", sessionId=sid, content="still works")
            last = (await expect_ack(a, "message", "ok"))["message"]
            assert (await expect(b, "message"))["message"] == last
            assert [x["id"] for x in history(server, token, sid)][-1] == last["id"]

    run(scenario())


# ---- 4. typing --------------------------------------------------------------------------------------------


def test_typing(world):
    server, token, owner_id, admin_id = world.server, world.token, world.owner_id, world.admin_id
    sid = create_session(server, token)["sessionId"]

    async def scenario():
        async with ws_connect(server, token) as a, ws_connect(server, token) as b, \
                ws_connect(server, world.admin_token) as adm:
            # Typing before joining is refused.
            await send(a, "typing", id="t0", sessionId=sid, isTyping=True)
            await expect_error(a, "not_joined", id="t0")

            await join(adm, sid)
            await join(a, sid)
            await join(b, sid)
            assert await expect(adm, "presence") == presence(sid, owner_id, "online")  # once: a user, not a connection

            # Five quick typing events: the admin (another user) sees one; the owner's other connection sees none.
            started = time.monotonic()
            for _ in range(5):
                await send(a, "typing", sessionId=sid, isTyping=True)
            event = await expect(adm, "typing", timeout=1.0)
            assert event == {"type": "typing", "sessionId": sid, "userId": owner_id, "isTyping": True}, event
            await asyncio.gather(assert_quiet(adm, 0.3, who="the admin (throttled typing)"),
                                 assert_quiet(b, 0.3, who="the owner's other connection"),
                                 assert_quiet(a, 0.3, who="the typing connection"))

            # After the 500 ms window the next one goes through.
            await asyncio.sleep(max(0.0, started + 0.6 - time.monotonic()))
            await send(a, "typing", sessionId=sid, isTyping=False)
            event = await expect(adm, "typing", timeout=1.0)
            assert event == {"type": "typing", "sessionId": sid, "userId": owner_id, "isTyping": False}, event

            # The admin's typing reaches both of the owner's connections.
            await send(adm, "typing", sessionId=sid, isTyping=True)
            for ws in (a, b):
                assert await expect(ws, "typing") == {"type": "typing", "sessionId": sid, "userId": admin_id, "isTyping": True}
            await assert_quiet(adm, 0.2, who="the admin's own connection")

            # A change inside the window is not lost: "stopped" right after "started" arrives at the window's end
            # (dropping it left the others seeing a typist until they gave up on them).
            await asyncio.sleep(0.6)
            await send(a, "typing", sessionId=sid, isTyping=True)
            assert (await expect(adm, "typing", timeout=1.0))["isTyping"] is True
            await send(a, "typing", sessionId=sid, isTyping=False)
            stopped = await expect(adm, "typing", timeout=1.0)
            assert stopped == {"type": "typing", "sessionId": sid, "userId": owner_id, "isTyping": False}, stopped
            await assert_quiet(adm, 0.6, who="the admin after the held change")
            # A change undone inside the window sends nothing more.
            await send(a, "typing", sessionId=sid, isTyping=True)
            assert (await expect(adm, "typing", timeout=1.0))["isTyping"] is True
            await send(a, "typing", sessionId=sid, isTyping=False)
            await send(a, "typing", sessionId=sid, isTyping=True)
            await assert_quiet(adm, 0.8, who="the admin (a change undone inside the window)")

        # A typist whose connection goes stops typing for the others, at once; nothing held for the window's end
        # goes out after it (a "typing" then would show a typist who has left).
        for held in (False, True):
            async with ws_connect(server, world.admin_token) as adm:
                await join(adm, sid)
                async with ws_connect(server, token) as c:
                    await join(c, sid)
                    assert await expect(adm, "presence") == presence(sid, owner_id, "online")
                    await send(c, "typing", sessionId=sid, isTyping=not held)
                    assert (await expect(adm, "typing"))["isTyping"] is (not held)
                    await send(c, "typing", sessionId=sid, isTyping=held)  # held for the window's end
                stopped = [await expect(adm, "typing")] if not held else []
                assert [e["isTyping"] for e in stopped] == ([False] if not held else []), stopped
                assert await expect(adm, "presence") == presence(sid, owner_id, "offline")
                await assert_quiet(adm, 0.8, who="the admin after the typist left")

        assert history(server, token, sid) == [], "typing must not be stored"

    run(scenario())


def test_a_connection_that_joins_hears_who_is_typing_there(world):
    """Someone opening a conversation (a staff member taking a handoff) sees the other side typing at once, not
    only at their next keystroke; a typist who stopped is not announced, nor the joiner's own typing."""
    server, token, owner_id = world.server, world.token, world.owner_id
    sid = create_session(server, token)["sessionId"]

    async def scenario():
        async with ws_connect(server, token) as a:
            await join(a, sid)
            await send(a, "typing", sessionId=sid, isTyping=True)
            async with ws_connect(server, world.admin_token) as adm:
                await join(adm, sid)
                event = await expect(adm, "typing", timeout=1.0)
                assert event == {"type": "typing", "sessionId": sid, "userId": owner_id, "isTyping": True}, event
                await assert_quiet(adm, 0.3, who="the admin after the typing it joined into")
            async with ws_connect(server, token) as b:  # the typist's own other connection
                await join(b, sid)
                await assert_quiet(b, 0.3, who="the typist's other connection")
            await asyncio.sleep(0.6)
            await send(a, "typing", sessionId=sid, isTyping=False)
            await asyncio.sleep(0.1)
            async with ws_connect(server, world.admin_token) as adm:
                await join(adm, sid)
                await assert_quiet(adm, 0.5, who="the admin joining after the typist stopped")

    run(scenario())


# ---- 5. presence ------------------------------------------------------------------------------------------


def test_presence(world):
    server, token, owner_id = world.server, world.token, world.owner_id
    sid = create_session(server, token)["sessionId"]

    async def scenario():
        async with ws_connect(server, world.admin_token) as adm:
            await join(adm, sid)

            async with ws_connect(server, token) as owner_ws:
                await join(owner_ws, sid)
                assert await expect(adm, "presence") == presence(sid, owner_id, "online")
                await assert_quiet(owner_ws, 0.2, who="the owner (no presence about itself)")

                await send(owner_ws, "leave", id="bye", sessionId=sid)
                assert await expect(owner_ws, "ack") == {"type": "ack", "event": "leave", "id": "bye", "sessionId": sid}
                assert await expect(adm, "presence") == presence(sid, owner_id, "offline")

                await join(owner_ws, sid, id="again")
                assert await expect(adm, "presence") == presence(sid, owner_id, "online")
            # A clean close...
            assert await expect(adm, "presence") == presence(sid, owner_id, "offline")

            # ...and an abrupt one (TCP reset, no close frame).
            owner_ws = await ws_connect(server, token)
            await join(owner_ws, sid)
            assert await expect(adm, "presence") == presence(sid, owner_id, "online")
            owner_ws.transport.abort()
            assert await expect(adm, "presence") == presence(sid, owner_id, "offline")
            await assert_quiet(adm, 0.3, who="the admin")

    run(scenario())


def test_presence_is_per_user_not_per_connection(world):
    """A user with two connections in a session is online once, and offline only when the last one goes."""
    server, token, owner_id = world.server, world.token, world.owner_id
    sid = create_session(server, token)["sessionId"]

    async def scenario():
        async with ws_connect(server, world.admin_token) as adm:
            await join(adm, sid)
            first = await ws_connect(server, token)
            await join(first, sid)
            assert await expect(adm, "presence") == presence(sid, owner_id, "online")
            async with ws_connect(server, token) as second:
                await join(second, sid, id="second")
                await assert_quiet(adm, 0.3, who="the admin (the owner was online already)")
                await first.close()
                await assert_quiet(adm, 0.3, who="the admin (the owner is still online on another connection)")
            assert await expect(adm, "presence") == presence(sid, owner_id, "offline")

    run(scenario())


def test_replayed_counts_only_messages_sent(world):
    """A connection that saw messages live and rejoins with an older lastMessageId gets none of them again: replayed 0."""
    server, token = world.server, world.token
    sid = create_session(server, token)["sessionId"]
    first = rest_post(server, token, sid, "before")

    async def scenario():
        async with ws_connect(server, token) as ws:
            await join(ws, sid)
            for i in range(2):
                rest_post(server, world.admin_token, sid, f"live {i}")
                assert (await expect(ws, "message"))["message"]["content"] == f"live {i}"
            await send(ws, "join", id="again", sessionId=sid, lastMessageId=first["id"])
            ack = await expect(ws, "ack")
            assert ack["replayed"] == 0, ack

    run(scenario())


# ---- 6. recovery across reconnects ------------------------------------------------------------------------


def test_missed_messages_are_recovered_across_reconnects(world):
    """Messages are posted over REST at a steady pace while clients keep reconnecting (often abruptly), each joining
    with the last id it saw. Each client must end up with exactly the stored history, in order, once each.
    Three independent clients run at once to give the join/publish interleavings more chances to go wrong."""
    server, token = world.server, world.token
    sid = create_session(server, token)["sessionId"]
    seed = rest_post(server, token, sid, "seed")
    total, clients = 150, 3
    posting_errors: list[str] = []
    rng_seed = random.randrange(1 << 30)

    def poster():
        try:
            with requests.Session() as http:
                for i in range(total):
                    r = http.post(messages_url(server, sid), json={"content": f"m{i}"},
                                  headers={"Authorization": f"Bearer {token}"}, timeout=10)
                    if r.status_code != 201:
                        posting_errors.append(f"{r.status_code} {r.text}")
                        return
                    time.sleep(0.02)
        except Exception as e:  # noqa: BLE001 - reported by the test
            posting_errors.append(repr(e))

    class Client:
        def __init__(self, n: int):
            self.n = n
            self.rng = random.Random(rng_seed + n)
            self.collected = [seed["id"]]
            self.where: dict[str, list[str]] = {seed["id"]: ["REST"]}  # id -> the connections (and phases) that delivered it
            self.log: list[str] = []
            self.replays: list[int] = []  # `replayed` of each join ack seen during the run

        def take(self, event: dict, label: str) -> None:
            message = event["message"]
            assert message["sessionId"] == sid, event
            self.collected.append(message["id"])
            self.where.setdefault(message["id"], []).append(label)

        def context(self) -> str:
            return (f"client {self.n}, random seed {rng_seed}, {len(self.log)} reconnects, {len(self.collected)} ids collected\n"
                    + "\n".join(self.log[-8:]))

        async def run(self, thread: threading.Thread) -> None:
            rng, cycle = self.rng, 0
            while thread.is_alive() or cycle < 3:
                ws = await ws_connect(server, token)
                before_ack, acked = 0, False
                try:
                    await send(ws, "join", id=cycle, sessionId=sid, lastMessageId=self.collected[-1])
                    window_end = time.monotonic() + rng.uniform(0.02, 0.2)
                    while (remaining := window_end - time.monotonic()) > 0:
                        try:
                            event = json.loads(await asyncio.wait_for(ws.recv(), remaining))
                        except asyncio.TimeoutError:
                            break
                        if event["type"] == "message":
                            self.take(event, f"cycle {cycle} {'after' if acked else 'before'} its join ack")
                            before_ack += 0 if acked else 1
                        elif event["type"] == "ack":
                            assert event["event"] == "join" and event["id"] == cycle and event["sessionId"] == sid, event
                            assert before_ack >= event["replayed"], (before_ack, event)
                            self.replays.append(event["replayed"])
                            acked = True
                        else:
                            raise AssertionError(f"unexpected event {event}")
                finally:
                    if rng.random() < 0.7:
                        ws.transport.abort()  # abrupt: no close frame
                    else:
                        await ws.close()
                self.log.append(f"cycle {cycle}: {before_ack} messages before the ack, acked={acked}, "
                                f"{len(self.collected)} ids so far")
                cycle += 1
                await asyncio.sleep(rng.uniform(0, 0.1))  # away for a while: messages pile up to be replayed

            # The final reconnect, after the last post: whatever is left is replayed, then the ack, then silence.
            async with ws_connect(server, token) as ws:
                await send(ws, "join", id="final", sessionId=sid, lastMessageId=self.collected[-1])
                replayed = 0
                while True:
                    event = await recv(ws)
                    if event["type"] == "ack":
                        assert event["event"] == "join" and event["replayed"] == replayed, (event, replayed)
                        break
                    assert event["type"] == "message", event
                    self.take(event, "final join")
                    replayed += 1
                await assert_quiet(ws, 0.3)

        def check(self, expected: list[str]) -> None:
            context = self.context()
            assert len(self.log) >= 5 and sum(self.replays) > 0, f"the run did not exercise recovery: {self.replays}; {context}"
            duplicates = {i: self.where[i] for i in self.collected if len(self.where[i]) > 1}
            assert not duplicates, f"{len(duplicates)} messages delivered twice: {duplicates}; {context}"
            seen = set(self.collected)
            missing = [i for i in expected if i not in seen]
            assert not missing, f"{len(missing)} messages never delivered (first {missing[:3]}); {context}"
            if self.collected != expected:
                at = next(i for i, (a, b) in enumerate(zip(self.collected, expected)) if a != b)
                raise AssertionError(f"messages delivered out of order from position {at}: got {self.collected[at:at + 3]}, "
                                     f"stored order {expected[at:at + 3]}; {context}")

    readers = [Client(n) for n in range(clients)]

    async def scenario():
        thread = threading.Thread(target=poster, daemon=True)
        thread.start()
        try:
            await asyncio.gather(*(c.run(thread) for c in readers))
        finally:
            thread.join(timeout=30)

    try:
        run(scenario(), timeout=40)
    except Exception as e:
        raise AssertionError(f"{e!r}\n" + "\n".join(c.context() for c in readers)) from e
    assert not posting_errors, posting_errors
    expected = [m["id"] for m in history(server, token, sid)]
    assert len(expected) == total + 1
    for c in readers:
        c.check(expected)


# ---- 7. slow consumers ------------------------------------------------------------------------------------


def test_slow_consumer_is_disconnected(start_server):
    server = start_server(env={"REALTIME_QUEUE_LENGTH": "8"})
    owner = register(server)
    token = owner["accessToken"]
    sid = create_session(server, token)["sessionId"]
    total, content = 400, "x" * 10_000

    def post(i: int) -> str:
        r = post_json(messages_url(server, sid), {"content": content, "metadata": {"n": i}}, token=token)
        assert r.status_code == 201, f"POST {i}: {r.status_code} {r.text}"
        return r.json()["id"]

    async def scenario():
        loop = asyncio.get_running_loop()
        # A tiny receive buffer and a one-frame client queue: this client's socket fills up almost at once. The
        # server's kernel send buffer still absorbs about 3 MB (Linux defaults), hence 400 messages of 10 KB.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.setblocking(False)
        slow = await ws_connect(server, token, sock=sock, max_queue=1)
        normal = await ws_connect(server, token)
        try:
            await join(slow, sid, id="slow")
            await join(normal, sid, id="normal")
            # From here on the slow client reads nothing.

            received: list[str] = []

            async def read_normal():
                while len(received) < total:
                    received.append((await expect(normal, "message", timeout=20))["message"]["id"])

            reader = asyncio.create_task(read_normal())
            with ThreadPoolExecutor(max_workers=4) as pool:
                ids = await asyncio.gather(*(loop.run_in_executor(pool, post, i) for i in range(total)))
            await reader
            assert sorted(received) == sorted(ids), "the normal client missed messages"
            await loop.run_in_executor(None, healthy, server)

            # The slow client finally reads: a bounded backlog, then the end of the connection.
            code, frames = await expect_close(slow, timeout=15)
            # The server drops the connection at once (it cannot even send a close frame to a client that does not
            # read), so the client sees an abnormal closure, or 1013 if the close frame made it through.
            assert code in (1013, 1006, None), f"expected the connection to be dropped, got close {code} after {len(frames)} frames"
            assert len(frames) < total, f"the slow client got all {len(frames)} frames: it was never cut off"

            # The server and the normal client are fine.
            await loop.run_in_executor(None, healthy, server)
            posted = await loop.run_in_executor(None, rest_post, server, token, sid, "after the slow one")
            assert (await expect(normal, "message"))["message"] == posted
        finally:
            for ws in (slow, normal):
                ws.transport.abort()

    run(scenario(), timeout=50)


def test_replay_longer_than_the_queue_reaches_a_reading_client(start_server):
    """A client that reads as fast as it can must get a replay of more missed messages than REALTIME_QUEUE_LENGTH:
    the queue protects against slow readers, not against long absences."""
    server = start_server(env={"REALTIME_QUEUE_LENGTH": "8"})
    owner = register(server)
    token = owner["accessToken"]
    sid = create_session(server, token)["sessionId"]
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda i: rest_post(server, token, sid, f"m{i}"), range(200)))  # one replay page
    ids = [m["id"] for m in history(server, token, sid)]

    async def scenario():
        async with ws_connect(server, token) as ws:
            await send(ws, "join", id="j", sessionId=sid, lastMessageId=ids[0])
            got = []
            try:
                while True:
                    event = await recv(ws)
                    if event["type"] == "ack":
                        assert event["replayed"] == len(ids) - 1, event
                        break
                    assert event["type"] == "message", event
                    got.append(event["message"]["id"])
            except ConnectionClosed as e:
                raise AssertionError(f"a reading client was disconnected during a replay of {len(ids) - 1} messages "
                                     f"after {len(got)}: close {e.rcvd.code if e.rcvd else None} "
                                     f"{e.rcvd.reason if e.rcvd else ''!r}") from None
            assert got == ids[1:]

    run(scenario())


@pytest.mark.parametrize("path", ["/ws", "/socket.io/?EIO=4&transport=websocket"], ids=["ws", "socketio"])
def test_a_burst_of_events_larger_than_the_queue_is_all_answered(start_server, path):
    """A client that reads its answers may send more events at once than REALTIME_QUEUE_LENGTH (an offline
    outbox flushed on reconnect): every one is answered, in order, and the connection stays. The queue
    bounds what a client does not read, not what it asks for."""
    server = start_server(env={"REALTIME_QUEUE_LENGTH": "8"})
    owner = register(server)
    token = owner["accessToken"]
    sid = create_session(server, token)["sessionId"]
    total = 60
    socketio = path.startswith("/socket.io")
    ws = WS(server.port, path, headers=None if socketio else {"Authorization": f"Bearer {token}"})
    try:
        if socketio:
            ws.sio_connect({"token": token})
        events = []
        for i in range(total):  # events answered at once (errors), and a few messages
            if i % 10:
                name, data = "leave", {"sessionId": str(uuid.uuid4())}
            else:
                name, data = "message", {"sessionId": sid, "content": f"burst {i}"}
            events.append(f"42{i}" + json.dumps([name, data]) if socketio else json.dumps({"type": name, "id": i, **data}))
        assert ws.send_raw(b"".join(frame(OP_TEXT, text) for text in events))  # one write
        answered = []
        while len(answered) < total:
            text = ws.recv_text(what=f"answer {len(answered) + 1} of {total}")
            if socketio:
                assert text.startswith("43"), text
                at = text.index("[")
                reply = json.loads(text[at:])[0]
                answered.append((int(text[2:at]), "error" if "error" in reply else "ack"))
            else:
                event = json.loads(text)
                if event["type"] in ("ack", "error"):
                    answered.append((event["id"], event["type"]))
        assert [i for i, _ in answered] == list(range(total)), answered
        assert [kind for _, kind in answered] == ["ack" if i % 10 == 0 else "error" for i in range(total)], answered
    finally:
        ws.close()
    stored = [m["content"] for m in history(server, token, sid)]
    assert stored == [f"burst {i}" for i in range(0, total, 10)], stored


# ---- 8. malformed input -----------------------------------------------------------------------------------


def test_malformed_frames(world):
    server, token = world.server, world.token
    sid = create_session(server, token)["sessionId"]

    async def still_works(ws, n: int) -> None:
        await send(ws, "message", id=f"ok{n}", sessionId=sid, content=f"fine {n}")
        ack = await expect_ack(ws, "message", f"ok{n}")
        assert ack["message"]["content"] == f"fine {n}", ack

    async def scenario():
        async with ws_connect(server, token) as ws:
            await join(ws, sid)

            await ws.send(json.dumps({"type": "message", "sessionId": sid, "content": "as binary"}).encode())
            await expect_error(ws, "unsupported_frame")
            await still_works(ws, 1)

            await ws.send('{"type": "message", "sessionId": ')
            await expect_error(ws, "invalid_json")
            await still_works(ws, 2)

            await ws.send("[1, 2, 3]")
            await expect_error(ws, "invalid_json")
            await still_works(ws, 3)

            await send(ws, "shout", id=5, sessionId=sid)
            await expect_error(ws, "validation_failed", id=5, field="type")

            # An id that is not one (an object, a fraction, a string over 128 characters) is refused, not echoed.
            for bad in ({"x": 1}, 1.5, "i" * 129):
                await send(ws, "leave", id=bad, sessionId=sid)
                await expect_error(ws, "validation_failed", id=None, field="id")
            await send(ws, "message", id="i" * 128, sessionId=sid, content="fine 128")
            await expect_ack(ws, "message", "i" * 128)
            await still_works(ws, 4)

            await ws.send(json.dumps({"id": 6, "sessionId": sid}))
            await expect_error(ws, "validation_failed", id=6, field="type")
            await still_works(ws, 5)

            # The longest valid message fits however it is escaped (10,000 characters as surrogate-pair escapes);
            # a frame over the 256 KiB limit ends the connection with 1009.
            await ws.send(json.dumps({"type": "message", "id": "longest", "sessionId": sid, "content": "\U0001F600" * 10_000}))
            assert (await expect_ack(ws, "message", "longest"))["message"]["content"] == "\U0001F600" * 10_000
            await send(ws, "message", id="big", sessionId=sid, content="x" * (300 * 1024))
            code, frames = await expect_close(ws)
            assert code == 1009, f"close code {code} after {frames}"

        assert [m["content"] for m in history(server, token, sid)] == ["fine 1", "fine 2", "fine 3", "fine 128", "fine 4", "fine 5", "\U0001F600" * 10_000]
        healthy(server)
        async with ws_connect(server, token) as ws:
            await join(ws, sid)
            await still_works(ws, 6)

    run(scenario())


# ---- 9. connections per user ------------------------------------------------------------------------------


def test_connections_per_user_cap(start_server):
    server = start_server(env={"REALTIME_MAX_CONNECTIONS_PER_USER": "2"})
    user = register(server)
    token = user["accessToken"]
    sid = create_session(server, token)["sessionId"]

    async def authenticate(ws, id):
        await send(ws, "authenticate", id=id, token=token)
        return await recv(ws)

    async def scenario():
        async with ws_connect(server, token) as c1, ws_connect(server) as c2:
            await join(c1, sid)
            ack = await authenticate(c2, "a2")
            assert ack["type"] == "ack" and ack["event"] == "authenticate", ack
            await join(c2, sid)

            # Over the cap with a header: refused and closed.
            async with ws_connect(server, token) as c3:
                await expect_error(c3, "too_many_connections")
                code, frames = await expect_close(c3)
                assert code == 1008, (code, frames)

            # Over the cap with an authenticate event: refused.
            async with ws_connect(server) as c4:
                answer = await authenticate(c4, "a4")
                assert answer["type"] == "error" and answer["error"]["code"] == "too_many_connections", answer

                # One of the two closes: a slot frees up.
                await c1.close()
                deadline = time.monotonic() + 3
                while True:
                    async with ws_connect(server) as c5:
                        answer = await authenticate(c5, "a5")
                        if answer["type"] == "ack":
                            await join(c5, sid, id="j5")
                            break
                    assert time.monotonic() < deadline, f"no slot after closing a connection: {answer}"
                    await asyncio.sleep(0.1)

                # The refused connection must not be able to act as the user.
                await send(c4, "join", id="j4", sessionId=sid)
                try:
                    answer = await recv(c4)
                except ConnectionClosed:
                    return  # closing it is fine too
                assert answer["type"] == "error", \
                    f"a connection refused with too_many_connections could still join the session: {answer}"

    run(scenario())


# ---- 10. logout -------------------------------------------------------------------------------------------


def test_logout_closes_that_tokens_connections(world):
    server = world.server
    user = register(server)
    token = user["accessToken"]
    other_token = login(server, user["user"]["username"], user["password"])["accessToken"]
    sid = create_session(server, token)["sessionId"]

    async def scenario():
        async with ws_connect(server, token) as c1, ws_connect(server) as c2, ws_connect(server, other_token) as c3:
            await join(c1, sid)
            await send(c2, "authenticate", id="a", token=token)
            await expect_ack(c2, "authenticate", "a")
            await join(c2, sid)
            await join(c3, sid)

            r = await asyncio.get_running_loop().run_in_executor(
                None, lambda: post_json(server.url("/auth/logout"), {}, token=token))
            assert r.status_code == 204, r.text
            for ws in (c1, c2):
                code, frames = await expect_close(ws, timeout=3)
                assert code == 1008, (code, frames)

            # The same user's connection with another token is untouched.
            posted = rest_post(server, other_token, sid, "still here")
            assert await expect(c3, "message") == {"type": "message", "message": posted}

        async with ws_connect(server, token) as again:
            await expect_error(again, "token_revoked")
            code, _ = await expect_close(again)
            assert code == 1008

    run(scenario())


def test_connection_ends_when_its_token_expires(start_server):
    """A connection lasts as long as its access token: then token_expired and close 1008."""
    server = start_server(env={"JWT_ACCESS_TTL": "2s"})
    user = register(server)
    token = user["accessToken"]
    sid = create_session(server, token)["sessionId"]

    async def scenario():
        async with ws_connect(server, token) as ws:
            await join(ws, sid)
            await expect_error(ws, "token_expired", timeout=5)
            code, _ = await expect_close(ws, timeout=3)
            assert code == 1008

    run(scenario())


# ---- 11. shutdown -----------------------------------------------------------------------------------------


def test_graceful_shutdown_closes_with_1001(start_server):
    server = start_server()
    user = register(server)
    sid = create_session(server, user["accessToken"])["sessionId"]

    async def scenario():
        async with ws_connect(server, user["accessToken"]) as ws:
            await join(ws, sid)
            server.proc.send_signal(signal.SIGTERM)
            code, frames = await expect_close(ws, timeout=10)
            assert code == 1001, (code, frames)

    run(scenario())
    code = server.terminate()  # already exiting: waits for it
    assert code == 0, f"exit code {code} after SIGTERM:\n{server.logs()}"
