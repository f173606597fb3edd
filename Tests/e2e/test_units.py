"""The unit files in systemd/ are valid and hardened (`systemd-analyze`, offline)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")


def units_with_binary(tmp_path: Path, bin_path: str) -> Path:
    """Copies the units with ExecStart pointing at the built binary, since /usr/bin/chat-backend may not exist here."""
    for name in ("chat-backend.service", "chat-backend.socket"):
        text = (ROOT / "systemd" / name).read_text()
        (tmp_path / name).write_text(text.replace("/usr/bin/chat-backend", bin_path))
    return tmp_path


def test_units_verify(tmp_path, bin_path):
    d = units_with_binary(tmp_path, bin_path)
    r = subprocess.run(
        # --man=no: the units name the man page chat-backend(1), which only the package installs
        # (the system test checks it is there).
        ["systemd-analyze", "verify", "--man=no", str(d / "chat-backend.service"), str(d / "chat-backend.socket")],
        capture_output=True, text=True,
    )
    # Clean means no output at all: verify prints every warning it has about the units.
    problems = [line for line in (r.stdout + r.stderr).splitlines() if "chat-backend." in line]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr


def test_service_is_notify_with_watchdog_and_socket_pairs():
    service = (ROOT / "systemd" / "chat-backend.service").read_text()
    socket_unit = (ROOT / "systemd" / "chat-backend.socket").read_text()
    assert re.search(r"^Type=notify$", service, re.M)
    assert re.search(r"^WatchdogSec=\S+", service, re.M)
    assert re.search(r"^ExecStart=/usr/bin/chat-backend serve", service, re.M)
    assert re.search(r"^ListenStream=3006$", socket_unit, re.M)


def test_service_exposure_is_low():
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(ROOT / "systemd" / "chat-backend.service")],
        capture_output=True, text=True,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.0, r.stdout
