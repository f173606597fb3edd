"""Editing and deleting messages: who may (the author within MESSAGE_EDIT_WINDOW, admins always), the tombstone a
delete leaves in history, `message.updated` / `message.deleted` over /ws and Socket.IO, recovery that replays changes
made while a client was away, agents answering the current text, bad input refused with nothing changed, and the same
on Postgres with a second instance relaying the events."""

from __future__ import annotations

import json
import time

import pytest
import requests
import socketio
from websockets.sync.client import connect as ws_connect

from conftest import Server, assert_json_error, auth_get, create_session, post_json, register
from fakes import WebhookServer
from test_agents import WSListener, add_user, wait_for

HOOK_SECRET = "hook-secret-0123456789"


def call(server: Server, method: str, sid: str, mid: str, token: str, body=None) -> requests.Response:
    return requests.request(method, server.url(f"/api/sessions/{sid}/messages/{mid}"), json=body,
                            headers={"Authorization": f"Bearer {token}"}, timeout=10)


def send(server: Server, token: str, sid: str, content: str) -> dict:
    r = post_json(server.url(f"/api/sessions/{sid}/messages"), {"content": content, "metadata": {"k": "v"}}, token=token)
    assert r.status_code == 201, r.text
    return r.json()


def history(server: Server, token: str, sid: str) -> list[dict]:
    r = auth_get(server.url(f"/api/sessions/{sid}/messages?limit=200"), token)
    assert r.status_code == 200, r.text
    return r.json()["messages"]


@pytest.fixture
def window_server(start_server):
    return start_server(env={"MESSAGE_EDIT_WINDOW": "3s"})


def test_author_edits_and_deletes_and_history_keeps_a_tombstone(window_server):
    server = window_server
    owner = register(server)
    token = owner["accessToken"]
    sid = create_session(server, token)["sessionId"]
    first, second = send(server, token, sid, "helo wrld"), send(server, token, sid, "secret")
    assert first["editedAt"] is None and first["deletedAt"] is None

    r = call(server, "PATCH", sid, first["id"], token, {"content": "hello world"})
    assert r.status_code == 200, r.text
    edited = r.json()
    assert edited["content"] == "hello world" and edited["editedAt"] and edited["updatedAt"] == edited["editedAt"]
    assert (edited["id"], edited["createdAt"], edited["metadata"]) == (first["id"], first["createdAt"], {"k": "v"})
    assert auth_get(server.url(f"/api/sessions/{sid}/messages/{first['id']}"), token).json() == edited

    r = call(server, "DELETE", sid, second["id"], token)
    assert r.status_code == 200, r.text
    tombstone = r.json()
    assert (tombstone["content"], tombstone["metadata"], tombstone["id"]) == ("", {}, second["id"])
    assert tombstone["deletedAt"] and tombstone["createdAt"] == second["createdAt"]
    assert [m["id"] for m in history(server, token, sid)] == [first["id"], second["id"]]
    assert history(server, token, sid)[1] == tombstone
    # Deleting again answers the same tombstone; a deleted message cannot be edited.
    assert call(server, "DELETE", sid, second["id"], token).json() == tombstone
    assert_json_error(call(server, "PATCH", sid, second["id"], token, {"content": "back"}), 410, "message_deleted")
    assert_json_error(auth_get(server.url(f"/api/sessions/{sid}/messages/{second['id']}"), token), 410, "message_deleted")
    assert history(server, token, sid)[1] == tombstone

    # After the window the author may no longer edit (but may still delete); an admin may edit. A deleted
    # message stays 410 for its author after the window too.
    time.sleep(3.2)
    assert_json_error(call(server, "PATCH", sid, first["id"], token, {"content": "too late"}), 403, "edit_window_closed")
    assert_json_error(call(server, "PATCH", sid, second["id"], token, {"content": "back"}), 410, "message_deleted")
    admin = add_user(server, "admin")
    r = call(server, "PATCH", sid, first["id"], admin["accessToken"], {"content": "moderated"})
    assert r.status_code == 200 and r.json()["content"] == "moderated"
    r = call(server, "DELETE", sid, first["id"], token)
    assert r.status_code == 200 and r.json()["deletedAt"]


