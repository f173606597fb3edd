#!/usr/bin/env python3
"""make bench: wrk on loopback against a release chat-backend, on SQLite and on Postgres.

Scenarios (each beside a bare GET /health in the same run):
  - POST /api/sessions/:id/messages  (persisted: SQLite synchronous=FULL / Postgres fsync on; rate limits off)
  - GET  /api/sessions/:id/messages?limit=50
Prints requests/s, p50/p99 latency and the ratio to /health as a Markdown table per backend; then
10 MiB attachment uploads (one at a time, and four at once) and downloads, in MiB/s, with how much
the server's resident memory grew meanwhile.
`scripts/bench.py sqlite` or `scripts/bench.py postgres` runs one; no argument runs both.
The Postgres run starts a throwaway PostgreSQL with scripts/pg-test.sh on port 54331.
"""
import json
import os
import re
import shutil
import subprocess
import sys

from benchlib import BIN, request, running_server
DURATION = os.environ.get("BENCH_DURATION", "10s")
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "64"))
THREADS = int(os.environ.get("BENCH_THREADS", "2"))


def parse_wrk(text):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    lat = {}
    for pct, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M):
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
        lat[pct] = float(value) * scale
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        errors += sum(int(x) for x in m.groups())
    return rps, lat, errors


def wrk(url, script=None):
    cmd = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{DURATION}", "--latency"]
    if script:
        cmd += ["-s", script]
    cmd.append(url)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return parse_wrk(out)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PG_ENV = dict(os.environ, PGTEST_DIR="/tmp/chat-backend-bench-pg", PGTEST_PORT="54331")


def main():
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install wrk)")
    backends = sys.argv[1:] or ["sqlite", "postgres"]
    failed = 0
    for backend in backends:
        if backend == "postgres":
            conninfo = subprocess.run([os.path.join(ROOT, "scripts", "pg-test.sh"), "start"], env=PG_ENV,
                                      capture_output=True, text=True, check=True).stdout.strip()
            try:
                failed += run(backend, conninfo)
            finally:
                subprocess.run([os.path.join(ROOT, "scripts", "pg-test.sh"), "stop"], env=PG_ENV, check=False)
        else:
            failed += run(backend, None)
    if failed:
        sys.exit(f"{failed} failed requests")


UPLOAD_MIB = 10
UPLOAD_ROUNDS = 8
UPLOAD_PARALLEL = 4


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def upload_bench(base, token, session, server):
    """Rows (scenario, MiB/s median, slowest seconds, peak RSS growth in MiB) for 10 MiB uploads and downloads."""
    import http.client
    import statistics
    import threading
    import time
    from urllib.parse import urlparse

    host, port = urlparse(base).hostname, urlparse(base).port
    body = os.urandom(UPLOAD_MIB << 20)

    def upload():
        conn = http.client.HTTPConnection(host, port, timeout=120)
        started = time.perf_counter()
        conn.request("POST", f"/api/sessions/{session}/attachments?filename=bench.bin", body=body,
                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"})
        response = conn.getresponse()
        answer = response.read()
        conn.close()
        if response.status != 201:
            raise SystemExit(f"upload failed: {response.status} {answer[:200]!r}")
        return time.perf_counter() - started, json.loads(answer)["id"]

    def download(attachment):
        conn = http.client.HTTPConnection(host, port, timeout=120)
        started = time.perf_counter()
        conn.request("GET", f"/api/attachments/{attachment}", headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        data = response.read()
        conn.close()
        if response.status != 200 or len(data) != len(body):
            raise SystemExit(f"download failed: {response.status}, {len(data)} bytes")
        return time.perf_counter() - started

    peak = [0.0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mib(server.pid))
            time.sleep(0.01)

    def measured(work):
        base_rss = rss_mib(server.pid)
        peak[0] = base_rss
        stop.clear()
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            result = work()
        finally:
            stop.set()
            sampler.join()
        return result, peak[0] - base_rss

    upload()  # warm-up
    (timed, growth) = measured(lambda: [upload() for _ in range(UPLOAD_ROUNDS)])
    times = [t for t, _ in timed]
    ids = [i for _, i in timed]
    rows = [("upload, one at a time", UPLOAD_MIB / statistics.median(times), max(times), growth)]

    def parallel():
        results = [None] * UPLOAD_PARALLEL
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, upload())) for i in range(UPLOAD_PARALLEL)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results
    started = time.perf_counter()
    (together, growth) = measured(parallel)
    elapsed = time.perf_counter() - started
    rows.append((f"upload, {UPLOAD_PARALLEL} at once (together)", UPLOAD_PARALLEL * UPLOAD_MIB / elapsed, max(t for t, _ in together), growth))
    (downloads, growth) = measured(lambda: [download(i) for i in ids])
    rows.append(("download, one at a time", UPLOAD_MIB / statistics.median(downloads), max(downloads), growth))
    return rows


