"""The command line: version, migrate, check-config, user add, backup, and refusing a changed migration."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import time

import jwt
import pytest
import requests

from conftest import JWT_SECRET, MIGRATION_COUNT, auth_get, base_env, create_session, post_json, register, run_cli

MIGRATION_LINE = re.compile(r"^V(\d+)\s+(\S+)\s+(applied (\S+)|pending)$")


@pytest.fixture
def workdir(tmp_path):
    d = tmp_path / "cli"
    d.mkdir()
    return d


@pytest.fixture
def env(workdir):
    return base_env(workdir)


def db_args(path) -> list[str]:
    return ["--database-url", f"sqlite://{path}"]


def test_version(bin_path, workdir, env):
    r = run_cli(bin_path, ["version"], workdir, env)
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"chat-backend \d+\.\d+\.\d+\S*\n", r.stdout), r.stdout


def parse_migrations(stdout: str) -> dict[int, tuple[str, str | None]]:
    lines = stdout.strip().splitlines()
    assert lines[0].startswith("sqlite sqlite://"), stdout
    result = {}
    for line in lines[1:]:
        m = MIGRATION_LINE.match(line)
        assert m, f"unexpected line {line!r}"
        result[int(m.group(1))] = (m.group(2), m.group(4))
    return result


def test_migrate_fresh_then_nothing_new(bin_path, workdir, env):
    db = workdir / "fresh" / "chat.db"  # the directory does not exist yet
    first = run_cli(bin_path, ["migrate", *db_args(db)], workdir, env)
    assert first.returncode == 0, first.stderr
    applied = parse_migrations(first.stdout)
    assert sorted(applied) == list(range(1, MIGRATION_COUNT + 1)), first.stdout
    assert all(at is not None for _, at in applied.values()), first.stdout
    assert applied[1][0] == "create_chat_sessions_table"
    assert db.exists()

    second = run_cli(bin_path, ["migrate", *db_args(db)], workdir, env)
    assert second.returncode == 0, second.stderr
    assert parse_migrations(second.stdout) == applied, "a second run must not re-apply anything"
    assert "applied migration" not in second.stderr, second.stderr

    with sqlite3.connect(db) as conn:
        assert [row[0] for row in conn.execute("SELECT version FROM schema_history ORDER BY version")] == list(range(1, MIGRATION_COUNT + 1))
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"chat_sessions", "chat_messages", "users", "refresh_tokens"} <= tables


def test_check_config_masks_secrets(bin_path, workdir, env):
    env = dict(env, DATABASE_URL="postgres://u:secretpw@127.0.0.1:1/db")
    r = run_cli(bin_path, ["check-config"], workdir, env)
    # The URL is printed masked, then the connection test fails (nothing listens on port 1): exit 69.
    assert r.returncode == 69, r.stderr
    assert "cannot connect to Postgres" in r.stderr
    out = r.stdout + r.stderr
    assert "postgres://u:********@127.0.0.1:1/db" in r.stdout, r.stdout
    assert "secretpw" not in out
    assert JWT_SECRET not in out
    assert JWT_SECRET[:16] not in out
    assert re.search(r"^JWT_SECRET\s+\*+", r.stdout, re.M), r.stdout


def test_every_setting_is_documented(bin_path, workdir, env):
    """Every key check-config reports is in the README's configuration table and in the example env file."""
    from conftest import ROOT
    r = run_cli(bin_path, ["check-config", *db_args(workdir / "x.db")], workdir, env)
    assert r.returncode == 0, r.stderr
    keys = [m.group(1) for m in re.finditer(r"^([A-Z][A-Z0-9_]+)\s", r.stdout, re.M)]
    assert "HTTP_HEADER_TIMEOUT" in keys and "MAX_CONNECTIONS" in keys, r.stdout
    readme = (ROOT / "README.md").read_text()
    env_file = (ROOT / "systemd" / "chat-backend.env").read_text()
    undocumented = [k for k in keys if f"`{k}`" not in readme or not re.search(rf"^#?{k}=", env_file, re.M)]
    assert undocumented == [], f"settings missing from README.md or systemd/chat-backend.env: {undocumented}"


