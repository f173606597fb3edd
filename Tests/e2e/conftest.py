"""Shared fixtures for the end-to-end tests: they start the built chat-backend binary as a real process.

`CHAT_BACKEND_BIN` must point at the binary (`make test-e2e` sets it).
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import requests.adapters

# The system tests load this file by path: the checker beside it is found either way.
import sys
sys.path.insert(0, str(Path(__file__).resolve().parent))
import openapi_check  # noqa: E402

JWT_SECRET = "e2e-test-secret-0123456789abcdef0123456789abcdef-0123456789abcdef"
PASSWORD = "correct-horse-battery"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0

# Environment keys the server reads; a developer's shell must not leak them into a test run.
_SERVER_KEYS = (
    "PORT", "HOST", "DATABASE_URL", "LOG_LEVEL", "JWT_SECRET", "JWT_ACCESS_TTL", "JWT_REFRESH_TTL", "SESSION_TTL",
    "CORS_ORIGINS", "RATE_LIMIT_API", "RATE_LIMIT_AUTH", "RATE_LIMIT_MESSAGES", "MAX_BODY_BYTES", "HSTS_MAX_AGE",
    "TRUST_PROXY", "AGENTS_FILE", "SQLITE_SYNCHRONOUS", "STATE_DIRECTORY", "CHAT_BACKEND_CONFIG",
    "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID",
    "HTTP_HEADER_TIMEOUT", "MAX_CONNECTIONS", "GUEST_ACCESS", "RATE_LIMIT_GUEST", "GUEST_TTL", "WIDGET_ORIGINS",
    "MESSAGE_EDIT_WINDOW", "MESSAGE_RETENTION", "RESOLVED_SESSION_RETENTION",
)


# ---- Every response checked against openapi.yaml --------------------------------------------------------------
#
# All HTTP the tests do through `requests` (directly or through the helpers below) passes HTTPAdapter.send:
# each answer of a chat-backend started by this run (its port, and the X-Request-Id every answer carries) is
# kept, and checked against openapi.yaml after the test (not while it runs, so timing stays as it was). A
# test whose responses do not match fails at teardown with the list; the summary at the end lists them all.

_CHAT_PORTS: set[int] = set()
_received: list[tuple[str, str, int, str, bytes]] = []
_received_lock = threading.Lock()
_mismatches: list[str] = []
_checked = 0
_send = requests.adapters.HTTPAdapter.send


def _recording_send(self, request, **kwargs):
    response = _send(self, request, **kwargs)
    url = urlsplit(request.url)
    if url.port in _CHAT_PORTS and "X-Request-Id" in response.headers and not kwargs.get("stream"):
        body = response.content  # what Session.send reads next anyway (it raises the same errors)
        with _received_lock:
            _received.append((request.method, url.path, response.status_code, response.headers.get("Content-Type", ""), body))
    return response


requests.adapters.HTTPAdapter.send = _recording_send


def _check_received() -> list[str]:
    global _checked
    with _received_lock:
        batch = list(_received)
        _received.clear()
    problems = []
    for method, path, status, content_type, body in batch:
        for problem in openapi_check.check(method, path, status, content_type, body):
            problems.append(f"{method} {path} -> {status}: {problem}")
    _checked += len(batch)
    _mismatches.extend(problems)
    return problems


@pytest.fixture(autouse=True)
def responses_match_openapi():
    """Fails the test if a response it received does not match openapi.yaml (route, status, content type, body)."""
    yield
    problems = _check_received()
    if problems:
        pytest.fail(f"{len(problems)} response(s) do not match openapi.yaml:\n" + "\n".join(problems), pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    if _check_received():  # answers received after the last test's check (module fixtures' teardown)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if not _checked:
        return
    terminalreporter.write_sep("-", f"openapi.yaml: {_checked} responses checked, {len(_mismatches)} mismatches")
    for line in _mismatches:
        terminalreporter.write_line(line)


def wait_for_health(url: str, timeout: float, interval: float = 0.05, alive=lambda: None) -> None:
    """Polls `url` until it answers 200; `alive()` may raise to give up early. TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        alive()
        try:
            r = requests.get(url, timeout=1)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except requests.RequestException as e:
            last = repr(e)
        time.sleep(interval)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s (last: {last})")


