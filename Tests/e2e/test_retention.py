"""Retention and data access: MESSAGE_RETENTION and RESOLVED_SESSION_RETENTION delete old data in the background
(in batches, the space given back to the file system on a new SQLite database), refused when nonsensical; and
`chat-backend export-user` writes everything stored about a user as JSON, without the password hash."""

from __future__ import annotations

import json
import secrets
import sqlite3
import time

import requests

from conftest import auth_get, base_env, create_session, post_json, register, run_cli
from test_agents import wait_for

DAY = 86400


def uuid7(at: float) -> str:
    """A UUIDv7 for the time `at` (seconds since 1970), as the server makes them."""
    value = (int(at * 1000) << 80) | (0x7 << 76) | (secrets.randbits(12) << 64) | (0b10 << 62) | secrets.randbits(62)
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def stamp(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}Z"


def test_old_messages_and_long_resolved_sessions_are_deleted_in_the_background(start_server, tmp_path):
    db = tmp_path / "chat.db"
    first = start_server(name="first", db_path=db)
    user = register(first)
    token = user["accessToken"]
    kept_sid = create_session(first, token)["sessionId"]
    recent = post_json(first.url(f"/api/sessions/{kept_sid}/messages"), {"content": "recent"}, token=token).json()
    old_resolved = create_session(first, token)["sessionId"]
    new_resolved = create_session(first, token)["sessionId"]
    for sid in (old_resolved, new_resolved):
        assert post_json(first.url(f"/api/sessions/{sid}/messages"), {"content": "x"}, token=token).status_code == 201
        assert post_json(first.url(f"/api/sessions/{sid}/resolve"), {}, token=token).status_code == 200
    first.stop()

    # 3,000 messages from 400 days ago; one session resolved 100 days ago, one yesterday.
    now = time.time()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # a new database gives space back
        old = stamp(now - 400 * DAY)
        rows = [(uuid7(now - 400 * DAY + i / 1000), kept_sid, user["user"]["id"], f"old {i} " + "x" * 200, old, old) for i in range(3000)]
        conn.executemany("INSERT INTO chat_messages (id, session_id, user_id, content, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                         rows)
        conn.execute("UPDATE chat_sessions SET resolved_at = ? WHERE session_id = ?", (stamp(now - 100 * DAY), old_resolved))
        conn.execute("UPDATE chat_sessions SET resolved_at = ? WHERE session_id = ?", (stamp(now - DAY), new_resolved))

    server = start_server(name="second", db_path=db, env={"MESSAGE_RETENTION": "365d", "RESOLVED_SESSION_RETENTION": "30d"})
    def history(sid):
        return auth_get(server.url(f"/api/sessions/{sid}/messages?limit=200"), token).json()["messages"]
    wait_for(lambda: [m["id"] for m in history(kept_sid)] == [recent["id"]], timeout=20, what="the old messages to go")
    wait_for(lambda: auth_get(server.url(f"/api/sessions/{old_resolved}"), token).status_code == 404, what="the old resolved session to go")
    assert auth_get(server.url(f"/api/sessions/{new_resolved}"), token).status_code == 200
    assert len(history(new_resolved)) == 1
    # The freed pages went back to the file system (incremental vacuum), not only to SQLite's free list.
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        wait_for(lambda: conn.execute("PRAGMA freelist_count").fetchone()[0] < 50, what="the free pages to be given back")
    assert "retention: deleted messages" in server.logs() and "retention: deleted resolved sessions" in server.logs()


def test_retention_settings_that_make_no_sense_are_refused(bin_path, tmp_path):
    for name, value in (("MESSAGE_RETENTION", "5m"), ("MESSAGE_RETENTION", "forever"), ("RESOLVED_SESSION_RETENTION", "-1d")):
        env = base_env(tmp_path, **{name: value})
        r = run_cli(bin_path, ["check-config", "--database-url", f"sqlite://{tmp_path}/c.db"], tmp_path, env)
        assert r.returncode != 0 and name in r.stdout + r.stderr, (name, value, r.stdout, r.stderr)


def test_export_user_writes_everything_about_a_user(server, tmp_path):
    user = register(server)
    token = user["accessToken"]
    sid = create_session(server, token)["sessionId"]
    sent = [post_json(server.url(f"/api/sessions/{sid}/messages"), {"content": f"m{i} <é>"}, token=token).json() for i in range(3)]
    upload = requests.post(server.url(f"/api/sessions/{sid}/attachments"), params={"filename": "cv.txt"}, data=b"my cv",
                           headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"}, timeout=10)
    assert upload.status_code == 201, upload.text
    other = register(server)
    create_session(server, other["accessToken"])
    database = f"sqlite://{server.db_path}"
    out = tmp_path / "export.json"
    r = run_cli(server.bin_path, ["export-user", user["user"]["username"], "--output", str(out), "--database-url", database], server.dir, server.env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    export = json.loads(out.read_text())
    assert export["user"]["id"] == user["user"]["id"] and export["user"]["username"] == user["user"]["username"]
    assert "scrypt" not in out.read_text() and "password" not in json.dumps(export["user"])
    assert [s["session"]["sessionId"] for s in export["sessions"]] == [sid]
    assert export["sessions"][0]["messages"] == auth_get(server.url(f"/api/sessions/{sid}/messages"), token).json()["messages"]
    assert [m["id"] for m in export["sessions"][0]["messages"]] == [m["id"] for m in sent]
    assert export["messagesInOtherSessions"] == []
    assert export["attachments"] == [upload.json()]  # what is known of the files, not their bytes
    # To standard output as well; an unknown user is an error, and nothing is left behind.
    r = run_cli(server.bin_path, ["export-user", user["user"]["username"], "--database-url", database], server.dir, server.env)
    assert r.returncode == 0 and json.loads(r.stdout)["user"]["id"] == user["user"]["id"]
    r = run_cli(server.bin_path, ["export-user", "nobody-here", "--output", str(tmp_path / "none.json"), "--database-url", database],
                server.dir, server.env)
    assert r.returncode != 0 and "nobody-here" in r.stdout + r.stderr and not (tmp_path / "none.json").exists()
    r = run_cli(server.bin_path, ["export-user", user["user"]["username"], "--output", str(out), "--database-url", database],
                server.dir, server.env)
    assert r.returncode != 0 and "already exists" in r.stdout + r.stderr
