"""Faults from outside the process: files it may not write or that are damaged, a full disk, start-up errors,
a send racing a resolve, Postgres restarts under two instances."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import pytest
import requests
from websockets.sync.client import connect as ws_connect

from conftest import Server, base_env, create_session, pg_control, post_json, register, run_cli

IS_ROOT = os.geteuid() == 0
NOBODY = 65534


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_database_and_state_directory_are_owner_only_whatever_the_umask(bin_path, tmp_path):
    state = tmp_path / "state" / "nested"
    server = Server(bin_path, tmp_path / "cwd", env={"STATE_DIRECTORY": str(state), "JWT_SECRET": None},
                    db_path=state / "chat.db")
    server.start(preexec_fn=lambda: os.umask(0o022))
    try:
        user = register(server)
        create_session(server, user["accessToken"])
        assert mode(state) == 0o700, oct(mode(state))
        for name in ("chat.db", "chat.db-wal", "chat.db-shm", "jwt-secret"):
            path = state / name
            assert path.exists(), f"{name} missing: {list(state.iterdir())}"
            assert mode(path) == 0o600, f"{name} is {oct(mode(path))}"
    finally:
        server.stop()


def start_and_fail(bin_path, directory: Path, database_url: str, user: int | None = None, args=("serve",)) -> subprocess.CompletedProcess:
    env = base_env(directory)
    command = [bin_path, *args, "--database-url", database_url]
    if args[0] == "serve":
        command += ["--host", "127.0.0.1", "--port", "0"]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    return subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True, timeout=30)


def stderr_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("chat-backend:")]


@pytest.mark.skipif(not IS_ROOT or not shutil.which("setpriv"), reason="needs root to run the server as another user")
def test_a_database_file_it_cannot_write_stops_start_up(bin_path):
    # Outside pytest's private temporary directory, which another user cannot enter.
    top = Path(tempfile.mkdtemp(prefix="chat-ro-", dir="/tmp"))
    try:
        os.chmod(top, 0o755)
        directory = top / "state"
        directory.mkdir()
        db = directory / "chat.db"
        r = run_cli(bin_path, ["migrate", "--database-url", f"sqlite://{db}"], directory, base_env(directory))
        assert r.returncode == 0, r.stderr
        shutil.copy(bin_path, top / "chat-backend")
        os.chown(directory, NOBODY, NOBODY)
        os.chown(db, NOBODY, NOBODY)
        os.chmod(db, 0o444)
        result = start_and_fail(str(top / "chat-backend"), directory, f"sqlite://{db}", user=NOBODY)
        assert result.returncode in (69, 78), result
        lines = stderr_lines(result)
        assert len(lines) == 1 and str(db) in lines[0] and "read-only" in lines[0], result.stderr
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.skipif(not IS_ROOT, reason="needs root to mount a small file system")
def test_health_is_503_while_the_disk_is_full(bin_path, tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        server = Server(bin_path, tmp_path / "cwd", db_path=mount / "chat.db")
        server.start()
        try:
            user = register(server)
            assert requests.get(server.url("/api/health"), timeout=5).status_code == 200
            filler = mount / "filler"
            subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)  # fills the disk
            r = requests.get(server.url("/api/health"), timeout=5)
            assert r.status_code == 503 and r.json()["storage"]["reason"] == "storage_full", r.text
            sid_response = post_json(server.url("/api/sessions"), {}, token=user["accessToken"])
            assert sid_response.status_code in (201, 503), sid_response.text
            filler.unlink()
            r = requests.get(server.url("/api/health"), timeout=5)
            assert r.status_code == 200, r.text
            assert post_json(server.url("/api/sessions"), {}, token=user["accessToken"]).status_code == 201
        finally:
            server.stop()
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def corrupt_middle(db: Path) -> bytes:
    """Fills pages 20-59 of a database with garbage, leaving the header intact; returns the file's bytes."""
    with open(db, "r+b") as f:
        f.seek(4096 * 20)
        f.write(bytes((i * 37 + 11) % 256 for i in range(4096 * 40)))
    return db.read_bytes()


