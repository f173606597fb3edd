"""Socket.IO clients (python-socketio, as socket.io-client frontends) against /socket.io/."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests
import socketio

from conftest import create_session, register
from test_websocket import add_admin, login, rest_post

TRANSPORTS = [["polling", "websocket"], ["websocket"]]


def connect(server, auth, transports, **handlers) -> socketio.Client:
    client = socketio.Client(reconnection=False)
    for event, handler in handlers.items():
        client.on(event, handler)
    client.connect(server.base_url, auth=auth, transports=transports, wait_timeout=5)
    return client


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.mark.parametrize("transports", TRANSPORTS, ids=["polling-upgrade", "websocket"])
def test_join_send_ack_and_receive(server, transports):
    user = register(server)
    token = user["accessToken"]
    sid = create_session(server, token)["sessionId"]
    admin_name, admin_password = add_admin(server)
    admin_token = login(server, admin_name, admin_password)["accessToken"]

    received_b, typing_seen, presence_seen = [], [], []
    a = connect(server, {"token": token}, transports)
    b = connect(server, {"token": token}, transports, message=received_b.append)
    admin = connect(server, {"token": admin_token}, transports, typing=typing_seen.append, presence=presence_seen.append)
    try:
        if transports[0] == "polling":
            assert wait_for(lambda: a.transport() == "websocket"), "the client did not upgrade to websocket"
        assert admin.call("join", {"sessionId": sid}, timeout=5)["event"] == "join"
        assert b.call("join", {"sessionId": sid}, timeout=5)["replayed"] == 0
        assert a.call("join", {"sessionId": sid}, timeout=5)["event"] == "join"
        assert wait_for(lambda: any(p["status"] == "online" for p in presence_seen)), presence_seen

        ack = a.call("message", {"sessionId": sid, "content": "hello from socket.io", "clientMessageId": "sio-1"}, timeout=5)
        assert ack["duplicate"] is False and ack["message"]["content"] == "hello from socket.io"
        assert wait_for(lambda: [m["id"] for m in received_b] == [ack["message"]["id"]]), received_b
        retry = a.call("message", {"sessionId": sid, "content": "hello from socket.io", "clientMessageId": "sio-1"}, timeout=5)
        assert retry["duplicate"] is True and retry["message"]["id"] == ack["message"]["id"]

        posted = rest_post(server, token, sid, "from REST")
        assert wait_for(lambda: [m["id"] for m in received_b] == [ack["message"]["id"], posted["id"]]), received_b

        a.emit("typing", {"sessionId": sid, "isTyping": True})
        assert wait_for(lambda: typing_seen and typing_seen[0]["userId"] == user["user"]["id"]), typing_seen

        error = a.call("message", {"sessionId": sid, "content": ""}, timeout=5)
        assert error["error"]["code"] == "validation_failed" and error["error"]["details"]["field"] == "content"
    finally:
        for c in (a, b, admin):
            c.disconnect()


def test_reconnect_with_last_message_id_recovers_missed_messages(server):
    user = register(server)
    token = user["accessToken"]
    sid = create_session(server, token)["sessionId"]
    first = rest_post(server, token, sid, "seen")
    missed = [rest_post(server, token, sid, f"missed {i}")["id"] for i in range(5)]
    got = []
    client = connect(server, {"token": token, "sessionId": sid, "lastMessageId": first["id"]}, ["websocket"],
                     message=lambda m: got.append(m["id"]))
    try:
        assert wait_for(lambda: got == missed), got
        live = rest_post(server, token, sid, "live")
        assert wait_for(lambda: got == missed + [live["id"]]), got
    finally:
        client.disconnect()


def test_refused_connections(server):
    with pytest.raises(socketio.exceptions.ConnectionError):
        connect(server, {"token": "not-a-token"}, ["websocket"])
    with pytest.raises(socketio.exceptions.ConnectionError):
        client = socketio.Client(reconnection=False)
        client.connect(server.base_url, namespaces=["/admin"], auth={"token": register(server)["accessToken"]},
                       transports=["websocket"], wait_timeout=5)


def test_rejoining_a_session_one_may_not_read_is_a_connect_error(server):
    """Refused before the CONNECT is answered: the client sees one CONNECT_ERROR, not a CONNECT and then an error."""
    owner, other = register(server)["accessToken"], register(server)["accessToken"]
    sid = create_session(server, owner)["sessionId"]
    for auth, code in (({"token": other, "sessionId": sid}, "not_found"), ({"token": other, "sessionId": "nope"}, "validation_failed"),
                       ({"sessionId": sid}, "unauthenticated")):
        errors, connects = [], []
        with pytest.raises(socketio.exceptions.ConnectionError):
            connect(server, auth, ["websocket"], connect_error=errors.append, connect=lambda: connects.append(1))
        assert connects == [] and errors and errors[0]["data"]["code"] == code, (auth, errors)
    client = connect(server, {"token": owner, "sessionId": sid}, ["websocket"])
    assert client.connected
    client.disconnect()


def test_engine_io_error_answers(server):
    base = server.url("/socket.io/")
    cases = [
        ({"EIO": "4", "transport": "polling", "sid": "nope"}, 1, "Session ID unknown"),
        ({"EIO": "4", "transport": "carrier-pigeon"}, 0, "Transport unknown"),
        ({"EIO": "3", "transport": "polling"}, 5, "Unsupported protocol version"),
    ]
    for params, code, message in cases:
        r = requests.get(base, params=params, timeout=5)
        assert r.status_code == 400 and r.json() == {"code": code, "message": message}, r.text
    r = requests.put(base, params={"EIO": "4", "transport": "polling"}, timeout=5)
    assert r.status_code == 400 and r.json()["code"] == 2

    # A malformed packet ends the session; the server keeps serving.
    handshake = requests.get(base, params={"EIO": "4", "transport": "polling"}, timeout=5).text
    assert handshake.startswith("0{")
    sid = json.loads(handshake[1:])["sid"]
    r = requests.post(base, params={"EIO": "4", "transport": "polling", "sid": sid}, data="4x-garbage", timeout=5)
    assert r.status_code == 200
    r = requests.get(base, params={"EIO": "4", "transport": "polling", "sid": sid}, timeout=5)
    assert r.status_code == 400 and r.json()["code"] == 1
    assert requests.get(server.url("/health"), timeout=5).status_code == 200


def test_unauthenticated_connection_is_closed_after_the_timeout(start_server):
    server = start_server(env={"REALTIME_AUTH_TIMEOUT": "1s"})
    disconnected = threading.Event()
    client = socketio.Client(reconnection=False)
    client.on("disconnect", lambda *args: disconnected.set())
    client.connect(server.base_url, transports=["websocket"], wait_timeout=5)
    try:
        assert disconnected.wait(5), "an unauthenticated connection must be closed"
    finally:
        client.disconnect()


@pytest.mark.parametrize("transports", TRANSPORTS, ids=["polling-upgrade", "websocket"])
def test_events_without_an_ack_never_fill_the_outbound_queue(start_server, transports):
    """Events emitted without an acknowledgement get no reply; they must not count against the connection's
    outbound queue (REALTIME_QUEUE_LENGTH), or a client that only emits would be dropped as too slow."""
    server = start_server(env={"REALTIME_QUEUE_LENGTH": "8"})
    user = register(server)
    token = user["accessToken"]
    sid = create_session(server, token)["sessionId"]
    client = connect(server, {"token": token}, transports)
    try:
        assert client.call("join", {"sessionId": sid}, timeout=5)["event"] == "join"
        for i in range(40):
            client.emit("message", {"sessionId": sid, "content": f"fire and forget {i}"})
            client.emit("typing", {"sessionId": sid, "isTyping": True})
        ack = client.call("message", {"sessionId": sid, "content": "still here"}, timeout=5)
        assert ack["message"]["content"] == "still here", ack
        assert client.connected
    finally:
        client.disconnect()


def test_a_polling_client_gets_a_long_replay_in_payloads_it_accepts(server):
    """python-engineio's client refuses a polling payload of more than 16 packets (and drops the session): a
    replay of 60 missed messages over long-polling reaches it whole, in order, without a disconnect."""
    user = register(server)
    token = user["accessToken"]
    sid = create_session(server, token)["sessionId"]
    first = rest_post(server, token, sid, "before")
    sent = [rest_post(server, token, sid, f"missed {i}")["id"] for i in range(60)]
    received: list[str] = []
    client = connect(server, {"token": token}, ["polling"], message=lambda m: received.append(m["id"]))
    try:
        ack = client.call("join", {"sessionId": sid, "lastMessageId": first["id"]}, timeout=10)
        assert ack["replayed"] == 60, ack
        assert wait_for(lambda: len(received) == 60, timeout=10), len(received)
        assert received == sent
        assert client.connected and client.call("message", {"sessionId": sid, "content": "still here"}, timeout=5)
    finally:
        client.disconnect()