def binary_path() -> str:
    path = os.environ.get("CHAT_BACKEND_BIN")
    if not path:
        pytest.fail("CHAT_BACKEND_BIN is not set; run the suite with `make test-e2e`")
    if not os.access(path, os.X_OK):
        pytest.fail(f"CHAT_BACKEND_BIN={path} is not an executable file")
    return os.path.abspath(path)


@pytest.fixture(scope="session")
def bin_path() -> str:
    return binary_path()


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(state_dir: Path, **overrides: str) -> dict[str, str]:
    """A clean environment: no config file from /etc, state under `state_dir`, limits off unless overridden."""
    env = {k: v for k, v in os.environ.items() if k not in _SERVER_KEYS}
    env.update({
        "CHAT_BACKEND_CONFIG": "/dev/null",
        "STATE_DIRECTORY": str(state_dir),
        "JWT_SECRET": JWT_SECRET,
        "RATE_LIMIT_API": "off",
        "RATE_LIMIT_AUTH": "off",
        "RATE_LIMIT_MESSAGES": "off",
        "RATE_LIMIT_GUEST": "off",
        "LOG_LEVEL": "info",
    })
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_cli(bin_path: str, args: list[str], cwd: Path, env: dict[str, str], input: str | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([bin_path, *args], cwd=cwd, env=env, input=input, capture_output=True, text=True, timeout=timeout)


class Server:
    """One chat-backend `serve` process with its own directory (cwd, STATE_DIRECTORY, SQLite database)."""

    _counter = itertools.count()

    def __init__(self, bin_path: str, directory: Path, env: dict[str, str] | None = None,
                 db_path: Path | None = None, port: int | None = None, database_url: str | None = None):
        self.bin_path = bin_path
        self.database_url = database_url
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db_path = db_path or (directory / "chat.db")
        self.port = port or free_port()
        _CHAT_PORTS.add(self.port)
        self.env = base_env(directory, **(env or {}))
        self.proc: subprocess.Popen | None = None
        n = next(self._counter)
        self.stdout_path = directory / f"server-{n}.stdout"
        self.stderr_path = directory / f"server-{n}.stderr"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def command(self) -> list[str]:
        return [self.bin_path, "serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--database-url", self.database_url or f"sqlite://{self.db_path}"]

    def start(self, command: list[str] | None = None, wait: bool = True, **popen_kwargs) -> "Server":
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(command or self.command(), cwd=self.dir, env=self.env, stdout=self._out,
                                     stderr=self._err, **popen_kwargs)
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        def alive() -> None:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode} before answering /health:\n{self.logs()}")
        try:
            wait_for_health(self.url("/health"), timeout, alive=alive)
        except TimeoutError as e:
            raise AssertionError(f"{e}:\n{self.logs()}") from None

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def logs(self) -> str:
        return f"--- stdout ---\n{self.stdout()}\n--- stderr ---\n{self.stderr()}"

    def _close_files(self) -> None:
        for f in (getattr(self, "_out", None), getattr(self, "_err", None)):
            if f and not f.closed:
                f.close()

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM and wait; returns the exit code (kills and fails if it does not stop)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self._close_files()
                raise AssertionError(f"server did not exit within {timeout}s of SIGTERM:\n{self.logs()}")
        self._close_files()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, no chance to flush."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._close_files()

    def stop(self) -> None:
        """Teardown: SIGTERM must end the process with exit code 0."""
        if self.proc is None or self.proc.returncode == -signal.SIGKILL:
            self._close_files()  # never started, or crashed on purpose by the test
            return
        code = self.terminate()
        assert code == 0, f"server exited with {code} after SIGTERM:\n{self.logs()}"


