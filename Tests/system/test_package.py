"""The Debian package on a Debian 12 system booted with systemd, driven as an administrator would.

One container for the whole module; each test is a step that builds on the ones before it:
install, serve, restart, back up and restore, socket activation, watchdog, Postgres, remove,
purge, then an upgrade from the previous package version. HTTP requests come from the host, over
the network the container shares with it.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest import ROOT, Container, log, run

# The end-to-end suite's HTTP helpers (register, create_session, post_json, auth_get).
_spec = importlib.util.spec_from_file_location("e2e_helpers", ROOT / "Tests" / "e2e" / "conftest.py")
e2e = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(e2e)

ENV_FILE = "/etc/chat-backend/chat-backend.env"
STATE = "/var/lib/chat-backend"
DROP_IN = "/run/systemd/system/chat-backend.service.d"  # runtime drop-ins: gone at the next boot
PG_PASSWORD = "system-test-password-0123456789"
PG_TCP_URL = f"postgresql://chat:{PG_PASSWORD}@127.0.0.1:5432/chat"
PG_SOCKET_URL = "host=/run/postgresql dbname=chat user=chat-backend"


class Service:
    """The installed service as clients see it: the container's port 3006 is the host's."""

    base_url = "http://127.0.0.1:3006"

    def url(self, path: str) -> str:
        return self.base_url + path


svc = Service()
state: dict = {}  # what earlier steps created: user, token, session, messages


# ---- helpers ------------------------------------------------------------------------------------------------

def wait_health(timeout: float = 60) -> None:
    e2e.wait_for_health(svc.url("/health"), timeout, interval=0.2)


def storage() -> dict:
    r = requests.get(svc.url("/api/health"), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["storage"]


def unit(c: Container, verb: str, name: str = "chat-backend.service") -> str:
    return c.sh(f"systemctl {verb} {name}", check=False).stdout.strip()


def main_pid(c: Container) -> int:
    return int(c.sh("systemctl show -P MainPID chat-backend.service").stdout.strip())


def stat(c: Container, path: str) -> str:
    return c.sh(f"stat -c '%U %G %a' {shlex.quote(path)}").stdout.strip()


def contents(token: str, session_id: str) -> list[str]:
    """Every message of the session, oldest first, read page by page."""
    found: list[str] = []
    params = {"limit": 200}
    while True:
        r = e2e.auth_get(svc.url(f"/api/sessions/{session_id}/messages"), token, params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        found += [m["content"] for m in page["messages"]]
        if not page["hasMore"]:
            return found
        params = {"limit": 200, "after": page["messages"][-1]["id"]}


def send(token: str, session_id: str, content: str) -> dict:
    r = e2e.post_json(svc.url(f"/api/sessions/{session_id}/messages"), {"content": content}, token=token)
    assert r.status_code == 201, r.text
    return r.json()


def set_env(c: Container, key: str, value: str) -> None:
    """Sets KEY=value in the env file, as an administrator editing it would."""
    c.sh(f"sed -i '/^{key}=/d' {ENV_FILE} && echo {shlex.quote(f'{key}={value}')} >> {ENV_FILE}")


def apt_install(c: Container, what: str) -> str:
    r = c.sh(f"apt-get install -y -q -o Dpkg::Options::=--force-confold {what}", timeout=900)
    return r.stdout


def installed_version(c: Container) -> str:
    return c.sh("dpkg-query -W -f='${Version}' chat-backend").stdout.strip()


class RequestLoop(threading.Thread):
    """New connection per request, as fast as answers come: /health, and a message sent every 5th time.

    Counts every request that fails (connection refused or reset, timeout, unexpected status).
    """

    def __init__(self, token: str, session_id: str, tag: str):
        super().__init__(daemon=True)
        self.token, self.session_id, self.tag = token, session_id, tag
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.sent: list[str] = []

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            try:
                if i % 5 == 0:
                    content = f"{self.tag} {i}"
                    r = e2e.post_json(svc.url(f"/api/sessions/{self.session_id}/messages"), {"content": content},
                                      token=self.token, timeout=30)
                    if r.status_code == 201:
                        self.sent.append(content)
                else:
                    r = requests.get(svc.url("/health"), timeout=30)
                if r.status_code in (200, 201):
                    self.ok += 1
                else:
                    self.failures.append(f"{time.strftime('%H:%M:%S')} HTTP {r.status_code} {r.text[:200]}")
            except requests.RequestException as e:
                self.failures.append(f"{time.strftime('%H:%M:%S')} {e!r}")

    def finish(self) -> None:
        self.stop.set()
        self.join(timeout=60)


def build_previous(deb: Path, workdir: Path) -> Path:
    """The previous release, for the upgrade test: this package with a lower version.

    There is no earlier release of the package, so the same files are repacked as
    <upstream>-0 (lower than <upstream>-1). Upgrading from it runs the real upgrade path of dpkg
    and the maintainer scripts (service restarted, conffile and data kept), not a schema change:
    both carry the same migrations (migrations across releases are tested by the Swift suites).
    """
    tree = workdir / "previous"
    run(["dpkg-deb", "-R", str(deb), str(tree)])
    control = tree / "DEBIAN" / "control"
    text = control.read_text()
    version = re.search(r"^Version: (\S+)$", text, re.M).group(1)
    previous = version.rsplit("-", 1)[0] + "-0"
    control.write_text(text.replace(f"Version: {version}", f"Version: {previous}"))
    out = workdir / f"chat-backend_{previous}_amd64.deb"
    run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(out)])
    return out


# ---- the steps ----------------------------------------------------------------------------------------------

def test_install(container: Container, deb: Path):
    c = container
    c.sh("apt-get update -q", timeout=600)
    path = c.put(deb, f"/root/debs/{deb.name}")
    apt_install(c, path)  # apt resolves the dependencies (libpq5, libsqlite3-0, ...) from Debian's mirror
    state["version"] = installed_version(c)

    # Enabled and started, as Debian does with daemons; socket activation is opt-in.
    assert unit(c, "is-enabled") == "enabled"
    assert unit(c, "is-active") == "active"
    assert unit(c, "is-enabled", "chat-backend.socket") == "disabled"
    assert unit(c, "is-active", "chat-backend.socket") == "inactive"

    # A system user without a login; config readable by its group only; data in the state directory.
    user = c.sh("getent passwd chat-backend").stdout.strip().split(":")
    assert int(user[2]) < 1000 and user[5] == STATE and user[6] == "/usr/sbin/nologin", user
    assert stat(c, ENV_FILE) == "root chat-backend 640"
    assert ENV_FILE in c.sh("dpkg-query -W -f='${Conffiles}' chat-backend").stdout
    assert stat(c, STATE) == "chat-backend chat-backend 750"
    wait_health()
    assert stat(c, f"{STATE}/jwt-secret") == "chat-backend chat-backend 600"
    assert c.sh(f"test -f {STATE}/chat.db", check=False).returncode == 0
    for path in ("/usr/share/man/man1/chat-backend.1.gz", "/usr/share/doc/chat-backend/README.md.gz",
                 "/usr/lib/sysusers.d/chat-backend.conf", "/lib/systemd/system/chat-backend.socket"):
        assert c.sh(f"test -f {path}", check=False).returncode == 0, f"{path} is not installed"
    assert c.sh("chat-backend --version").stdout.strip() == "chat-backend " + state["version"].split("-")[0]
    # The example agents file ships with the docs and is valid as it stands, given its two secrets.
    example = "/usr/share/doc/chat-backend/examples/agents.yaml"
    r = c.sh(f"cd /tmp && AGENTS_FILE={example} BILLING_WEBHOOK_SECRET=x OPENAI_API_KEY=y chat-backend check-config")
    assert "4 agents: echo, front, billing, assistant" in r.stdout, r.stdout + r.stderr

    # The sandbox, seen from inside the running service: config read-only, the state directory writable.
    pid = main_pid(c)
    r = c.sh(f"nsenter -t {pid} -m touch /etc/chat-backend/probe", check=False)
    assert r.returncode != 0 and "Read-only file system" in r.stderr, r.stderr
    c.sh(f"nsenter -t {pid} -m sh -c 'touch {STATE}/probe && rm {STATE}/probe'")
    security = c.sh("systemd-analyze security --no-pager chat-backend.service").stdout
    exposure = float(re.search(r"Overall exposure level for chat-backend.service: (\d+\.\d+)", security).group(1))
    assert exposure <= 2.0, security

    # Clients: health, register, a session, messages sent and read back.
    assert storage()["backend"] == "sqlite"
    user = e2e.register(svc)
    token = user["accessToken"]
    session_id = e2e.create_session(svc, token)["sessionId"]
    sent = [send(token, session_id, f"hello {i}")["content"] for i in range(3)]
    assert contents(token, session_id) == sent
    state.update(token=token, session=session_id, messages=sent, user=user)


def test_restart_keeps_data(container: Container):
    c = container
    before = main_pid(c)
    c.sh("systemctl restart chat-backend")
    assert main_pid(c) != before
    wait_health()
    assert contents(state["token"], state["session"]) == state["messages"]


def test_backup_while_serving_and_restore(container: Container):
    """The README's backup and restore commands, verbatim."""
    c = container
    token, session_id = state["token"], state["session"]
    state["messages"].append(send(token, session_id, "before the backup")["content"])
    c.sh("sudo -u chat-backend env STATE_DIRECTORY=/var/lib/chat-backend "
         "chat-backend backup /var/lib/chat-backend/chat-backup-test.db")
    send(token, session_id, "after the backup")
    assert contents(token, session_id)[-1] == "after the backup"

    c.sh("cp /var/lib/chat-backend/chat-backup-test.db /root/backup.db && rm /var/lib/chat-backend/chat-backup-test.db")
    c.sh("sudo systemctl stop chat-backend\n"
         "cd /var/lib/chat-backend\n"
         "sudo rm -f chat.db-wal chat.db-shm\n"
         "sudo install -m 0640 -o chat-backend -g chat-backend /root/backup.db chat.db\n"
         "sudo systemctl start chat-backend")
    wait_health()
    assert contents(token, session_id) == state["messages"], "the restored database is the backup's"
    assert stat(c, f"{STATE}/chat.db") == "chat-backend chat-backend 640"


