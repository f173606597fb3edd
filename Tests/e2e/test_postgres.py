"""The same product on Postgres: configuration, outage and recovery, concurrent start-up, and moving data."""

from __future__ import annotations

import sqlite3
import threading
import time

import requests

from conftest import (MIGRATION_COUNT, PASSWORD, assert_json_error, auth_get, closed_code, create_session, pg_control, post_json, psql,
                      register, run_cli, base_env)
from test_agents import WSListener, wait_for


def test_check_config_reports_server_version_and_migrations(bin_path, tmp_path, pg_url):
    env = base_env(tmp_path, DATABASE_URL=pg_url)
    before = run_cli(bin_path, ["check-config"], tmp_path, env)
    assert before.returncode == 0, before.stderr
    assert "connected to PostgreSQL 15" in before.stdout, before.stdout
    assert f"0 applied, {MIGRATION_COUNT} pending" in before.stdout, before.stdout
    migrate = run_cli(bin_path, ["migrate"], tmp_path, env)
    assert migrate.returncode == 0, migrate.stderr
    assert migrate.stdout.count("applied 20") == MIGRATION_COUNT, migrate.stdout
    after = run_cli(bin_path, ["check-config"], tmp_path, env)
    assert f"{MIGRATION_COUNT} applied, 0 pending" in after.stdout, after.stdout

    bad = run_cli(bin_path, ["check-config"], tmp_path, base_env(tmp_path, DATABASE_URL="postgresql://nobody@127.0.0.1:1/none"))
    assert bad.returncode != 0
    assert "cannot connect to Postgres" in bad.stderr, bad.stderr


def test_rest_flow_on_postgres(start_server, pg_url):
    server = start_server(database_url=pg_url)
    health = requests.get(server.url("/api/health"), timeout=5).json()
    assert health["storage"]["backend"] == "postgres" and health["storage"]["status"] == "up"
    user = register(server)
    token = user["accessToken"]
    sid = create_session(server, token, {"plan": "pro"})["sessionId"]
    first = post_json(server.url(f"/api/sessions/{sid}/messages"), {"content": "héllo", "clientMessageId": "c-1", "metadata": {"n": 1.5}}, token=token)
    again = post_json(server.url(f"/api/sessions/{sid}/messages"), {"content": "héllo", "clientMessageId": "c-1"}, token=token)
    assert first.status_code == 201 and again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert first.json()["metadata"] == {"n": 1.5}
    history = auth_get(server.url(f"/api/sessions/{sid}/messages"), token).json()
    assert [m["content"] for m in history["messages"]] == ["héllo"]
    status = requests.get(server.url("/api/status"), timeout=5).json()
    assert status["storage"]["backend"] == "postgres" and status["statistics"]["messages"] == 1


def test_outage_answers_503_and_recovers_without_restart(start_server, pg_url):
    server = start_server(database_url=pg_url)
    user = register(server)
    token = user["accessToken"]
    sid = create_session(server, token)["sessionId"]
    pg_control("halt")
    try:
        assert requests.get(server.url("/health"), timeout=10).status_code == 200
        r = requests.get(server.url("/api/health"), timeout=15)
        assert r.status_code == 503 and r.json()["storage"]["status"] == "down"
        assert_json_error(post_json(server.url(f"/api/sessions/{sid}/messages"), {"content": "lost?"}, token=token, timeout=15),
                          503, "storage_unavailable")
        assert_json_error(post_json(server.url("/api/sessions"), {}, token=token, timeout=15), 503, "storage_unavailable")
        assert server.proc.poll() is None, "the server must survive the outage"
    finally:
        pg_control("resume")
    deadline = time.monotonic() + 30
    while True:
        r = requests.get(server.url("/api/health"), timeout=10)
        if r.status_code == 200:
            break
        assert time.monotonic() < deadline, f"not recovered: {r.status_code} {r.text}"
        time.sleep(0.5)
    r = post_json(server.url(f"/api/sessions/{sid}/messages"), {"content": "after the outage"}, token=token)
    assert r.status_code == 201, r.text
    history = auth_get(server.url(f"/api/sessions/{sid}/messages"), token).json()["messages"]
    assert [m["content"] for m in history] == ["after the outage"]


