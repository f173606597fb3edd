"""The command line: version, migrate, check-config, user add, backup, and refusing a changed migration."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import time
from contextlib import closing

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
    flag = run_cli(bin_path, ["--version"], workdir, env)
    assert flag.returncode == 0 and flag.stdout == r.stdout, (flag.stdout, r.stdout)


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


def test_user_add_refuses_to_start_a_database_nobody_named(bin_path, workdir, env):
    """Run outside systemd with no STATE_DIRECTORY or DATABASE_URL (as `chat-backend user add carol --admin` on
    an installed system), it would make ./data/chat.db holding only that user: it says where the service's
    database is instead. STATE_DIRECTORY in the config file is said to be ignored."""
    env = {k: v for k, v in env.items() if k != "STATE_DIRECTORY"}
    r = run_cli(bin_path, ["user", "add", "carol", "--admin"], workdir, env)
    assert r.returncode == 78, (r.returncode, r.stderr)
    assert "STATE_DIRECTORY=/var/lib/chat-backend" in r.stderr and "migrate" in r.stderr, r.stderr
    assert not (workdir / "data").exists()
    config = workdir / "chat-backend.env"
    config.write_text(f"STATE_DIRECTORY={workdir}\n")
    r = run_cli(bin_path, ["check-config", "--config", str(config)], workdir, env)
    assert "STATE_DIRECTORY is read from the environment only" in r.stderr + r.stdout, r.stderr


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
    # Into a directory that does not exist: the output cannot be created (73), not "storage unavailable".
    r = run_cli(bin_path, ["backup", str(server.dir / "missing" / "copy.db"), *db_args(server.db_path)], server.dir, server.env)
    assert r.returncode == 73 and "cannot create" in r.stderr, (r.returncode, r.stderr)

    # The copy is a working database: a server on it serves the same conversation.
    restored = start_server(name="restored", db_path=backup)
    r = auth_get(restored.url(f"/api/sessions/{session_id}/messages"), token, params={"limit": 100})
    assert r.status_code == 200, r.text
    assert [m["content"] for m in r.json()["messages"]] == contents


def corrupt_copy(source, target):
    """A copy of `source` with random bytes over four pages in its middle."""
    data = bytearray(source.read_bytes())
    assert len(data) > 16 * 4096, "the database must have pages to damage"
    data[8 * 4096:12 * 4096] = os.urandom(4 * 4096)
    target.write_bytes(bytes(data))


def test_backup_of_a_damaged_database_leaves_no_file(bin_path, workdir, env):
    """A nightly backup must not put a damaged copy (or an empty one from a failed run) where a good one was."""
    db = workdir / "good.db"
    assert run_cli(bin_path, ["migrate", *db_args(db)], workdir, env).returncode == 0
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE filler (x TEXT)")
        conn.executemany("INSERT INTO filler VALUES (?)", [("x" * 500,) for _ in range(400)])
        conn.commit()
    bad = workdir / "bad.db"
    corrupt_copy(db, bad)
    target = workdir / "nightly.db"
    r = run_cli(bin_path, ["backup", str(target), *db_args(bad)], workdir, env)
    assert r.returncode == 65, (r.returncode, r.stderr)
    assert "corrupt" in r.stderr and "no backup written" in r.stderr, r.stderr
    assert sorted(p.name for p in workdir.iterdir() if p.name.startswith("nightly")) == [], "nothing named like the backup is left"
    assert sorted(p.name for p in workdir.iterdir() if p.name.startswith("bad.db")) == ["bad.db"], "the source is not touched"

    # The good database backs up under the same name afterwards.
    r = run_cli(bin_path, ["backup", str(target), *db_args(db)], workdir, env)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in workdir.iterdir() if p.name.startswith("nightly")) == ["nightly.db"]
    # An existing file is refused as "cannot create" (73), with one line and no usage text.
    r = run_cli(bin_path, ["backup", str(target), *db_args(db)], workdir, env)
    assert r.returncode == 73 and "already exists" in r.stderr and "Usage" not in r.stderr, (r.returncode, r.stderr)


def test_backup_on_a_full_disk_leaves_no_file(bin_path, workdir, env):
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    db = workdir / "big.db"
    assert run_cli(bin_path, ["migrate", *db_args(db)], workdir, env).returncode == 0
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE filler (x BLOB)")
        conn.executemany("INSERT INTO filler VALUES (?)", [(os.urandom(4000),) for _ in range(1000)])  # about 4 MB
        conn.commit()
    small = workdir / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        r = run_cli(bin_path, ["backup", str(small / "copy.db"), *db_args(db)], workdir, env)
        assert r.returncode == 69, (r.returncode, r.stderr)
        assert list(small.iterdir()) == [], "a failed backup leaves nothing, and the space it took is free again"
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_check_config_leaves_no_files_beside_the_database(bin_path, workdir, env):
    db = workdir / "quiet.db"
    assert run_cli(bin_path, ["migrate", *db_args(db)], workdir, env).returncode == 0
    assert sorted(p.name for p in workdir.iterdir() if p.name.startswith("quiet")) == ["quiet.db"]
    r = run_cli(bin_path, ["check-config", *db_args(db)], workdir, env)
    assert r.returncode == 0, r.stderr
    assert f"migrations: {MIGRATION_COUNT} applied, 0 pending" in r.stdout, r.stdout
    assert sorted(p.name for p in workdir.iterdir() if p.name.startswith("quiet")) == ["quiet.db"], "no -wal or -shm left behind"


@pytest.mark.parametrize("lines,fragment", [
    ("export PORT=4000\n", "line 1: write PORT=… without `export`"),
    ("# a comment\n\nPORT 4000\n", "line 3: not a KEY=VALUE line"),
])
def test_env_file_lines_that_are_not_settings_are_refused(bin_path, workdir, env, lines, fragment):
    (workdir / "bad.env").write_text(lines)
    r = run_cli(bin_path, ["check-config", "--config", str(workdir / "bad.env")], workdir, env)
    assert r.returncode == 78 and fragment in r.stderr, (r.returncode, r.stderr)


def test_env_file_key_nothing_reads_is_named(bin_path, workdir, env):
    (workdir / "typo.env").write_text("PORT=4000\nDATABSE_URL=postgres://db.example.com/chat\n")
    r = run_cli(bin_path, ["check-config", "--config", str(workdir / "typo.env")], workdir, env)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^PORT\s+4000$", r.stdout, re.M), r.stdout
    assert "warning: " in r.stdout and "line 2: DATABSE_URL is not a chat-backend setting" in r.stdout, r.stdout


def test_config_file_named_in_the_environment_must_exist(bin_path, workdir, env):
    r = run_cli(bin_path, ["check-config"], workdir, dict(env, CHAT_BACKEND_CONFIG=str(workdir / "missing.env")))
    assert r.returncode == 78 and "missing.env does not exist" in r.stderr, (r.returncode, r.stderr)
    r = run_cli(bin_path, ["check-config", "--config", str(workdir)], workdir, env)
    assert r.returncode == 78 and "is a directory" in r.stderr, (r.returncode, r.stderr)


@pytest.mark.parametrize("key,value,fragment", [
    ("HOST", "999.1.1.1", "HOST: must be an IP address or a host name"),
    ("HOST", "not a host", "HOST: must be an IP address or a host name"),
    ("HOST", "nowhere.invalid", "HOST: cannot resolve"),
    ("DATABASE_URL", "postgres://chat@db.example.com:notaport/chat", "DATABASE_URL: port must be a number"),
    ("DATABASE_URL", "host=db.example.com port=abc dbname=chat", "DATABASE_URL: port must be a number"),
    ("DATABASE_URL", "postgresql://%zz@db.example.com/chat", "DATABASE_URL: invalid percent-encoded token"),
    ("DATABASE_URL", "postgres://db.example.com/chat?sslmode=sometimes", "DATABASE_URL: sslmode must be"),
    ("STATE_DIRECTORY", "/etc/hostname", "STATE_DIRECTORY: /etc/hostname is not a directory"),
])
def test_settings_refused_before_anything_is_tried(bin_path, workdir, env, key, value, fragment):
    """A typo in an address or a connection string is a configuration error (78), not an outage (69)."""
    r = run_cli(bin_path, ["check-config"], workdir, dict(env, **{key: value}))
    assert r.returncode == 78 and fragment in r.stderr, (r.returncode, r.stderr)


def test_jwt_secret_that_is_not_a_file_is_refused(bin_path, workdir, env):
    env = dict(env)
    del env["JWT_SECRET"]
    (workdir / "jwt-secret").mkdir()
    for command in (["check-config"], ["serve", "--host", "127.0.0.1", "--port", "0"]):
        r = run_cli(bin_path, [*command, *db_args(workdir / "chat.db")], workdir, env, timeout=15)
        assert r.returncode == 78 and "jwt-secret is not a file" in r.stderr, (command, r.returncode, r.stderr)


def test_serve_on_a_port_in_use_says_so(bin_path, workdir, env, start_server):
    server = start_server(name="holder")
    r = run_cli(bin_path, ["serve", "--host", "127.0.0.1", "--port", str(server.port), *db_args(workdir / "chat.db")], workdir, env,
                timeout=15)
    assert r.returncode == 71, (r.returncode, r.stderr)
    assert f"cannot listen on 127.0.0.1:{server.port}: Address already in use" in r.stderr, r.stderr
    assert "failed" not in r.stderr, "no stray warnings from services stopping"


def test_export_user_errors(bin_path, workdir, env):
    r = run_cli(bin_path, ["export-user", "nobody", *db_args(workdir / "absent.db")], workdir, env)
    assert r.returncode == 78 and "absent.db does not exist" in r.stderr, (r.returncode, r.stderr)
    assert not (workdir / "absent.db").exists(), "an export creates no database"
    db = workdir / "present.db"
    assert run_cli(bin_path, ["migrate", *db_args(db)], workdir, env).returncode == 0
    r = run_cli(bin_path, ["export-user", "nobody", *db_args(db)], workdir, env)
    assert r.returncode == 67 and "no user named 'nobody'" in r.stderr and "Usage" not in r.stderr, (r.returncode, r.stderr)


def test_copy_refuses_a_live_or_empty_source(bin_path, workdir, env, start_server):
    server = start_server(name="live-source")
    register(server)
    r = run_cli(bin_path, ["copy", "--from", f"sqlite://{server.db_path}", "--to", f"sqlite://{workdir / 'to.db'}"], workdir, env)
    assert r.returncode == 78 and "--from: another process" in r.stderr and "stop it" in r.stderr, (r.returncode, r.stderr)
    assert not (workdir / "to.db").exists()

    empty = workdir / "empty.db"
    empty.write_bytes(b"")
    r = run_cli(bin_path, ["copy", "--from", f"sqlite://{empty}", "--to", f"sqlite://{workdir / 'to.db'}"], workdir, env)
    assert r.returncode == 78 and "holds no chat-backend database" in r.stderr, (r.returncode, r.stderr)
    assert empty.read_bytes() == b"", "the mistyped source is not migrated"

    # Stopped, it copies.
    server.stop()
    r = run_cli(bin_path, ["copy", "--from", f"sqlite://{server.db_path}", "--to", f"sqlite://{workdir / 'to.db'}"], workdir, env)
    assert r.returncode == 0 and "1 users" in r.stdout, (r.returncode, r.stdout, r.stderr)