def test_socket_activation_restart_refuses_nothing(container: Container):
    c = container
    # A local setting for the load below; it also shows an edited conffile applied by a restart.
    set_env(c, "RATE_LIMIT_API", "off")
    set_env(c, "RATE_LIMIT_MESSAGES", "off")
    # The README's way to switch to socket activation.
    c.sh("systemctl stop chat-backend.service && systemctl enable --now chat-backend.socket")
    assert unit(c, "is-active", "chat-backend.socket") == "active"
    assert unit(c, "is-active") == "inactive"

    # The first connection starts the service.
    r = requests.get(svc.url("/health"), timeout=60)
    assert r.status_code == 200, r.text
    assert unit(c, "is-active") == "active"
    assert "the socket passed by systemd" in c.sh("journalctl -u chat-backend.service -b --no-pager").stdout

    loop = RequestLoop(state["token"], state["session"], "loop")
    loop.start()
    try:
        time.sleep(1)
        for _ in range(3):
            before = main_pid(c)
            c.sh("systemctl restart chat-backend.service")
            assert main_pid(c) != before
            time.sleep(1.5)
    finally:
        loop.finish()
    log(f"request loop across 3 restarts: {loop.ok} answered, {len(loop.failures)} failed")
    assert not loop.failures, f"{len(loop.failures)} of {loop.ok + len(loop.failures)} requests failed:\n" + "\n".join(loop.failures[:20])
    assert loop.ok > 100
    state["messages"] += loop.sent
    assert contents(state["token"], state["session"]) == state["messages"], "every acknowledged message is stored"


