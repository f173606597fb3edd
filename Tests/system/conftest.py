"""A Debian 12 container booted with systemd, for installing and driving the chat-backend package.

The root file system comes from debootstrap, made once and kept as a tar file in
$CHAT_SYSTEM_TEST_CACHE (default /var/cache/chat-backend-test); every run unpacks a pristine copy,
boots it with `systemd-nspawn --boot` and enters it with `nsenter`. The container shares the
host's network, so the service it runs answers on the host's 127.0.0.1:3006. See DEVELOPERS.md.

`CHAT_BACKEND_DEB` names the package to test (`make test-system` builds it and sets it).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("CHAT_SYSTEM_TEST_CACHE", "/var/cache/chat-backend-test"))
WORK = Path(os.environ.get("CHAT_SYSTEM_TEST_WORK", "/var/tmp/chat-backend-system-test"))
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
# In the image: what a minimal server has (systemd-sysv: /sbin/init, which invoke-rc.d looks for
# before it starts a service), plus sudo (the README's commands use it).
INCLUDE = ["systemd", "systemd-sysv", "dbus", "sudo", "ca-certificates"]
HOSTNAME = "chat-backend-test"
# Downloaded into the image's apt cache, so that installing them during a run needs no download
# when the mirror still has the same versions. apt still resolves and installs them in the test.
PREFETCH = ["libpq5", "libsqlite3-0", "libssl3", "postgresql"]
SOURCES = (
    f"deb {MIRROR} {SUITE} main\n"
    f"deb {MIRROR} {SUITE}-updates main\n"
    f"deb http://deb.debian.org/debian-security {SUITE}-security main\n"
)
CACHE_MAX_AGE_DAYS = 30
PORTS = {3006: "chat-backend", 5432: "PostgreSQL in the container"}
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def log(message: str) -> None:
    print(f"[system-test {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(cmd: list[str], timeout: float = 600, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and r.returncode != 0:
        raise AssertionError(f"{shlex.join(cmd)} exited {r.returncode}\n--- stdout ---\n{r.stdout}\n--- stderr ---\n{r.stderr}")
    return r


# ---- the cached root file system ----------------------------------------------------------------------------

def image_path() -> Path:
    key = hashlib.sha256(repr((SUITE, MIRROR, INCLUDE, PREFETCH, SOURCES, HOSTNAME)).encode()).hexdigest()[:12]
    return CACHE / f"{SUITE}-minbase-{key}.tar"


def chroot(root: Path, command: str, timeout: float = 900) -> None:
    run(["chroot", str(root), "/usr/bin/env", "-i", f"PATH={PATH}", "DEBIAN_FRONTEND=noninteractive",
         "LC_ALL=C.UTF-8", "/bin/sh", "-ec", command], timeout=timeout)


def ensure_image() -> Path:
    """The debootstrap tree as a tar file: made when missing or older than CACHE_MAX_AGE_DAYS."""
    image = image_path()
    if image.exists() and time.time() - image.stat().st_mtime < CACHE_MAX_AGE_DAYS * 86400:
        return image
    CACHE.mkdir(parents=True, exist_ok=True)
    build = CACHE / "build"
    shutil.rmtree(build, ignore_errors=True)
    log(f"making the Debian {SUITE} image with debootstrap (cached as {image})")
    started = time.monotonic()
    run(["debootstrap", "--variant=minbase", f"--include={','.join(INCLUDE)}", SUITE, str(build), MIRROR],
        timeout=1200)
    (build / "etc/apt/sources.list").write_text(SOURCES)
    # The apt lists and the prefetched packages come from the image's own apt, as on a server.
    shutil.copy("/etc/resolv.conf", build / "etc/resolv.conf")
    chroot(build, f"apt-get update -qq && apt-get install -y -qq --download-only {' '.join(PREFETCH)}")
    (build / "etc/hostname").write_text(f"{HOSTNAME}\n")
    (build / "etc/hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    tmp = image.with_suffix(".tmp")
    run(["tar", "-C", str(build), "-cf", str(tmp), "."], timeout=600)
    tmp.rename(image)
    shutil.rmtree(build, ignore_errors=True)
    for old in CACHE.glob(f"{SUITE}-minbase-*.tar"):
        if old != image:
            old.unlink()
    log(f"image made in {time.monotonic() - started:.0f}s")
    return image


# ---- the booted container -----------------------------------------------------------------------------------

def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Container:
    """A booted copy of the image; `sh(...)` runs a command inside it as root."""

    def __init__(self, root: Path):
        self.root = root
        self.proc: subprocess.Popen | None = None
        self.pid = 0  # the container's init (its systemd), as seen from the host
        self.boot_log = root.parent / "boot.log"
        self.mounted_nspawn_tmpfs = False

    def boot(self) -> None:
        # systemd-nspawn keeps state in /run/systemd/nspawn; without systemd on the host, give it a tmpfs.
        nspawn_dir = Path("/run/systemd/nspawn")
        nspawn_dir.mkdir(parents=True, exist_ok=True)
        if subprocess.run(["mountpoint", "-q", str(nspawn_dir)]).returncode != 0:
            run(["mount", "-t", "tmpfs", "tmpfs", str(nspawn_dir)])
            self.mounted_nspawn_tmpfs = True
        log_file = open(self.boot_log, "wb")
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "-D", str(self.root), "--register=no", "--keep-unit", "--boot",
             "--console=read-only", "--resolv-conf=copy-host", "--timezone=off"],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            # At normal priority, as a server runs, even when the test runs under nice: a service
            # at nice > 0 may not give its threads the default priority (libdispatch logs EACCES).
            preexec_fn=lambda: os.setpriority(os.PRIO_PROCESS, 0, 0))
        log_file.close()
        deadline = time.monotonic() + 60
        while not self.pid:
            if self.proc.poll() is not None:
                raise AssertionError(f"systemd-nspawn exited with {self.proc.returncode}:\n{self.boot_log.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the container's init did not start:\n{self.boot_log.read_text(errors='replace')}")
            self.pid = self._init_pid()
            time.sleep(0.1)
        # Right after its PID 1 appears, the container's systemd may not yet listen on its private
        # socket, and `systemctl` then fails at once with nothing on stdout: ask again until it answers.
        deadline = time.monotonic() + 120
        while True:
            answer = self.sh("systemctl is-system-running --wait", check=False, timeout=120)
            state = answer.stdout.strip()
            if state or time.monotonic() > deadline or self.proc.poll() is not None:
                break
            time.sleep(0.5)
        if state not in ("running", "degraded"):
            raise AssertionError(f"the container did not boot ({state or answer.stderr.strip()}):\n"
                                 f"{self.boot_log.read_text(errors='replace')}")
        if state == "degraded":
            log("container booted degraded: " + self.sh("systemctl --failed --no-legend", check=False).stdout.strip())

    def _init_pid(self) -> int:
        """The nspawn process's child whose command is systemd: the container's PID 1."""
        for child in Path(f"/proc/{self.proc.pid}/task").glob("*/children"):
            for pid in child.read_text().split():
                try:
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                        return int(pid)
                except FileNotFoundError:
                    pass
        return 0

    def sh(self, command: str, check: bool = True, timeout: float = 300, input: str | None = None) -> subprocess.CompletedProcess:
        """Runs a shell command in the container (all its namespaces, a clean environment)."""
        return run(["nsenter", "-t", str(self.pid), "-a", "/usr/bin/env", "-i", f"PATH={PATH}", "LC_ALL=C.UTF-8",
                    "DEBIAN_FRONTEND=noninteractive", "/bin/sh", "-c", command],
                   check=check, timeout=timeout, input=input)

    def put(self, source: Path, dest: str) -> str:
        """Copies a host file into the container's file system; returns its path inside."""
        target = self.root / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
        return dest

    def journal(self, lines: int = 300) -> str:
        if not self.pid:
            return "(the container is not running)"
        r = self.sh(f"journalctl --no-pager -o short-precise -n {lines} -u chat-backend.service -u chat-backend.socket",
                    check=False, timeout=60)
        return r.stdout + r.stderr

    def shutdown(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to power off
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self.pid = 0
        if self.mounted_nspawn_tmpfs:
            subprocess.run(["umount", "/run/systemd/nspawn"], check=False)
            self.mounted_nspawn_tmpfs = False


@pytest.fixture(scope="session")
def deb() -> Path:
    path = os.environ.get("CHAT_BACKEND_DEB")
    if not path or not Path(path).is_file():
        pytest.fail("CHAT_BACKEND_DEB must name the built .deb; run `make test-system`")
    return Path(path).resolve()


@pytest.fixture(scope="session")
def container() -> Container:
    if os.geteuid() != 0:
        pytest.fail("the system test needs root (debootstrap, systemd-nspawn); run `sudo make test-system`")
    for tool in ("debootstrap", "systemd-nspawn", "nsenter", "chroot"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (make test-system installs debootstrap and systemd-container)")
    busy = [f"{port} ({what})" for port, what in PORTS.items() if port_in_use(port)]
    if busy:
        pytest.fail("the container shares the host's network, and these ports are in use on 127.0.0.1: " + ", ".join(busy))
    image = ensure_image()
    shutil.rmtree(WORK, ignore_errors=True)
    rootfs = WORK / "root"
    rootfs.mkdir(parents=True)
    started = time.monotonic()
    run(["tar", "-C", str(rootfs), "-xf", str(image)], timeout=600)
    box = Container(rootfs)
    try:
        box.boot()
        log(f"container booted in {time.monotonic() - started:.0f}s (unpacked from {image.name})")
        yield box
    finally:
        box.shutdown()
        shutil.rmtree(WORK, ignore_errors=True)


# ---- step by step: later steps build on earlier ones, so after a failure the rest are skipped -------------

_failed: dict[str, str] = {}
_container: list[Container] = []


@pytest.fixture(autouse=True)
def _remember_container(request):
    if "container" in request.fixturenames:
        _container[:] = [request.getfixturevalue("container")]
    yield


def pytest_runtest_setup(item):
    if _failed:
        pytest.skip(f"an earlier step failed: {next(iter(_failed))}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when in ("setup", "call"):
        _failed[item.name] = report.longreprtext[:200]
        if _container and _container[0].pid:
            report.sections.append(("journal of chat-backend in the container", _container[0].journal()))
