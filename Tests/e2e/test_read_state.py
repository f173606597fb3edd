"""Read state and the staff queue, live: `POST /api/sessions/{id}/read` moves a reader's marker (never backwards),
lists carry `unread` (messages of others after the marker), the session's connections get a `read` event, and every
connection of an agent or admin gets a `handoff` event when a session joins or leaves the queue of handoffs."""

from __future__ import annotations

import requests
import socketio

from conftest import Server, assert_json_error, auth_get, post_json, register
from test_agents import add_user, history, new_session, send, wait_for
from test_room_access import WSConn, handoff_world, waiting_handoff  # noqa: F401 (fixture)


def listed(server: Server, token: str, user_id: str, sid: str) -> dict:
    r = auth_get(server.url(f"/api/users/{user_id}/sessions"), token)
    assert r.status_code == 200, r.text
    return next(s for s in r.json()["sessions"] if s["sessionId"] == sid)


def queued(server: Server, token: str, sid: str) -> dict:
    r = auth_get(server.url("/api/handoffs"), token)
    assert r.status_code == 200, r.text
    return next(s for s in r.json()["sessions"] if s["sessionId"] == sid)


def others(messages: list[dict], user_id: str) -> list[dict]:
    return [m for m in messages if m["userId"] != user_id]


def mark(server: Server, token: str, sid: str, message_id: str) -> requests.Response:
    return post_json(server.url(f"/api/sessions/{sid}/read"), {"lastMessageId": message_id}, token=token)


class SIOEvents:
    """A Socket.IO client that records `read` and `handoff` events."""

    def __init__(self, server: Server, token: str):
        self.events: list[tuple[str, dict]] = []
        self.client = socketio.Client(reconnection=False)
        for name in ("read", "handoff"):
            self.client.on(name, lambda data, name=name: self.events.append((name, data)))
        self.client.connect(server.base_url, auth={"token": token}, transports=["websocket"], wait_timeout=5)

    def of(self, name: str) -> list[dict]:
        return [data for n, data in list(self.events) if n == name]

    def close(self):
        self.client.disconnect()


def test_unread_counts_follow_the_read_marker_and_every_connection_hears_of_it(handoff_world):
    server = handoff_world
    owner, sid = waiting_handoff(server)
    token, owner_id = owner["accessToken"], owner["user"]["id"]
    staff = add_user(server, "agent")
    staff_token, staff_id = staff["accessToken"], staff["user"]["id"]
    assert post_json(server.url(f"/api/handoffs/{sid}/claim"), {}, token=staff_token).status_code == 200
    send(server, staff_token, sid, "hello, a person here")
    messages = wait_for(lambda: [m for m in history(server, token, sid) if m["content"] == "hello, a person here"] and history(server, token, sid),
                        what="the staff reply")

    # Nothing read yet: each side counts what the others wrote (bot replies and notes included).
    assert listed(server, token, owner_id, sid)["unread"] == len(others(messages, owner_id)) > 0
    assert queued(server, staff_token, sid)["unread"] == len(others(messages, staff_id)) > 0
    # Staff see whose session it is.
    assert queued(server, staff_token, sid)["owner"] == {"id": owner_id, "username": owner["user"]["username"], "role": "user"}
    assert "owner" not in listed(server, token, owner_id, sid)

    owner_ws, staff_ws = WSConn(server, token), WSConn(server, staff_token)
    owner_sio = SIOEvents(server, token)
    try:
        assert owner_ws.join(sid)["type"] == "ack" and staff_ws.join(sid)["type"] == "ack"
        assert owner_sio.client.call("join", {"sessionId": sid}, timeout=5).get("sessionId") == sid
        newest = messages[-1]
        r = mark(server, token, sid, newest["id"])
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["sessionId"] == sid and body["userId"] == owner_id and body["lastMessageId"] == newest["id"]
        assert body["unread"] == 0
        expected = {"type": "read", "sessionId": sid, "userId": owner_id, "lastMessageId": newest["id"], "readAt": body["readAt"]}
        for conn in (owner_ws, staff_ws):
            assert wait_for(lambda: conn.of("read"), what="a read event") == [expected]
        assert wait_for(lambda: owner_sio.of("read"), what="a read event over Socket.IO") == [{k: v for k, v in expected.items() if k != "type"}]
        assert listed(server, token, owner_id, sid)["unread"] == 0
        # The staff member's own count did not move.
        assert queued(server, staff_token, sid)["unread"] == len(others(messages, staff_id))

        # An older message leaves the marker where it is; a newer message of the other side counts again.
        r = mark(server, token, sid, messages[0]["id"])
        assert r.status_code == 200 and r.json()["lastMessageId"] == newest["id"], r.text
        send(server, staff_token, sid, "anything else?")
        assert listed(server, token, owner_id, sid)["unread"] == 1
        send(server, token, sid, "no, thanks")  # the reader's own messages never count
        assert listed(server, token, owner_id, sid)["unread"] == 1
    finally:
        owner_ws.close()
        staff_ws.close()
        owner_sio.close()


