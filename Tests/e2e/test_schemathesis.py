"""openapi.yaml against the server: the document is valid OpenAPI, and a bounded Schemathesis run finds nothing.

Schemathesis (the `st` CLI, pinned in requirements.txt) generates requests from the repository's
openapi.yaml (not the copy the binary embeds, so an edit of the document is tested without a
rebuild) and checks every response against it (`--checks all`: no 5xx, documented status codes,
content types, headers and bodies, schema-valid input accepted, schema-invalid input refused, auth
enforced, 405 with `Allow` for undocumented methods, ...), in the examples, coverage, fuzzing and
stateful phases. It runs three times against one fresh server with rate limits off:

* as a normal user (a fresh registration), every operation but `POST /auth/logout`;
* as an admin (created with `chat-backend user add --admin`), every operation that reads the token
  (everything under `/api/`). The others (`/health`, `/openapi.yaml`, register, login, refresh)
  ignore the `Authorization` header, so with the same seed an admin run of them would repeat the
  user run's requests, and sign-ins are the slowest operations (every one hashes a password);
* `POST /auth/logout` alone, with a throw-away user's token: logout revokes the token it is called
  with, so it cannot share a token with the other runs.

Runs are deterministic: a fixed seed, one worker, no example database, an empty cache and a fresh
database each time (Tests/e2e/schemathesis.toml says why each matters). They are bounded by
`--max-examples`, not by time, so they find the same things on a slow machine; a hard timeout guards
against a hang. The bar is zero failures: a failure is a server bug or a wrong document, to be fixed
there. Everything a run wrote (output, JUnit, JSON report, crash files for `st replay`) stays in its
directory under pytest's tmp_path, printed on failure.

Environment, for experiments only (CI uses the defaults): ST_SEED (default 20261202), ST_MAX_EXAMPLES
(default 150) and ST_RUN_TIMEOUT (seconds per run, default 300).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, Server, post_json, register, run_cli, unique_name

SCHEMA = ROOT / "openapi.yaml"
CONFIG = Path(__file__).with_name("schemathesis.toml")
SEED = int(os.environ.get("ST_SEED", "20261202"))
MAX_EXAMPLES = int(os.environ.get("ST_MAX_EXAMPLES", "150"))
RUN_TIMEOUT = float(os.environ.get("ST_RUN_TIMEOUT", "300"))
ALL_PHASES = "examples,coverage,fuzzing,stateful"
# Operations that ignore an `Authorization` header (openapi.yaml, "Authentication").
TOKEN_IGNORED = ("getLiveness", "getOpenAPIDocument", "register", "login", "refreshTokens")


def st_executable() -> str:
    """The `st` of the interpreter running the tests (the e2e venv), else one on PATH."""
    candidate = Path(sys.executable).with_name("st")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("st")
    if not found:
        pytest.fail("the Schemathesis CLI `st` is not installed: pip install -r Tests/e2e/requirements.txt")
    return found


def test_openapi_document_is_valid():
    """openapi.yaml is a valid OpenAPI 3.0 document (the checks of openapi-spec-validator)."""
    from openapi_spec_validator import validate
    from openapi_spec_validator.readers import read_from_filename

    document, _ = read_from_filename(str(SCHEMA))
    assert str(document["openapi"]).startswith("3.0."), document["openapi"]
    validate(document)


def add_admin(server: Server) -> str:
    """Creates an admin with the CLI (as an operator would) and returns its access token."""
    name, password = unique_name("st_admin"), "schemathesis-admin-password"
    database = server.database_url or f"sqlite://{server.db_path}"
    r = run_cli(server.bin_path, ["user", "add", name, "--admin", "--password-stdin", "--database-url", database],
                server.dir, server.env, input=password + "\n")
    assert r.returncode == 0, r.stdout + r.stderr
    r = post_json(server.url("/auth/login"), {"username": name, "password": password})
    assert r.status_code == 200, r.text
    return r.json()["accessToken"]


def run_st(server: Server, directory: Path, token: str, phases: str, *selection: str) -> tuple[int, str]:
    """Runs `st run` once in `directory` (its cache, reports and output stay there).

    Returns the exit code and a description of the run for an assertion message: the command, the
    failures Schemathesis printed and the failure groups of its JSON report.
    """
    directory.mkdir(parents=True)
    command = [
        st_executable(), "--config-file", str(CONFIG), "run", str(SCHEMA),
        "--url", server.base_url,
        "-H", f"Authorization: Bearer {token}",
        "--checks", "all",
        "--phases", phases,
        "--seed", str(SEED),
        "--workers", "1",
        "--max-examples", str(MAX_EXAMPLES),
        "--request-timeout", "5",
        "--report", "junit,json",
        "--report-junit-path", str(directory / "junit.xml"),
        "--report-json-path", str(directory / "report.json"),
        "--no-color",
        *selection,
    ]
    shown = " ".join(shlex.quote(part) for part in command).replace(token, "$TOKEN")
    (directory / "command.txt").write_text(shown + "\n")
    # Nothing from the developer's shell may steer Schemathesis or Hypothesis.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCHEMATHESIS_", "HYPOTHESIS_"))}
    env.update({"NO_COLOR": "1", "COLUMNS": "120", "PYTHONUNBUFFERED": "1"})
    output_path = directory / "output.txt"
    started = time.monotonic()
    with open(output_path, "w") as output:
        try:
            code = subprocess.run(command, cwd=directory, env=env, stdout=output, stderr=subprocess.STDOUT,
                                  timeout=RUN_TIMEOUT).returncode
        except subprocess.TimeoutExpired:
            code = None
    elapsed = time.monotonic() - started
    text = output_path.read_text(errors="replace")
    if code is None:
        return -1, (f"{shown}\nkilled after {RUN_TIMEOUT:.0f}s (ST_RUN_TIMEOUT); output so far in {output_path}:\n"
                    f"{text[-4000:]}")
    return code, f"{shown}\nexit {code} in {elapsed:.0f}s; everything in {directory}\n{failure_summary(text, directory)}"


def failure_summary(output: str, directory: Path) -> str:
    """What Schemathesis printed from its FAILURES (or ERRORS) section on, and its report's failure groups."""
    start = min((i for i in (output.find("=== FAILURES ==="), output.find("=== ERRORS ===")) if i >= 0),
                default=output.find("=== SUMMARY ==="))
    printed = output[output.rfind("\n", 0, start) + 1:] if start >= 0 else output[-4000:]
    if len(printed) > 30000:
        printed = printed[:30000] + f"\n[... cut; see {directory / 'output.txt'}]"
    groups = []
    report = directory / "report.json"
    if report.exists():
        data = json.loads(report.read_text())
        for failure in data.get("failures", []):
            groups.append(f"  {failure.get('code')} {failure.get('title')} x{failure.get('count')}: "
                          f"{', '.join(failure.get('operations', []))}")
        for error in data.get("errors", []):
            groups.append(f"  error: {json.dumps(error)[:500]}")
    return printed + ("\nfailure groups (report.json):\n" + "\n".join(groups) if groups else "")


def excluding(*operation_ids: str) -> list[str]:
    return [arg for operation_id in operation_ids for arg in ("--exclude-operation-id", operation_id)]


def test_schemathesis_finds_nothing(start_server, tmp_path):
    server = start_server(env={"JWT_ACCESS_TTL": "1h"}, name="server")
    user_token = register(server, unique_name("st_user"))["accessToken"]
    admin_token = add_admin(server)
    logout_token = register(server, unique_name("st_logout"))["accessToken"]

    runs = [
        ("user", user_token, ALL_PHASES, excluding("logout")),
        ("admin", admin_token, ALL_PHASES, excluding("logout", *TOKEN_IGNORED)),
        # The first 204 revokes the token; every later call must then get the documented 401.
        ("logout", logout_token, "examples,coverage,fuzzing", ["--include-operation-id", "logout"]),
    ]
    results = [(label, *run_st(server, tmp_path / f"st-{label}", token, phases, *selection))
               for label, token, phases, selection in runs]

    failed = [f"===== {label} run =====\n{description}" for label, code, description in results if code != 0]
    assert not failed, "Schemathesis found failures:\n\n" + "\n\n".join(failed)