def test_watchdog_restarts_a_hung_process(container: Container):
    c = container
    c.sh(f"mkdir -p {DROP_IN} && printf '[Service]\\nWatchdogSec=3s\\n' > {DROP_IN}/watchdog-test.conf && "
         "systemctl daemon-reload && systemctl restart chat-backend.service")
    wait_health()
    restarts = int(c.sh("systemctl show -P NRestarts chat-backend.service").stdout)
    hung = main_pid(c)
    c.sh(f"kill -STOP {hung}")
    deadline = time.monotonic() + 90
    while main_pid(c) in (hung, 0) or unit(c, "is-active") != "active":
        assert time.monotonic() < deadline, "the watchdog did not restart the stopped process"
        time.sleep(0.5)
    wait_health()
    assert int(c.sh("systemctl show -P NRestarts chat-backend.service").stdout) == restarts + 1
    assert "Watchdog timeout" in c.sh("journalctl -u chat-backend.service -b --no-pager").stdout
    assert contents(state["token"], state["session"]) == state["messages"]
    c.sh(f"rm -r {DROP_IN} && systemctl daemon-reload && systemctl restart chat-backend.service")
    wait_health()


def test_switch_to_postgres(container: Container):
    """The README's switch: a role and a database, `copy`, DATABASE_URL, restart; over TCP, then the unix socket."""
    c = container
    apt_install(c, "postgresql")
    c.sh("pg_lsclusters")
    c.sh(f"sudo -u postgres psql -v ON_ERROR_STOP=1 -c \"CREATE ROLE chat LOGIN PASSWORD '{PG_PASSWORD}'\" "
         "-c 'CREATE DATABASE chat OWNER chat'")

    # TCP, password (scram-sha-256 in Debian's pg_hba.conf).
    c.sh("systemctl stop chat-backend.socket chat-backend.service")
    copied = c.sh(f"sudo -u chat-backend chat-backend copy --from sqlite:///var/lib/chat-backend/chat.db "
                  f"--to {shlex.quote(PG_TCP_URL)}").stdout
    assert "done: target now holds 1 users" in copied, copied
    set_env(c, "DATABASE_URL", PG_TCP_URL)
    c.sh("systemctl start chat-backend.socket chat-backend.service")
    wait_health()
    assert (storage()["backend"], storage()["status"]) == ("postgres", "up")
    assert contents(state["token"], state["session"]) == state["messages"], "copied data, same tokens"
    state["messages"].append(send(state["token"], state["session"], "stored in Postgres over TCP")["content"])

    # The unix socket with peer authentication: the role is named after the service's user.
    c.sh("sudo -u postgres psql -v ON_ERROR_STOP=1 -d chat -c 'CREATE ROLE \"chat-backend\" LOGIN' "
         "-c 'REASSIGN OWNED BY chat TO \"chat-backend\"' -c 'ALTER DATABASE chat OWNER TO \"chat-backend\"'")
    set_env(c, "DATABASE_URL", PG_SOCKET_URL)
    c.sh("systemctl restart chat-backend.service")
    wait_health()
    assert storage()["backend"] == "postgres"
    assert contents(state["token"], state["session"]) == state["messages"]
    state["messages"].append(send(state["token"], state["session"], "stored in Postgres over the unix socket")["content"])
    assert c.sh("sudo -u postgres psql -At -d chat -c 'SELECT count(*) FROM chat_messages'").stdout.strip() == str(len(state["messages"]))