def test_check_config_reports_values_in_effect(bin_path, workdir, env):
    env = dict(env, RATE_LIMIT_API="120/1m", JWT_ACCESS_TTL="120s", CORS_ORIGINS="https://a.example")
    del env["JWT_SECRET"]  # the secret would come from STATE_DIRECTORY/jwt-secret
    r = run_cli(bin_path, ["check-config", "--port", "4321", *db_args(workdir / "x.db")], workdir, env)
    assert r.returncode == 0, r.stderr
    settings = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in r.stdout.splitlines()
                    if re.match(r"^[A-Z_]+\s{2,}\S", line))
    assert settings["PORT"] == "4321"
    assert settings["RATE_LIMIT_API"] == "120/1m"
    assert settings["JWT_ACCESS_TTL"] == "2m"
    assert settings["CORS_ORIGINS"] == "https://a.example"
    assert settings["JWT_SECRET"].startswith("********") and "jwt-secret" in settings["JWT_SECRET"]
    # check-config only reads: it creates no database and no secret file.
    assert not (workdir / "x.db").exists()
    assert not (workdir / "jwt-secret").exists()


@pytest.mark.parametrize("key,value", [("PORT", "abc"), ("JWT_ACCESS_TTL", "15x"), ("RATE_LIMIT_API", "lots"),
                                       ("JWT_SECRET", "too-short")])
def test_check_config_rejects_bad_values(bin_path, workdir, env, key, value):
    r = run_cli(bin_path, ["check-config"], workdir, dict(env, **{key: value}))
    assert r.returncode == 78, (r.returncode, r.stdout, r.stderr)
    assert key in r.stderr, r.stderr
    assert "configuration is valid" not in r.stdout
    if key == "JWT_SECRET":
        assert value not in r.stdout + r.stderr, "a rejected secret must not be echoed"


def test_bad_value_stops_serve(bin_path, workdir, env):
    started = time.monotonic()
    r = run_cli(bin_path, ["serve", "--host", "127.0.0.1", "--port", "0", *db_args(workdir / "chat.db")], workdir,
                dict(env, RATE_LIMIT_MESSAGES="many"), timeout=15)
    assert r.returncode == 78, (r.returncode, r.stderr)
    assert "RATE_LIMIT_MESSAGES" in r.stderr
    assert time.monotonic() - started < 10


def test_user_add_admin_then_login(bin_path, workdir, env, start_server):
    db = workdir / "users.db"
    r = run_cli(bin_path, ["user", "add", "bob", "--admin", "--password-stdin", *db_args(db)], workdir, env,
                input="bob-password-1\n")
    assert r.returncode == 0, r.stderr
    assert re.match(r"created admin bob \([0-9a-f-]{36}\)", r.stdout), r.stdout
    assert "password" not in r.stdout, "a password read from stdin must not be printed"
    bob_id = re.search(r"\(([0-9a-f-]{36})\)", r.stdout).group(1)

    dup = run_cli(bin_path, ["user", "add", "bob", "--password-stdin", *db_args(db)], workdir, env, input="other-password\n")
    assert dup.returncode != 0
    assert "already taken" in dup.stderr and "bob" in dup.stderr, dup.stderr
    dup_case = run_cli(bin_path, ["user", "add", "BOB", *db_args(db)], workdir, env)
    assert dup_case.returncode != 0, "usernames are unique regardless of case"
    assert "already taken" in dup_case.stderr, dup_case.stderr

    server = start_server(db_path=db)
    r = post_json(server.url("/auth/login"), {"username": "bob", "password": "bob-password-1"})
    assert r.status_code == 200, r.text
    login = r.json()
    assert login["user"]["role"] == "admin"
    assert login["user"]["id"] == bob_id
    assert jwt.decode(login["accessToken"], JWT_SECRET, algorithms=["HS256"])["role"] == "admin"
    r = post_json(server.url("/auth/login"), {"username": "bob", "password": "other-password"})
    assert r.status_code == 401, "the duplicate add must not have changed bob's password"

    # The admin role is real: bob may read another user's session.
    carol = register(server)
    session = create_session(server, carol["accessToken"])
    r = auth_get(server.url(f"/api/sessions/{session['sessionId']}"), login["accessToken"])
    assert r.status_code == 200, r.text