def test_the_first_requests_after_a_postgres_restart_succeed(start_server, pg_url):
    """A restart while nothing is asked: the connections the server keeps were closed by the old server, which
    said so before closing; neither the first send nor the first read may answer 503 for it."""
    server = start_server(database_url=pg_url)
    token = register(server)["accessToken"]
    sid = create_session(server, token)["sessionId"]
    assert post_json(server.url(f"/api/sessions/{sid}/messages"), {"content": "before"}, token=token).status_code == 201
    assert auth_get(server.url(f"/api/sessions/{sid}/messages"), token).status_code == 200
    pg_control("halt")
    pg_control("resume")
    r = post_json(server.url(f"/api/sessions/{sid}/messages"), {"content": "after the restart"}, token=token)
    assert r.status_code == 201, r.text
    r = auth_get(server.url(f"/api/sessions/{sid}/messages"), token)
    assert r.status_code == 200, r.text
    assert [m["content"] for m in r.json()["messages"]] == ["before", "after the restart"]


def test_a_postgres_that_stops_answering_fails_requests_in_time(start_server, pg_url):
    """A frozen database host (its processes stopped: connections stay open, nothing answers). Requests must end
    with 503 after DATABASE_TIMEOUT, not hang; afterwards the server works again without a restart, and a send
    retried with its clientMessageId is stored once whether or not the first attempt reached the database, and
    reaches the session's realtime connections either way (the first attempt, stored after its timeout, was
    never announced to them)."""
    server = start_server(database_url=pg_url, env={"DATABASE_TIMEOUT": "2s"})
    token = register(server)["accessToken"]
    sid = create_session(server, token)["sessionId"]
    url = server.url(f"/api/sessions/{sid}/messages")
    assert post_json(url, {"content": "before"}, token=token).status_code == 201
    live = WSListener(server, token, sid)
    pg_control("freeze")
    try:
        for attempt in (lambda: post_json(url, {"content": "during", "clientMessageId": "frozen-1"}, token=token, timeout=30),
                        lambda: auth_get(url, token),
                        lambda: requests.get(server.url("/api/health"), timeout=30)):
            started = time.monotonic()
            r = attempt()
            assert r.status_code == 503, r.text
            assert time.monotonic() - started < 10, f"answered after {time.monotonic() - started:.1f}s"
        assert requests.get(server.url("/health"), timeout=5).status_code == 200
    finally:
        pg_control("thaw")
    deadline = time.monotonic() + 30
    while requests.get(server.url("/api/health"), timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "not recovered after the database answered again"
        time.sleep(0.3)
    r = post_json(url, {"content": "during", "clientMessageId": "frozen-1"}, token=token)
    assert r.status_code in (200, 201), r.text
    wait_for(lambda: [m["content"] for m in live.messages()] == ["during"], what="the retried message over /ws")
    assert post_json(url, {"content": "after"}, token=token).status_code == 201
    history = auth_get(url, token).json()["messages"]
    assert [m["content"] for m in history] == ["before", "during", "after"]
    live.close()


def test_two_instances_starting_together_migrate_once(start_server, pg_url):
    servers = []
    threads = [threading.Thread(target=lambda n=n: servers.append(start_server(name=f"i{n}", database_url=pg_url))) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(servers) == 2
    assert psql(pg_url, "SELECT count(*) FROM schema_history") == str(MIGRATION_COUNT)
    # Both serve the same data.
    user = register(servers[0])
    r = post_json(servers[1].url("/auth/login"), {"username": user["user"]["username"], "password": PASSWORD})
    assert r.status_code == 200, r.text


def test_copy_sqlite_to_postgres_and_back(start_server, bin_path, tmp_path, pg_url):
    source = start_server(name="sqlite-source")
    alice = register(source)
    token = alice["accessToken"]
    sessions = []
    for n in range(3):
        sid = create_session(source, token, {"n": n})["sessionId"]
        sessions.append(sid)
        for i in range(5):
            assert post_json(source.url(f"/api/sessions/{sid}/messages"), {"content": f"s{n} m{i}", "clientMessageId": f"{n}-{i}"},
                             token=token).status_code == 201
    assert requests.post(source.url(f"/api/sessions/{sessions[2]}/resolve"), headers={"Authorization": f"Bearer {token}"},
                         timeout=5).status_code == 200
    before = {sid: auth_get(source.url(f"/api/sessions/{sid}/messages"), token).json()["messages"] for sid in sessions}
    source_db = source.db_path
    source.stop()

    env = base_env(tmp_path)
    r = run_cli(bin_path, ["copy", "--from", f"sqlite://{source_db}", "--to", pg_url], tmp_path, env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "done" in r.stdout and "15 messages" in r.stdout, r.stdout

    # A second copy into the now non-empty target is refused and changes nothing.
    again = run_cli(bin_path, ["copy", "--from", f"sqlite://{source_db}", "--to", pg_url], tmp_path, env, timeout=120)
    assert again.returncode != 0 and "refusing" in again.stderr, again.stdout + again.stderr
    assert psql(pg_url, "SELECT count(*) FROM chat_messages") == "15"

    moved = start_server(name="pg", database_url=pg_url)
    login = post_json(moved.url("/auth/login"), {"username": alice["user"]["username"], "password": PASSWORD})
    assert login.status_code == 200, login.text
    token2 = login.json()["accessToken"]
    for sid in sessions:
        assert auth_get(moved.url(f"/api/sessions/{sid}/messages"), token2).json()["messages"] == before[sid]
    assert auth_get(moved.url(f"/api/sessions/{sessions[2]}"), token2).json()["state"] == "resolved"
    # The old refresh token still works after the move (tokens were copied).
    assert post_json(moved.url("/auth/refresh"), {"refreshToken": alice["refreshToken"]}).status_code == 200
    moved.stop()

    back = tmp_path / "back" / "chat.db"
    r = run_cli(bin_path, ["copy", "--from", pg_url, "--to", f"sqlite://{back}"], tmp_path, env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    missing = run_cli(bin_path, ["copy", "--from", f"sqlite://{tmp_path}/no-such.db", "--to", f"sqlite://{tmp_path}/x.db"], tmp_path, env)
    assert missing.returncode == 78 and "does not exist" in missing.stderr, missing.stderr
    assert not (tmp_path / "no-such.db").exists()
    assert "NOTICE" not in r.stderr, r.stderr
    with sqlite3.connect(back) as conn:
        assert conn.execute("SELECT count(*) FROM chat_messages").fetchone()[0] == 15
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 1


def test_unix_socket_key_value_connection_string(start_server, pg_url):
    """libpq key=value strings work, here over the server's unix socket instead of TCP."""
    import os
    socket_dir = os.environ.get("PGTEST_DIR", "/tmp/chat-backend-pgtest")
    port = os.environ.get("PGTEST_PORT", "54329")
    options = pg_url[pg_url.index("options="):]
    url = f"host={socket_dir} port={port} user=postgres dbname=chat_test {options}"
    server = start_server(database_url=url)
    user = register(server)
    sid = create_session(server, user["accessToken"])["sessionId"]
    assert post_json(server.url(f"/api/sessions/{sid}/messages"), {"content": "via unix socket"}, token=user["accessToken"]).status_code == 201
    # The same schema seen over TCP holds the message.
    assert psql(pg_url, "SELECT content FROM chat_messages") == "via unix socket"


def test_two_instances_fan_out_messages_over_listen_notify(start_server, pg_url):
    """A client on instance A receives messages posted through instance B (Postgres NOTIFY carries the id)."""
    import json
    from websockets.sync.client import connect

    a = start_server(name="a", database_url=pg_url)
    b = start_server(name="b", database_url=pg_url)
    user = register(a)
    token = user["accessToken"]
    sid = create_session(a, token)["sessionId"]
    with connect(f"ws://127.0.0.1:{a.port}/ws", additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        ws.send(json.dumps({"type": "join", "sessionId": sid, "id": 1}))
        ack = json.loads(ws.recv(timeout=5))
        assert ack["type"] == "ack" and ack["event"] == "join", ack
        sent = []
        for i in range(20):
            r = post_json(b.url(f"/api/sessions/{sid}/messages"), {"content": f"from b {i}"}, token=token)
            assert r.status_code == 201, r.text
            sent.append(r.json()["id"])
        got = []
        while len(got) < len(sent):
            event = json.loads(ws.recv(timeout=5))
            if event["type"] == "message":
                got.append(event["message"]["id"])
        assert got == sent
        # A message posted on A itself is delivered once, not again through the feed.
        r = post_json(a.url(f"/api/sessions/{sid}/messages"), {"content": "from a"}, token=token)
        assert r.status_code == 201
        event = json.loads(ws.recv(timeout=5))
        assert event["message"]["id"] == r.json()["id"]
        try:
            extra = ws.recv(timeout=0.7)
        except TimeoutError:
            extra = None
        assert extra is None, f"duplicate delivery: {extra}"
        # Marking the session read on B reaches the connection on A as a `read` event.
        r = post_json(b.url(f"/api/sessions/{sid}/read"), {"lastMessageId": sent[-1]}, token=token)
        assert r.status_code == 200, r.text
        event = json.loads(ws.recv(timeout=5))
        assert event["type"] == "read", event
        assert (event["sessionId"], event["userId"], event["lastMessageId"]) == (sid, user["user"]["id"], sent[-1])
        assert event["readAt"] == r.json()["readAt"]


def test_revocations_on_one_instance_close_connections_on_the_other(start_server, pg_url):
    """Logout on instance A ends that login's WebSocket on instance B at once and B refuses the token without
    waiting for its cache; a reused refresh token on A ends that other login's connections on B too."""
    import contextlib
    import json
    from websockets.sync.client import connect

    a = start_server(name="a", database_url=pg_url)
    b = start_server(name="b", database_url=pg_url)
    sockets = contextlib.ExitStack()
    first = register(a)
    second = post_json(a.url("/auth/login"), {"username": first["user"]["username"], "password": PASSWORD}).json()
    other = register(a)

    def open_ws(token):
        ws = sockets.enter_context(connect(f"ws://127.0.0.1:{b.port}/ws", additional_headers={"Authorization": f"Bearer {token}"},
                                           open_timeout=5))
        ws.send(json.dumps({"type": "join", "sessionId": create_session(b, token)["sessionId"], "id": 1}))
        assert json.loads(ws.recv(timeout=5))["type"] == "ack"
        return ws

    ws_first, ws_second, ws_other = open_ws(first["accessToken"]), open_ws(second["accessToken"]), open_ws(other["accessToken"])
    try:
        # B has just checked the token and remembers it as not revoked.
        assert auth_get(b.url("/api/status"), first["accessToken"]).status_code == 200
        r = requests.post(a.url("/auth/logout"), headers={"Authorization": f"Bearer {first['accessToken']}"}, timeout=10)
        assert r.status_code == 204
        assert closed_code(ws_first) == 1008
        assert_json_error(auth_get(b.url(f"/api/users/{first['user']['id']}/sessions"), first["accessToken"]), 401, "token_revoked")

        # The second login of the same user is a different family: still connected.
        r = post_json(a.url("/auth/refresh"), {"refreshToken": second["refreshToken"]})
        assert r.status_code == 200
        assert closed_code(ws_second, within=0.5) is None
        # Presenting the used refresh token again revokes that whole login everywhere.
        r = post_json(a.url("/auth/refresh"), {"refreshToken": second["refreshToken"]})
        assert r.status_code == 401
        assert closed_code(ws_second) == 1008
        assert closed_code(ws_other, within=0.5) is None, "another user's connection must stay"
    finally:
        sockets.close()


def test_copy_refuses_a_postgres_database_a_server_uses(start_server, bin_path, tmp_path, pg_url):
    # Also when the server's DATABASE_URL names an application_name of its own.
    server = start_server(name="pg-live", database_url=pg_url + " application_name=my-chat")
    register(server)
    env = base_env(tmp_path)
    r = run_cli(bin_path, ["copy", "--from", pg_url, "--to", f"sqlite://{tmp_path / 'out.db'}"], tmp_path, env, timeout=60)
    assert r.returncode == 78 and "--from: another process" in r.stderr, (r.returncode, r.stderr)
    assert not (tmp_path / "out.db").exists()
    r = run_cli(bin_path, ["copy", "--from", f"sqlite://{tmp_path / 'none.db'}", "--to", pg_url], tmp_path, env, timeout=60)
    assert r.returncode == 78 and "none.db does not exist" in r.stderr, (r.returncode, r.stderr)
    server.stop()
    r = run_cli(bin_path, ["copy", "--from", pg_url, "--to", f"sqlite://{tmp_path / 'out.db'}"], tmp_path, env, timeout=60)
    assert r.returncode == 0 and "1 users" in r.stdout, (r.returncode, r.stdout, r.stderr)