def test_others_and_bad_input_change_nothing(server):
    owner = register(server)
    token = owner["accessToken"]
    sid = create_session(server, token)["sessionId"]
    message = send(server, token, sid, "mine")
    stranger = register(server)["accessToken"]
    # Someone who may not read the session does not learn it exists.
    assert_json_error(call(server, "PATCH", sid, message["id"], stranger, {"content": "x"}), 404, "not_found")
    assert_json_error(call(server, "DELETE", sid, message["id"], stranger), 404, "not_found")
    # The owner may not change what an admin wrote in their session.
    admin = add_user(server, "admin")["accessToken"]
    r = post_json(server.url(f"/api/sessions/{sid}/messages"), {"content": "note"}, token=admin)
    assert r.status_code == 201
    assert_json_error(call(server, "PATCH", sid, r.json()["id"], token, {"content": "x"}), 403, "not_author")
    assert_json_error(call(server, "DELETE", sid, r.json()["id"], token), 403, "not_author")
    for body, field in (({}, "content"), ({"content": ""}, "content"), ({"content": 5}, "content"),
                        ({"content": "a" * 10001}, "content"), ({"content": "ok", "type": "text"}, "type"),
                        ({"content": "a\u0000b"}, "content")):
        error = assert_json_error(call(server, "PATCH", sid, message["id"], token, body), 400, "validation_failed")
        assert error["details"]["field"] == field, (body, error)
    assert_json_error(call(server, "PATCH", sid, "not-a-uuid", token, {"content": "x"}), 400, "validation_failed")
    assert_json_error(call(server, "PATCH", sid, "0192a3b4-0000-7000-8000-000000000000", token, {"content": "x"}), 404, "not_found")
    assert_json_error(call(server, "DELETE", sid, "0192a3b4-0000-7000-8000-000000000000", token), 404, "not_found")
    r = requests.patch(server.url(f"/api/sessions/{sid}/messages/{message['id']}"), data="{", timeout=10,
                       headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert r.status_code == 400
    assert history(server, token, sid)[0] == message


def test_edits_and_deletes_reach_ws_and_socketio_and_recovery_replays_them(server):
    owner = register(server)
    token = owner["accessToken"]
    sid = create_session(server, token)["sessionId"]
    kept, gone = send(server, token, sid, "one"), send(server, token, sid, "two")
    ws = WSListener(server, token, sid)
    sio_events: list[tuple[str, dict]] = []
    sio = socketio.Client(reconnection=False)
    sio.on("message.updated", lambda data: sio_events.append(("message.updated", data)))
    sio.on("message.deleted", lambda data: sio_events.append(("message.deleted", data)))
    sio.connect(server.base_url, auth={"token": token}, transports=["websocket"], wait_timeout=5)
    try:
        assert sio.call("join", {"sessionId": sid}, timeout=5)["event"] == "join"
        edited = call(server, "PATCH", sid, kept["id"], token, {"content": "one, edited"}).json()
        tombstone = call(server, "DELETE", sid, gone["id"], token).json()
        call(server, "DELETE", sid, gone["id"], token)  # no second event
        wait_for(lambda: len(ws.of("message.updated")) == 1 and len(ws.of("message.deleted")) == 1, what="/ws events")
        assert ws.of("message.updated")[0]["message"] == edited
        assert ws.of("message.deleted")[0]["message"] == tombstone
        wait_for(lambda: len(sio_events) == 2, what="Socket.IO events")
        assert sio_events == [("message.updated", {"message": edited}), ("message.deleted", {"message": tombstone})]
        time.sleep(0.3)
        assert len(ws.of("message.deleted")) == 1
    finally:
        ws.close()
        sio.disconnect()

    # Away: the client last saw `two`. Meanwhile `one` is edited again and a new message is sent and deleted.
    edited_again = call(server, "PATCH", sid, kept["id"], token, {"content": "one, edited twice"}).json()
    late = send(server, token, sid, "three")
    late_tombstone = call(server, "DELETE", sid, late["id"], token).json()
    with ws_connect(f"ws://127.0.0.1:{server.port}/ws", additional_headers={"Authorization": f"Bearer {token}"}, proxy=None) as again:
        again.send(json.dumps({"type": "join", "sessionId": sid, "lastMessageId": gone["id"], "id": "r"}))
        events = []
        while True:
            event = json.loads(again.recv(timeout=5))
            events.append(event)
            if event["type"] == "ack":
                break
    # The message sent while away comes as it is now (a tombstone); the older ones changed since as events.
    assert [e["type"] for e in events] == ["message", "message.updated", "message.deleted", "ack"], events
    assert events[0]["message"] == late_tombstone
    assert events[1]["message"] == edited_again
    assert events[2]["message"] == tombstone
    assert events[3]["replayed"] == 1


def test_agents_answer_the_current_text_and_never_see_deleted_messages(start_server, tmp_path):
    hook = WebhookServer(HOOK_SECRET)
    try:
        agents = tmp_path / "agents.yaml"
        agents.write_text(f"""\
default_agent: hook
agents:
  - name: hook
    kind: webhook
    url: {hook.url}/hook
    secret_env: HOOK_SECRET
    timeout: 5s
    history: 10
""")
        server = start_server(env={"AGENTS_FILE": str(agents), "HOOK_SECRET": HOOK_SECRET})
        token = register(server)["accessToken"]
        sid = create_session(server, token)["sessionId"]
        typo = send(server, token, sid, "helo")
        wait_for(lambda: hook.calls_for("helo"), what="the first call")
        assert call(server, "PATCH", sid, typo["id"], token, {"content": "hello"}).status_code == 200
        oops = send(server, token, sid, "my password is hunter2")
        wait_for(lambda: hook.calls_for("my password is hunter2"), what="the second call")
        assert call(server, "DELETE", sid, oops["id"], token).status_code == 200
        send(server, token, sid, "next")
        payload = wait_for(lambda: hook.calls_for("next"), what="the third call")[0]["payload"]
        contents = [m["content"] for m in payload["recentMessages"]]
        assert "hello" in contents and "helo" not in contents
        # (The agent's own reply quoted it; that is the agent's message, not the deleted one.)
        assert "my password is hunter2" not in contents and oops["id"] not in [m["id"] for m in payload["recentMessages"]]
    finally:
        hook.close()


def test_on_postgres_a_second_instance_relays_the_events(start_server, pg_url):
    a = start_server(name="a", database_url=pg_url)
    b = start_server(name="b", database_url=pg_url)
    token = register(a)["accessToken"]
    sid = create_session(a, token)["sessionId"]
    message = send(a, token, sid, "on a")
    ws = WSListener(a, token, sid)
    try:
        edited = call(b, "PATCH", sid, message["id"], token, {"content": "edited on b"}).json()
        tombstone = call(b, "DELETE", sid, message["id"], token).json()
        wait_for(lambda: len(ws.of("message.deleted")) == 1, what="the relayed delete")
        assert ws.of("message.updated")[0]["message"] == edited
        assert ws.of("message.deleted")[0]["message"] == tombstone
        assert history(a, token, sid) == [tombstone]
        assert_json_error(auth_get(a.url(f"/api/sessions/{sid}/messages/{message['id']}"), token), 410, "message_deleted")
    finally:
        ws.close()