def test_user_add_generates_a_password(bin_path, workdir, env, start_server):
    db = workdir / "gen.db"
    r = run_cli(bin_path, ["user", "add", "dave", "--agent", *db_args(db)], workdir, env)
    assert r.returncode == 0, r.stderr
    m = re.search(r"^password: (\S+)$", r.stdout, re.M)
    assert m, r.stdout
    server = start_server(db_path=db)
    r = post_json(server.url("/auth/login"), {"username": "dave", "password": m.group(1)})
    assert r.status_code == 200, r.text
    assert r.json()["user"]["role"] == "agent"


@pytest.mark.parametrize("args,stdin,fragment", [
    (["user", "add", "x"], None, "username"),
    (["user", "add", "has space"], None, "username"),
    (["user", "add", "eve", "--admin", "--agent"], None, "--admin or --agent"),
    (["user", "add", "eve", "--password-stdin"], "short\n", "password"),
])
def test_user_add_rejects_bad_input(bin_path, workdir, env, args, stdin, fragment):
    db = workdir / "bad.db"
    r = run_cli(bin_path, [*args, *db_args(db)], workdir, env, input=stdin)
    assert r.returncode != 0
    assert fragment in r.stderr, r.stderr
    if db.exists():
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT COUNT(*) FROM users").fetchone()[0] == 0


def test_changed_migration_stops_startup(bin_path, workdir, env):
    db = workdir / "edited.db"
    r = run_cli(bin_path, ["migrate", *db_args(db)], workdir, env)
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE schema_history SET checksum = checksum + 1 WHERE version = 1")
    conn.close()

    started = time.monotonic()
    try:
        r = run_cli(bin_path, ["serve", "--host", "127.0.0.1", "--port", "0", *db_args(db)], workdir, env, timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("serve kept running on a database whose applied migration V1 was changed")
    assert time.monotonic() - started < 10
    assert r.returncode != 0
    assert "V1" in r.stderr and "changed" in r.stderr, r.stderr

    r = run_cli(bin_path, ["migrate", *db_args(db)], workdir, env)
    assert r.returncode != 0
    assert "V1" in r.stderr and "changed" in r.stderr, r.stderr


def test_backup_while_serving(bin_path, start_server):
    server = start_server(name="live")
    user = register(server)
    token = user["accessToken"]
    session_id = create_session(server, token)["sessionId"]
    contents = [f"message {i}" for i in range(25)]
    for i, content in enumerate(contents):
        r = post_json(server.url(f"/api/sessions/{session_id}/messages"), {"content": content, "clientMessageId": f"b{i}"},
                      token=token)
        assert r.status_code == 201, r.text

    backup = server.dir / "backup" / "copy.db"
    backup.parent.mkdir()
    r = run_cli(bin_path, ["backup", str(backup), *db_args(server.db_path)], server.dir, server.env)
    assert r.returncode == 0, r.stderr
    assert "backup written" in r.stdout
    assert requests.get(server.url("/health"), timeout=5).status_code == 200, "the server keeps running"

    with sqlite3.connect(backup) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(*) FROM chat_messages").fetchone()[0] == len(contents)
        assert sorted(row[0] for row in conn.execute("SELECT content FROM chat_messages")) == sorted(contents)
        assert conn.execute("SELECT COUNT(*) FROM users").fetchone()[0] == 1
    conn.close()

    # Backing up onto an existing file is refused and leaves it alone.
    before = backup.read_bytes()
    r = run_cli(bin_path, ["backup", str(backup), *db_args(server.db_path)], server.dir, server.env)
    assert r.returncode != 0
    assert "already exists" in r.stderr, r.stderr
    assert backup.read_bytes() == before

    # The copy is a working database: a server on it serves the same conversation.
    restored = start_server(name="restored", db_path=backup)
    r = auth_get(restored.url(f"/api/sessions/{session_id}/messages"), token, params={"limit": 100})
    assert r.status_code == 200, r.text
    assert [m["content"] for m in r.json()["messages"]] == contents