@pytest.fixture
def start_server(bin_path, tmp_path):
    """Factory: `start_server(env={...})` starts a server in its own directory; all are stopped (SIGTERM, exit 0) at teardown."""
    servers: list[Server] = []

    def start(env: dict[str, str] | None = None, name: str | None = None, db_path: Path | None = None,
              wait: bool = True, database_url: str | None = None) -> Server:
        directory = tmp_path / (name or f"srv{len(servers)}")
        server = Server(bin_path, directory, env=env, db_path=db_path, database_url=database_url)
        servers.append(server)
        return server.start(wait=wait)

    yield start
    errors = []
    for server in servers:
        try:
            server.stop()
        except AssertionError as e:
            errors.append(str(e))
    if errors:
        pytest.fail("\n".join(errors))


@pytest.fixture
def server(start_server) -> Server:
    """A server with default test settings (JWT_SECRET set, rate limits off)."""
    return start_server()


# ---- Postgres ----------------------------------------------------------------------------------------------

PG_BASE = os.environ.get("CHAT_TEST_POSTGRES", "")
ROOT = Path(__file__).resolve().parents[2]
# Migrations shipped in this tree (the binary embeds the same files; a Swift test checks that).
MIGRATION_COUNT = len(list((ROOT / "migrations" / "sqlite").glob("V*.sql")))


def psql(conninfo: str, sql: str) -> str:
    r = subprocess.run(["psql", conninfo, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.fixture
def pg_url():
    """A libpq connection string for a fresh schema on the test Postgres (`make test` starts it)."""
    if not PG_BASE:
        pytest.skip("CHAT_TEST_POSTGRES is not set (make test starts a Postgres and sets it)")
    schema = f"e2e_{uuid.uuid4().hex[:12]}"
    psql(PG_BASE, f"CREATE SCHEMA {schema}")
    yield f"{PG_BASE} options='-c search_path={schema}'"
    try:
        psql(PG_BASE, f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    except AssertionError:
        pass  # the server may be down after an outage test that failed


def pg_control(action: str) -> None:
    """Stops (`halt`) or starts (`resume`) the test Postgres, or stops and continues its processes (`freeze`,
    `thaw`), as scripts/pg-test.sh does."""
    r = subprocess.run([str(ROOT / "scripts" / "pg-test.sh"), action], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


# ---- HTTP helpers -------------------------------------------------------------------------------------------

def unique_name(prefix: str = "u") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def post_json(url: str, body, token: str | None = None, headers: dict | None = None, timeout: float = 10) -> requests.Response:
    h = {"Content-Type": "application/json"}
    if token:
        h["Authorization"] = f"Bearer {token}"
    if headers:
        h.update(headers)
    return requests.post(url, json=body, headers=h, timeout=timeout)


def auth_get(url: str, token: str | None, headers: dict | None = None, **kwargs) -> requests.Response:
    h = {"Authorization": f"Bearer {token}"} if token else {}
    if headers:
        h.update(headers)
    return requests.get(url, headers=h, timeout=kwargs.pop("timeout", 10), **kwargs)


def register(server: Server, username: str | None = None, password: str = PASSWORD) -> dict:
    """Registers a fresh user; returns the 201 body (user, accessToken, refreshToken, tokenType, expiresIn)."""
    username = username or unique_name()
    r = post_json(server.url("/auth/register"), {"username": username, "password": password})
    assert r.status_code == 201, f"register {username}: {r.status_code} {r.text}"
    body = r.json()
    body["password"] = password
    return body


def create_session(server: Server, token: str, metadata: dict | None = None) -> dict:
    r = post_json(server.url("/api/sessions"), {"metadata": metadata} if metadata is not None else {}, token=token)
    assert r.status_code == 201, f"create session: {r.status_code} {r.text}"
    return r.json()


def assert_json_error(r: requests.Response, status: int, code: str | None = None) -> dict:
    """The response has `status` and the JSON error shape; returns the `error` object."""
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text}"
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert {"code", "message", "details"} <= set(error), error
    assert isinstance(error["message"], str) and error["message"], error
    if code is not None:
        assert error["code"] == code, error
    return error


def closed_code(ws, within: float = 3.0):
    """The close code of a (websockets sync) connection the server closes within `within` seconds, else None;
    whatever arrives before the close is read and dropped."""
    from websockets.exceptions import ConnectionClosed
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            ws.recv(timeout=max(0.05, deadline - time.monotonic()))
    except TimeoutError:
        return None
    except ConnectionClosed:
        return ws.protocol.close_code
    return None