def run(backend, conninfo):
    settings = {"SQLITE_SYNCHRONOUS": "FULL", "ATTACHMENT_QUOTA": "off"}
    if conninfo:
        settings["DATABASE_URL"] = conninfo
    with running_server(**settings) as (base, server, work):
        auth = request("POST", base + "/auth/register", {"username": "bench", "password": "bench-password"})
        token = auth["accessToken"]
        session = request("POST", base + "/api/sessions", {}, token)["sessionId"]
        for i in range(100):
            request("POST", f"{base}/api/sessions/{session}/messages", {"content": f"seed {i}"}, token)

        post_lua = os.path.join(work, "post.lua")
        with open(post_lua, "w") as f:
            f.write(
                'wrk.method = "POST"\n'
                'wrk.headers["Content-Type"] = "application/json"\n'
                f'wrk.headers["Authorization"] = "Bearer {token}"\n'
                'wrk.body = \'{"content":"hello from wrk, a message of ordinary length for a chat"}\'\n'
            )
        get_lua = os.path.join(work, "get.lua")
        with open(get_lua, "w") as f:
            f.write(f'wrk.headers["Authorization"] = "Bearer {token}"\n')

        # /health runs before and after the measured routes; ratios use their mean, since one /health run
        # alone varies by 20% here (wrk shares the two cores with the server).
        health = wrk(base + "/health")
        post = wrk(f"{base}/api/sessions/{session}/messages", post_lua)
        health2 = wrk(base + "/health")
        get = wrk(f"{base}/api/sessions/{session}/messages?limit=50", get_lua)
        baseline = (health[0] + health2[0]) / 2
        rows = [
            ("GET /health", health, None),
            ("POST /api/sessions/:id/messages", post, post[0] / baseline),
            ("GET /health (again)", health2, None),
            ("GET /api/sessions/:id/messages?limit=50", get, get[0] / baseline),
        ]

        uploads = upload_bench(base, token, session, server)
        stats = request("GET", base + "/api/status")["statistics"]
        store = "SQLite synchronous=FULL" if backend == "sqlite" else "PostgreSQL (fsync on, synchronous_commit on)"
        print(f"\n## {backend}\n\nwrk -t{THREADS} -c{CONNECTIONS} -d{DURATION} --latency, server {BIN}, {store}, rate limits off\n")
        print(f"ratio: requests/s over the mean of the two /health runs ({baseline:,.0f}/s)\n")
        print("| scenario | requests/s | p50 ms | p99 ms | errors | ratio to /health |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, (rps, lat, errors), ratio in rows:
            print(f"| {name} | {rps:,.0f} | {lat.get('50', 0):.2f} | {lat.get('99', 0):.2f} | {errors} | {'' if ratio is None else f'{ratio:.0%}'} |")
        print(f"\nmessages stored during the run: {stats['messages']:,}")
        print(f"\nattachments, {UPLOAD_MIB} MiB of random bytes each, {UPLOAD_ROUNDS} uploads one after another, then "
              f"{UPLOAD_PARALLEL} at once (POST /api/sessions/:id/attachments, raw body), and downloads (GET /api/attachments/:id):\n")
        print("| scenario | MiB/s (median) | slowest s | server RSS growth MiB |")
        print("|---|---:|---:|---:|")
        for name, rate, slowest, growth in uploads:
            print(f"| {name} | {rate:,.0f} | {slowest:.2f} | {growth:,.0f} |")
        # The targets the product promises (BENCHMARKS.md).
        send_ratio, send_p99, read_ratio = rows[1][2], post[1].get("99", 0), rows[3][2]
        if backend == "sqlite":
            met = send_ratio >= 0.45 and send_p99 <= 10
            print(f"target (sends >= 45% of /health, p99 <= 10 ms): {'met' if met else 'MISSED'} ({send_ratio:.0%}, p99 {send_p99:.2f} ms)")
            met = read_ratio >= 0.20
            print(f"target (50-message reads >= 20% of /health): {'met' if met else 'MISSED'} ({read_ratio:.0%})")
        else:
            met = send_ratio >= 0.30
            print(f"target (sends >= 30% of /health): {'met' if met else 'MISSED'} ({send_ratio:.0%})")
        return sum(r[1][2] for r in rows)


if __name__ == "__main__":
    main()
