#!/usr/bin/env python3
"""Where a persisted send and a 50-message history read spend their time (`make profile`).

Runs the release server on SQLite (synchronous=FULL), drives one scenario with wrk as
scripts/bench.py does, samples the server with `perf record` meanwhile, and prints the heaviest
functions (self time, Swift names demangled) and the share of time per area of the code.
`scripts/profile.py send` or `scripts/profile.py history` runs one; no argument runs both.
"""
import os
import re
import subprocess
import sys
import tempfile

from benchlib import request, running_server

DURATION = os.environ.get("PROFILE_DURATION", "8")
TOP = int(os.environ.get("PROFILE_TOP", "25"))

# Areas by symbol name (first match wins): what a reader of BENCHMARKS.md can act on.
AREAS = [
    ("kernel: network, futex, scheduling", r"^\[k\]|^entry_|^__x64_sys|^do_syscall|tcp_|futex|schedule"),
    ("SQLite", r"sqlite3|^pager|^btree|^vdbe|Vdbe|^walIndex|^wal[A-Z]"),
    ("fsync (kernel)", r"fsync|jbd2|ext4_"),
    ("Storage (Swift)", r"\bStorage\.|SQLite(Writer|Readers|Connection|Store)"),
    ("Swift concurrency, executors", r"swift::AsyncTask|swift_task|Executor|withStatusRecordLock|swift_job|_Concurrency"),
    ("JSON, models", r"JSON|Service\.API|ServerEvent|JSONWriter"),
    ("auth (JWT, HMAC)", r"JWT|HMAC|TokenService|Crypto|sha256|SHA256"),
    ("routing, middleware", r"Hummingbird|Router|Middleware|Trie"),
    ("HTTP parsing, NIO", r"NIO|llhttp|ByteBuffer|HTTPConnectionHandler|ChannelPipeline|epoll"),
    ("libc locks, threads", r"pthread|__lll|futex|sem_"),
    ("Swift runtime, allocation", r"swift_|swift::|malloc|free|_int_|memcpy|memmove|unlink_chunk|Swift\.|retain|release|getCache|Metadata"),
]


def profile(name, base, token, session, work):
    if name == "send":
        script = ('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                  f'wrk.headers["Authorization"] = "Bearer {token}"\n'
                  'wrk.body = \'{"content":"hello from wrk, a message of ordinary length for a chat"}\'\n')
        url = f"{base}/api/sessions/{session}/messages"
    else:
        script = f'wrk.headers["Authorization"] = "Bearer {token}"\n'
        url = f"{base}/api/sessions/{session}/messages?limit=50"
    lua = os.path.join(work, f"{name}.lua")
    with open(lua, "w") as f:
        f.write(script)
    return lua, url


def report(data):
    out = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "symbol",
                          "--percent-limit", "0.05", "-g", "none"], capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s+([\d.]+)%\s+\[(.)\]\s+(.*)$", line)
        if m:
            rows.append((float(m.group(1)), m.group(2), m.group(3).strip()))
    names = subprocess.run(["swift", "demangle", "--compact"], input="\n".join(r[2] for r in rows),
                           capture_output=True, text=True).stdout.splitlines()
    if len(names) != len(rows):
        names = [r[2] for r in rows]
    return [(pct, kind, name.strip()) for (pct, kind, _), name in zip(rows, names)]


def by_library(data):
    out = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "dso", "-g", "none"],
                         capture_output=True, text=True).stdout
    return [(float(m.group(1)), m.group(2).strip()) for m in re.finditer(r"^\s+([\d.]+)%\s+(\S.*)$", out, re.M)]


def main():
    scenarios = sys.argv[1:] or ["send", "history"]
    with running_server(SQLITE_SYNCHRONOUS="FULL") as (base, server, work):
        token = request("POST", base + "/auth/register", {"username": "prof", "password": "prof-password"})["accessToken"]
        session = request("POST", base + "/api/sessions", {}, token)["sessionId"]
        for i in range(100):
            request("POST", f"{base}/api/sessions/{session}/messages", {"content": f"seed {i}"}, token)
        for name in scenarios:
            lua, url = profile(name, base, token, session, work)
            data = os.path.join(work, f"{name}.perf")
            perf = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-o", data, "-p", str(server.pid), "--", "sleep", DURATION],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            subprocess.run(["wrk", "-t2", "-c64", f"-d{DURATION}s", "-s", lua, url], capture_output=True, check=True)
            perf.wait()
            rows = report(data)
            areas = {}
            for pct, kind, sym in rows:
                key = "kernel: network, futex, scheduling" if kind == "k" else next(
                    (area for area, pattern in AREAS if re.search(pattern, sym)), "other")
                if kind == "k" and re.search(r"fsync|jbd2|ext4_|blk_|nvme|submit_bio", sym):
                    key = "fsync (kernel)"
                areas[key] = areas.get(key, 0) + pct
            print(f"\n## {name}: {url.replace(base, '')}\n")
            print("| area | share of server CPU samples |\n|---|---:|")
            for area, pct in sorted(areas.items(), key=lambda kv: -kv[1]):
                print(f"| {area} | {pct:.1f}% |")
            print("\n| library | share |\n|---|---:|")
            for pct, dso in by_library(data)[:8]:
                print(f"| {dso} | {pct:.1f}% |")
            print(f"\nheaviest functions (self):\n")
            for pct, kind, sym in rows[:TOP]:
                print(f"    {pct:5.1f}%  {'[k] ' if kind == 'k' else ''}{sym[:140]}")


if __name__ == "__main__":
    main()