def test_remove_keeps_data_and_purge_leaves_nothing(container: Container):
    c = container
    c.sh("apt-get remove -y -q chat-backend", timeout=600)
    assert unit(c, "is-active") == "inactive"
    assert unit(c, "is-active", "chat-backend.socket") == "inactive"
    assert c.sh("grep -lx chat-backend /proc/[0-9]*/comm", check=False).stdout == "", "a chat-backend process is left"
    assert c.sh("test -e /usr/bin/chat-backend", check=False).returncode == 1
    for kept in (f"{STATE}/chat.db", f"{STATE}/jwt-secret", ENV_FILE):
        assert c.sh(f"test -f {kept}", check=False).returncode == 0, f"remove deleted {kept}"
    assert "DATABASE_URL=" in c.sh(f"cat {ENV_FILE}").stdout, "the edited settings are kept"

    c.sh("apt-get purge -y -q chat-backend", timeout=600)
    c.sh("systemctl daemon-reload")
    assert c.sh("dpkg-query -W -f='${Status}' chat-backend", check=False).stdout.strip() in ("", "unknown ok not-installed")
    leftovers = c.sh("find / -xdev \\( -name 'chat-backend*' -o -user chat-backend \\) -print "
                     "| grep -v '^/root/debs/'", check=False).stdout.split()
    assert leftovers == [], f"purge left behind: {leftovers}"
    assert c.sh("systemctl list-unit-files --no-legend 'chat-backend*'", check=False).stdout.strip() == ""
    # The system user stays, as Debian leaves system users (no later user may inherit its files).
    assert c.sh("getent passwd chat-backend", check=False).returncode == 0
    # The Postgres database is the administrator's: untouched.
    assert c.sh("sudo -u postgres psql -At -d chat -c 'SELECT count(*) FROM users'").stdout.strip() == "1"


def test_upgrade_from_previous_version_keeps_data(container: Container, deb: Path):
    c = container
    with tempfile.TemporaryDirectory() as tmp:
        previous = build_previous(deb, Path(tmp))
        path = c.put(previous, f"/root/debs/{previous.name}")
    apt_install(c, path)
    c.sh(f"dpkg --compare-versions {installed_version(c)} lt {state['version']}")
    wait_health()
    user = e2e.register(svc)
    token = user["accessToken"]
    session_id = e2e.create_session(svc, token)["sessionId"]
    sent = [send(token, session_id, f"before the upgrade {i}")["content"] for i in range(3)]
    # Local changes the upgrade must keep (and room for the request loop below).
    set_env(c, "RATE_LIMIT_API", "off")
    set_env(c, "RATE_LIMIT_MESSAGES", "off")
    c.sh("systemctl stop chat-backend.service && systemctl enable --now chat-backend.socket")
    wait_health()
    before = main_pid(c)

    # Upgrade while clients keep sending: with the socket enabled, not one request may fail.
    loop = RequestLoop(token, session_id, "upgrade")
    loop.start()
    try:
        time.sleep(1)
        apt_install(c, f"/root/debs/{deb.name}")
        time.sleep(1.5)
    finally:
        loop.finish()
    log(f"request loop across the upgrade: {loop.ok} answered, {len(loop.failures)} failed")
    assert not loop.failures, "\n".join(loop.failures[:20])

    assert installed_version(c) == state["version"]
    assert main_pid(c) != before, "the upgrade restarts the service on the new binary"
    assert unit(c, "is-enabled") == "enabled"
    assert unit(c, "is-enabled", "chat-backend.socket") == "enabled"
    settings = c.sh(f"cat {ENV_FILE}").stdout
    assert "RATE_LIMIT_API=off" in settings and "RATE_LIMIT_MESSAGES=off" in settings
    assert stat(c, ENV_FILE) == "root chat-backend 640"
    assert contents(token, session_id) == sent + loop.sent
