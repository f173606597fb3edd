"""Realtime rooms follow who may read a session: when a handoff is claimed or released, or a session is deleted,
every connection that may no longer read it leaves the room at once, is told (`left`), and gets nothing more of
it, over /ws and over Socket.IO alike."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests
import socketio
from websockets.sync.client import connect as ws_connect

from conftest import Server, assert_json_error, auth_get, post_json, register
from test_agents import add_user, new_session, send, session, wait_for

AGENTS_YAML = """\
default_agent: front
agents:
  - name: front
    kind: rules
    intents:
      - keywords: [human]
        reply: Let me find a person for you.
        handoff: human
    fallback: I can only find you a human.
"""

QUIET = 0.7


class WSConn:
    """A /ws connection that collects every event."""

    def __init__(self, server: Server, token: str):
        self._context = ws_connect(f"ws://127.0.0.1:{server.port}/ws", additional_headers={"Authorization": f"Bearer {token}"},
                                   open_timeout=5, proxy=None)
        self.ws = self._context.__enter__()
        self.events: list[dict] = []
        self.acks: dict[str, dict] = {}
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            while True:
                event = json.loads(self.ws.recv())
                if event["type"] in ("ack", "error") and event.get("id") is not None:
                    self.acks[str(event["id"])] = event
                else:
                    self.events.append(event)
        except Exception:
            pass

    def join(self, sid: str) -> dict:
        request_id = f"join-{time.monotonic_ns()}"
        self.ws.send(json.dumps({"type": "join", "sessionId": sid, "id": request_id}))
        return wait_for(lambda: self.acks.get(request_id), what="the join answer")

    def typing(self, sid: str):
        self.ws.send(json.dumps({"type": "typing", "sessionId": sid, "isTyping": True}))

    def of(self, type_: str) -> list[dict]:
        return [e for e in list(self.events) if e["type"] == type_]

    def close(self):
        self._context.__exit__(None, None, None)


class SIOConn:
    """A Socket.IO connection (python-socketio) that collects the same events."""

    def __init__(self, server: Server, token: str):
        self.events: list[dict] = []
        self.client = socketio.Client(reconnection=False)
        for name in ("message", "typing", "presence", "left"):
            self.client.on(name, self._collector(name))
        self.client.connect(server.base_url, auth={"token": token}, transports=["websocket"], wait_timeout=5)

    def _collector(self, name):
        def collect(data):
            self.events.append({"type": name, **(data if name != "message" else {"message": data})})
        return collect

    def join(self, sid: str) -> dict:
        answer = self.client.call("join", {"sessionId": sid}, timeout=5)
        return {"type": "error", **answer} if "error" in answer else {"type": "ack", **answer}

    def typing(self, sid: str):
        self.client.emit("typing", {"sessionId": sid, "isTyping": True})

    def of(self, type_: str) -> list[dict]:
        return [e for e in list(self.events) if e["type"] == type_]

    def close(self):
        self.client.disconnect()


def connect(kind: str, server: Server, token: str):
    return WSConn(server, token) if kind == "ws" else SIOConn(server, token)


@pytest.fixture(scope="module")
def handoff_world(bin_path, tmp_path_factory):
    directory = tmp_path_factory.mktemp("rooms")
    agents_file = directory / "agents.yaml"
    agents_file.write_text(AGENTS_YAML)
    server = Server(bin_path, directory / "server", env={"AGENTS_FILE": str(agents_file)})
    server.start()
    try:
        yield server
    finally:
        server.stop()


def waiting_handoff(server: Server) -> tuple[dict, str]:
    owner = register(server)
    sid = new_session(server, owner["accessToken"], "front")
    send(server, owner["accessToken"], sid, "a human please")
    wait_for(lambda: (session(server, owner["accessToken"], sid)["handoff"] or {}).get("status") == "waiting", what="the handoff")
    return owner, sid


def messages_of(conn, sid: str) -> list[str]:
    return [e["message"]["content"] for e in conn.of("message") if e["message"]["sessionId"] == sid]


@pytest.mark.parametrize("watcher_kind,claimer_kind", [("ws", "sio"), ("sio", "ws")])
def test_claim_and_release_take_the_session_away_from_those_who_may_no_longer_read_it(handoff_world, watcher_kind, claimer_kind):
    server = handoff_world
    owner, sid = waiting_handoff(server)
    token = owner["accessToken"]
    watcher_user, claimer_user = add_user(server, "agent"), add_user(server, "agent")
    watcher = connect(watcher_kind, server, watcher_user["accessToken"])
    claimer = connect(claimer_kind, server, claimer_user["accessToken"])
    owner_conn = connect("ws", server, token)
    try:
        # Both staff may watch a waiting handoff.
        assert watcher.join(sid)["type"] == "ack"
        assert claimer.join(sid)["type"] == "ack"
        assert owner_conn.join(sid)["type"] == "ack"
        send(server, token, sid, "still waiting")
        wait_for(lambda: "still waiting" in messages_of(watcher, sid), what="the watcher to see the waiting session")

        # The claim takes it from the other staff member at once, with a `left` event.
        r = post_json(server.url(f"/api/handoffs/{sid}/claim"), {}, token=claimer_user["accessToken"])
        assert r.status_code == 200, r.text
        left = wait_for(lambda: watcher.of("left"), what="a left event for the watcher")
        assert left == [{"type": "left", "sessionId": sid, "reason": "claimed"}], left
        assert claimer.of("left") == [] and owner_conn.of("left") == []
        assert auth_get(server.url(f"/api/sessions/{sid}"), watcher_user["accessToken"]).status_code == 404

        # From then on nothing of the session reaches the watcher: the owner's messages, the assignee's
        # replies, system notes, typing.
        seen_before = len(watcher.events)
        send(server, token, sid, "only for the assignee")
        r = post_json(server.url(f"/api/sessions/{sid}/messages"), {"content": "assignee here"}, token=claimer_user["accessToken"])
        assert r.status_code == 201, r.text
        owner_conn.typing(sid)
        wait_for(lambda: "only for the assignee" in messages_of(claimer, sid), what="the assignee to get the owner's message")
        wait_for(lambda: "assignee here" in messages_of(owner_conn, sid), what="the owner to get the reply")
        time.sleep(QUIET)
        assert watcher.events[seen_before:] == [], watcher.events[seen_before:]
        # Joining again is refused like a REST read.
        answer = watcher.join(sid)
        assert answer["type"] == "error" and answer["error"]["code"] == "not_found", answer

        # Release: the assignee may no longer read it either (handed back to the bot).
        r = post_json(server.url(f"/api/handoffs/{sid}/release"), {}, token=claimer_user["accessToken"])
        assert r.status_code == 200, r.text
        left = wait_for(lambda: claimer.of("left"), what="a left event for the released assignee")
        assert left == [{"type": "left", "sessionId": sid, "reason": "released"}], left
        seen_before = len(claimer.events)
        send(server, token, sid, "after the release")
        wait_for(lambda: "after the release" in messages_of(owner_conn, sid), what="the owner to get their message")
        time.sleep(QUIET)
        assert [e for e in claimer.events[seen_before:] if e.get("sessionId", e.get("message", {}).get("sessionId")) == sid] == []
        assert auth_get(server.url(f"/api/sessions/{sid}"), claimer_user["accessToken"]).status_code == 404
    finally:
        for conn in (watcher, claimer, owner_conn):
            conn.close()


@pytest.mark.parametrize("kind", ["ws", "sio"])
def test_deleting_a_session_ends_every_connection_in_its_room(handoff_world, kind):
    server = handoff_world
    owner = register(server)
    token = owner["accessToken"]
    sid = new_session(server, token)
    admin = add_user(server, "admin")
    mine, admins = connect(kind, server, token), connect(kind, server, admin["accessToken"])
    try:
        assert mine.join(sid)["type"] == "ack" and admins.join(sid)["type"] == "ack"
        r = requests.delete(server.url(f"/api/sessions/{sid}"), headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 204, r.text
        for conn in (mine, admins):
            left = wait_for(lambda: conn.of("left"), what="a left event after the delete")
            assert left == [{"type": "left", "sessionId": sid, "reason": "deleted"}], left
        answer = mine.join(sid)
        assert answer["type"] == "error" and answer["error"]["code"] == "not_found", answer
    finally:
        mine.close()
        admins.close()


def test_left_rooms_on_another_instance_follow_a_claim(start_server, tmp_path, pg_url):
    """Two instances on one Postgres: a staff member watching a waiting handoff on A loses it when someone
    claims it on B."""
    agents_file = tmp_path / "agents.yaml"
    agents_file.write_text(AGENTS_YAML)
    env = {"AGENTS_FILE": str(agents_file)}
    a = start_server(env=env, database_url=pg_url, name="a")
    b = start_server(env=env, database_url=pg_url, name="b")
    owner, sid = waiting_handoff(a)
    watcher_user, claimer_user = add_user(a, "agent"), add_user(a, "agent")
    watcher = connect("ws", a, watcher_user["accessToken"])
    try:
        assert watcher.join(sid)["type"] == "ack"
        r = post_json(b.url(f"/api/handoffs/{sid}/claim"), {}, token=claimer_user["accessToken"])
        assert r.status_code == 200, r.text
        left = wait_for(lambda: watcher.of("left"), what="a left event relayed from the other instance")
        assert left == [{"type": "left", "sessionId": sid, "reason": "claimed"}], left
        seen_before = len(watcher.events)
        send(b, owner["accessToken"], sid, "not for the watcher")
        time.sleep(QUIET)
        assert watcher.events[seen_before:] == [], watcher.events[seen_before:]
    finally:
        watcher.close()


def test_a_session_resolved_while_waiting_leaves_the_staff_who_watched_it(handoff_world):
    server = handoff_world
    owner, sid = waiting_handoff(server)
    staff = add_user(server, "agent")
    watcher = WSConn(server, staff["accessToken"])
    try:
        assert watcher.join(sid)["type"] == "ack"
        r = requests.post(server.url(f"/api/sessions/{sid}/resolve"), headers={"Authorization": f"Bearer {owner['accessToken']}"}, timeout=10)
        assert r.status_code == 200, r.text
        left = wait_for(lambda: watcher.of("left"), what="a left event after the resolve")
        assert left == [{"type": "left", "sessionId": sid, "reason": "resolved"}], left
        h = {"Authorization": f"Bearer {staff['accessToken']}"}
        assert requests.get(server.url(f"/api/sessions/{sid}"), headers=h, timeout=10).status_code == 404
        claim = requests.post(server.url(f"/api/handoffs/{sid}/claim"), headers=h, timeout=10)
        assert_json_error(claim, 409, "handoff_unavailable")
        assert watcher.join(sid)["type"] == "error"
    finally:
        watcher.close()


def test_deleting_an_account_tells_the_rooms_and_the_queue(handoff_world):
    """As deleting each session would: `left` for the account's sessions, and its claimed ones back in the queue."""
    server = handoff_world
    owner, waiting = waiting_handoff(server)
    other_owner, claimed = waiting_handoff(server)
    staff, admin = add_user(server, "agent"), add_user(server, "admin")
    h = {"Authorization": f"Bearer {admin['accessToken']}"}
    assert requests.post(server.url(f"/api/handoffs/{claimed}/claim"), headers={"Authorization": f"Bearer {staff['accessToken']}"},
                         timeout=10).status_code == 200
    watcher, owner_conn = WSConn(server, admin["accessToken"]), WSConn(server, other_owner["accessToken"])
    try:
        assert watcher.join(waiting)["type"] == "ack" and owner_conn.join(claimed)["type"] == "ack"
        assert requests.delete(server.url(f"/api/admin/users/{owner['user']['id']}"), headers=h, timeout=10).status_code == 204
        left = wait_for(lambda: watcher.of("left"), what="left for the deleted account's session")
        assert left == [{"type": "left", "sessionId": waiting, "reason": "deleted"}], left
        wait_for(lambda: any(e["sessionId"] == waiting and e["reason"] == "deleted" for e in watcher.of("handoff")), what="handoff deleted")

        assert requests.delete(server.url(f"/api/admin/users/{staff['user']['id']}"), headers=h, timeout=10).status_code == 204
        back = wait_for(lambda: [e for e in watcher.of("handoff") if e["sessionId"] == claimed], what="the claimed session back in the queue")
        assert back[-1]["reason"] == "released", back
        updated = wait_for(lambda: [e for e in owner_conn.of("session.updated") if e["session"]["sessionId"] == claimed],
                           what="the owner told of the change")
        assert updated[-1]["session"]["handoff"]["status"] == "waiting", updated
    finally:
        watcher.close()
        owner_conn.close()