def test_bad_read_requests_are_refused_and_change_nothing(handoff_world):
    server = handoff_world
    owner = register(server)
    token, owner_id = owner["accessToken"], owner["user"]["id"]
    sid = new_session(server, token)
    first = send(server, token, sid, "one")
    other_owner = register(server)
    other_sid = new_session(server, other_owner["accessToken"])
    foreign = send(server, other_owner["accessToken"], other_sid, "not yours")

    assert_json_error(mark(server, token, sid, "not-a-uuid"), 400, "validation_failed")
    assert_json_error(post_json(server.url(f"/api/sessions/{sid}/read"), {}, token=token), 400, "validation_failed")
    assert_json_error(post_json(server.url(f"/api/sessions/{sid}/read"), {"lastMessageId": first["id"], "x": 1}, token=token), 400, "validation_failed")
    assert_json_error(post_json(server.url(f"/api/sessions/{sid}/read"), {"lastMessageId": 5}, token=token), 400, "validation_failed")
    # A message of another session is a bad reference; someone else's session, or none: 404, as for any read.
    assert_json_error(mark(server, token, sid, foreign["id"]), 400, "validation_failed")
    assert_json_error(mark(server, token, other_sid, foreign["id"]), 404, "not_found")
    assert_json_error(mark(server, token, "00000000-0000-4000-8000-000000000000", first["id"]), 404, "not_found")
    assert_json_error(mark(server, None, sid, first["id"]), 401)
    # No marker moved: every message of others (the agent's replies) is still unread on both sides.
    for who, session_id in ((other_owner, other_sid), (owner, sid)):
        replies = wait_for(lambda: others(history(server, who["accessToken"], session_id), who["user"]["id"]), what="the agent's reply")
        unread = len(replies)
        assert listed(server, who["accessToken"], who["user"]["id"], session_id)["unread"] == unread


def test_staff_connections_hear_of_every_change_to_the_handoff_queue(handoff_world):
    server = handoff_world
    agent, admin = add_user(server, "agent"), add_user(server, "admin")
    bystander = register(server)
    agent_ws, admin_sio, user_ws = WSConn(server, agent["accessToken"]), SIOEvents(server, admin["accessToken"]), WSConn(server, bystander["accessToken"])
    try:
        owner, sid = waiting_handoff(server)
        waiting = wait_for(lambda: [e for e in agent_ws.of("handoff") if e["sessionId"] == sid], what="the handoff event")
        assert waiting[0]["reason"] == "handoff" and waiting[0]["session"]["handoff"]["status"] == "waiting", waiting
        assert waiting[0]["session"]["userId"] == owner["user"]["id"]
        wait_for(lambda: [e for e in admin_sio.of("handoff") if e["sessionId"] == sid and e["reason"] == "handoff"], what="the admin's event")

        assert post_json(server.url(f"/api/handoffs/{sid}/claim"), {}, token=agent["accessToken"]).status_code == 200
        claimed = wait_for(lambda: [e for e in admin_sio.of("handoff") if e["sessionId"] == sid and e["reason"] == "claimed"], what="the claim")
        assert claimed[0]["session"]["handoff"] == {**claimed[0]["session"]["handoff"], "status": "assigned", "assigneeId": agent["user"]["id"]}

        assert post_json(server.url(f"/api/sessions/{sid}/resolve"), {}, token=owner["accessToken"]).status_code == 200
        resolved = wait_for(lambda: [e for e in agent_ws.of("handoff") if e["sessionId"] == sid and e["reason"] == "resolved"], what="the resolve")
        assert resolved[0]["session"]["isResolved"] is True
        assert [e["reason"] for e in agent_ws.of("handoff") if e["sessionId"] == sid] == ["handoff", "claimed", "resolved"]
        # A user without a staff role hears nothing of the queue.
        assert user_ws.of("handoff") == []
    finally:
        agent_ws.close()
        admin_sio.close()
        user_ws.close()