def make_database_with_pages(bin_path, directory: Path, db: Path) -> None:
    r = run_cli(bin_path, ["migrate", "--database-url", f"sqlite://{db}"], directory, base_env(directory))
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(db) as c:  # enough rows for 60+ pages, in the tables the server reads
        c.executemany("INSERT INTO users (id, username, email, password_hash, role, created_at, updated_at) "
                      "VALUES (?, ?, NULL, 'x', 'user', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z')",
                      [(f"00000000-0000-4000-8000-{i:012d}", f"user{i:05d}" + "x" * 150) for i in range(3000)])
    with sqlite3.connect(db) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert db.stat().st_size > 4096 * 80


def readme_salvage_commands(damaged: Path, state: Path) -> list[str]:
    """The README's salvage commands ("Recovering a damaged database"), for files in these directories (without
    sudo; the ownership line is left out)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Recovering a damaged database", 1)[1].split("\n### ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.strip().splitlines():
        line = line.strip().removeprefix("sudo ").replace("/root/damaged/", f"{damaged}/").replace("/var/lib/chat-backend/", f"{state}/")
        if not line.startswith("chown"):
            commands.append(line.replace("&& sudo chmod", "&& chmod"))
    return commands


@pytest.mark.skipif(not shutil.which("sqlite3"), reason="needs the sqlite3 shell (apt-get install sqlite3)")
def test_the_readme_salvage_of_a_damaged_database_keeps_what_is_readable(bin_path, tmp_path):
    """Run as written, the README's steps keep the rows SQLite can still read (a `.dump` that met damage ends with
    ROLLBACK, which left an empty file that the server then started on as a new database)."""
    damaged, state = tmp_path / "damaged", tmp_path / "state"
    damaged.mkdir()
    state.mkdir()
    db = damaged / "chat.db"
    make_database_with_pages(bin_path, tmp_path, db)
    # Damage among the users' rows, written last (damage to the schema, written first, leaves .dump nothing).
    pages = db.stat().st_size // 4096
    with open(db, "r+b") as f:
        f.seek(4096 * (pages - 30))
        f.write(bytes((i * 37 + 11) % 256 for i in range(4096 * 10)))
    commands = readme_salvage_commands(damaged, state)
    assert len(commands) == 3, commands
    for command in commands:
        subprocess.run(["bash", "-c", command], check=True, capture_output=True, timeout=60)
    with closing(sqlite3.connect(state / "chat.db")) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        users = c.execute("SELECT count(*) FROM users").fetchone()[0]
    assert 2000 < users <= 3000, f"{users} of 3000 users kept"
    checked = start_and_fail(bin_path, tmp_path, f"sqlite://{state / 'chat.db'}", args=("check-config",))
    assert checked.returncode == 0, checked.stderr


def test_a_database_damaged_in_the_middle_is_refused_at_start(bin_path, tmp_path):
    db = tmp_path / "chat.db"
    make_database_with_pages(bin_path, tmp_path, db)
    before = corrupt_middle(db)
    result = start_and_fail(bin_path, tmp_path, f"sqlite://{db}")
    assert result.returncode == 65, result
    lines = stderr_lines(result)
    assert len(lines) == 1 and str(db) in lines[0] and "corrupt" in lines[0] and "backup" in lines[0] and ".dump" in lines[0], \
        result.stderr
    assert db.read_bytes() == before, "the server wrote into a file it knew to be corrupt"
    checked = start_and_fail(bin_path, tmp_path, f"sqlite://{db}", args=("check-config",))
    assert checked.returncode == 65 and "corrupt" in checked.stderr, checked


def test_start_up_errors_are_one_plain_sentence(bin_path, tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    result = start_and_fail(bin_path, tmp_path, f"sqlite://{tmp_path}/a-file/sub/chat.db")
    assert result.returncode == 78, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("chat-backend: ") and "a-file" in lines[0] and "Error" not in lines[0] and "(" not in lines[0], lines


# ---- a send racing a resolve ------------------------------------------------------------------------------

ROUNDS = 200


def race_rounds(server: Server) -> list[str]:
    """Rounds of ten sends fired together with a resolve; returns what went wrong."""
    user = register(server)
    token = user["accessToken"]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    problems = []
    local = threading.local()

    def http() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.headers.update(headers)
        return local.session

    with ThreadPoolExecutor(max_workers=11) as pool:
        for round_ in range(ROUNDS):
            sid = create_session(server, token)["sessionId"]
            barrier = threading.Barrier(11)

            def send(i: int):
                barrier.wait(timeout=10)
                return http().post(server.url(f"/api/sessions/{sid}/messages"), json={"content": f"r{round_} m{i}"}, timeout=10)

            def resolve():
                barrier.wait(timeout=10)
                return http().post(server.url(f"/api/sessions/{sid}/resolve"), json={}, timeout=10)

            sends = [pool.submit(send, i) for i in range(10)]
            resolved = pool.submit(resolve).result()
            assert resolved.status_code == 200, resolved.text
            resolved_at = resolved.json()["resolvedAt"]
            acknowledged = []
            for future in sends:
                r = future.result()
                assert r.status_code in (201, 409), r.text
                if r.status_code == 201:
                    acknowledged.append(r.json()["id"])
            stored = http().get(server.url(f"/api/sessions/{sid}/messages?limit=50"), timeout=10).json()["messages"]
            late = [m for m in stored if m["createdAt"] > resolved_at]
            if late:
                problems.append(f"round {round_}: {len(late)} message(s) stored after the resolve at {resolved_at}: "
                                f"{[m['createdAt'] for m in late]}")
            if sorted(m["id"] for m in stored) != sorted(acknowledged):
                problems.append(f"round {round_}: stored {len(stored)} messages, acknowledged {len(acknowledged)}")
    return problems


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_no_message_is_stored_after_the_resolve_that_refuses_it(start_server, backend, request):
    database_url = request.getfixturevalue("pg_url") if backend == "postgres" else None
    server = start_server(database_url=database_url)
    problems = race_rounds(server)
    assert problems == [], "\n".join(problems[:10])


# ---- Postgres restarts under two instances ----------------------------------------------------------------

def test_live_delivery_across_postgres_restarts(start_server, pg_url):
    """A /ws client on instance A, sends through instance B every 250 ms, Postgres restarted three times: every
    message B acknowledged reaches the client on A live, in order, once."""
    a = start_server(name="a", database_url=pg_url)
    b = start_server(name="b", database_url=pg_url)
    user = register(a)
    token = user["accessToken"]
    sid = create_session(a, token)["sessionId"]
    received: list[str] = []
    other: list[dict] = []
    acknowledged: list[str] = []
    stop = threading.Event()

    with ws_connect(f"ws://127.0.0.1:{a.port}/ws", additional_headers={"Authorization": f"Bearer {token}"}, proxy=None) as ws:
        ws.send(json.dumps({"type": "join", "sessionId": sid, "id": 1}))
        ack = json.loads(ws.recv(timeout=5))
        assert ack["type"] == "ack", ack

        def read():
            try:
                while True:
                    event = json.loads(ws.recv())
                    if event["type"] == "message":
                        received.append(event["message"]["id"])
                    else:
                        other.append(event)
            except Exception:
                pass

        def send():
            http = requests.Session()
            i = 0
            while not stop.is_set():
                try:
                    r = http.post(b.url(f"/api/sessions/{sid}/messages"), json={"content": f"m{i}"},
                                  headers={"Authorization": f"Bearer {token}"}, timeout=5)
                    if r.status_code == 201:
                        acknowledged.append(r.json()["id"])
                except requests.RequestException:
                    http = requests.Session()
                i += 1
                stop.wait(0.25)

        reader = threading.Thread(target=read, daemon=True)
        sender = threading.Thread(target=send, daemon=True)
        reader.start()
        sender.start()
        try:
            for _ in range(3):
                time.sleep(2)
                pg_control("halt")
                time.sleep(1)
                pg_control("resume")
            time.sleep(4)  # sends go on after the last restart
        finally:
            stop.set()
            sender.join(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(received) < len(acknowledged):
            time.sleep(0.1)
    assert len(acknowledged) > 20, acknowledged
    missing = [m for m in acknowledged if m not in received]
    assert missing == [], f"{len(missing)} of {len(acknowledged)} acknowledged messages never arrived live; other events: {other}"
    assert received == acknowledged, "delivered out of order or more than once"
