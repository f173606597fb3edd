#!/usr/bin/env python3
"""Realtime benchmark (part of `make bench`): fan-out over /ws and memory per idle connection.

1. Fan-out: 1,000 WebSocket clients in 100 sessions (10 per session); one client per session sends
   at a steady rate; reports messages delivered per second and send→receive latency (p50/p99).
   One run per rate in BENCH_RT_RATES (messages/s per session): rates the single Python client process
   keeps up with give the server's latency; the highest one saturates the client (throughput).
2. Idle connections: opens 10,000 authenticated, joined connections and reports the server's RSS
   growth per connection, once over /ws and once over Socket.IO's WebSocket transport (Engine.IO
   open, CONNECT with the token, a `join` with an ack).
"""
import asyncio
import json
import os
import random
import resource
import time

import websockets

from benchlib import request, running_server
SESSIONS = int(os.environ.get("BENCH_RT_SESSIONS", "100"))
PER_SESSION = int(os.environ.get("BENCH_RT_PER_SESSION", "10"))
RATES = [float(r) for r in os.environ.get("BENCH_RT_RATES", "5,10,20").split(",")]  # messages/s per session
SECONDS = float(os.environ.get("BENCH_RT_SECONDS", "10"))
IDLE = int(os.environ.get("BENCH_RT_IDLE", "10000"))


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, 65536)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def open_client(url, token, session):
    ws = await websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}, max_queue=None, ping_interval=None)
    await ws.send(json.dumps({"type": "join", "sessionId": session, "id": 1}))
    while True:
        event = json.loads(await ws.recv())
        if event.get("type") == "ack":
            return ws


async def fanout(base, ws_url, users, rate):
    latencies, delivered = [], 0
    clients = []  # (ws, session, token)
    for token, session in users:
        for _ in range(PER_SESSION):
            clients.append((await open_client(ws_url, token, session), session, token))
    stop = asyncio.Event()

    async def reader(ws):
        nonlocal delivered
        try:
            async for frame in ws:
                event = json.loads(frame)
                if event.get("type") == "message":
                    sent = float(event["message"]["content"].split(" ", 1)[0])
                    latencies.append(time.perf_counter() - sent)
                    delivered += 1
        except websockets.ConnectionClosed:
            pass

    async def sender(ws, session):
        interval = 1.0 / rate
        # Senders start at random phases, so the offered load is spread evenly instead of arriving in
        # bursts of one message per session at the same instant.
        next_at = time.perf_counter() + random.uniform(0, interval)
        await asyncio.sleep(max(0, next_at - time.perf_counter()))
        while not stop.is_set():
            await ws.send(json.dumps({"type": "message", "sessionId": session, "content": f"{time.perf_counter()} fan-out"}))
            next_at += interval
            await asyncio.sleep(max(0, next_at - time.perf_counter()))

    # One sender per session; its acks are read by its own reader (they are not `message` events).
    readers = [asyncio.create_task(reader(ws)) for ws, _, _ in clients]
    senders = [asyncio.create_task(sender(clients[i * PER_SESSION][0], users[i][1])) for i in range(len(users))]
    await asyncio.sleep(1)  # warm up
    delivered, latencies[:] = 0, []
    started = time.perf_counter()
    await asyncio.sleep(SECONDS)
    elapsed = time.perf_counter() - started
    count, lat = delivered, sorted(latencies)
    stop.set()
    await asyncio.gather(*senders, return_exceptions=True)
    for ws, _, _ in clients:
        await ws.close()
    await asyncio.gather(*readers, return_exceptions=True)
    return count / elapsed, lat


async def open_socketio_client(base_url, token, session):
    """An Engine.IO WebSocket session, connected to the main namespace with the token and joined."""
    ws = await websockets.connect(base_url + "/socket.io/?EIO=4&transport=websocket", max_queue=None, ping_interval=None)
    opened = await ws.recv()
    assert opened.startswith("0{"), opened
    await ws.send("40" + json.dumps({"token": token}))
    connected = await ws.recv()
    assert connected.startswith("40{"), connected
    await ws.send("421" + json.dumps(["join", {"sessionId": session}]))
    while True:
        packet = await ws.recv()
        if packet.startswith("431"):
            return ws


async def idle(open_one, users, pid):
    before = rss_kib(pid)
    sockets = []
    for i in range(IDLE):
        token, session = users[i % len(users)]
        sockets.append(await open_one(token, session))
    await asyncio.sleep(2)
    after = rss_kib(pid)
    for ws in sockets:
        await ws.close()
    await asyncio.sleep(2)
    return before, after


# Engine.IO pings every 25 s would need answers while 10,000 connections open; they are not what is
# measured, so the interval is long here.
SERVER_SETTINGS = dict(REALTIME_MAX_CONNECTIONS_PER_USER="10000", JWT_ACCESS_TTL="1h", SOCKETIO_PING_INTERVAL="10m",
                       REALTIME_MAX_UNAUTHENTICATED_PER_IP="100000")


def register_users(base):
    users = []
    for i in range(SESSIONS):
        token = request("POST", base + "/auth/register", {"username": f"rt{i}", "password": "bench-password"})["accessToken"]
        users.append((token, request("POST", base + "/api/sessions", {}, token)["sessionId"]))
    return users


def main():
    raise_nofile()
    with running_server(**SERVER_SETTINGS) as (base, server, _):
        ws_url = base.replace("http://", "ws://") + "/ws"
        users = register_users(base)
        print("\n## realtime fan-out (SQLite, /ws)\n")
        print(f"{SESSIONS * PER_SESSION} clients in {SESSIONS} sessions, {SECONDS:g} s per run\n")
        print("| sends/s offered | delivered messages/s (expected) | p50 send→receive ms | p99 send→receive ms |")
        print("|---:|---:|---:|---:|")
        for per_session in RATES:
            delivered, lat = asyncio.run(fanout(base, ws_url, users, per_session))
            p50 = lat[len(lat) // 2] * 1000 if lat else 0
            p99 = lat[int(len(lat) * 0.99)] * 1000 if lat else 0
            expected = per_session * SESSIONS * (PER_SESSION - 1)
            print(f"| {per_session * SESSIONS:,.0f} | {delivered:,.0f} ({expected:,.0f}) | {p50:.2f} | {p99:.2f} |")
    # Each transport in a fresh server, so neither measures memory the other left to the allocator.
    print("\n| idle connections (authenticated, joined), each in a fresh server | RSS before | RSS after | per connection |")
    print("|---|---:|---:|---:|")
    for name in ("/ws", "Socket.IO over WebSocket"):
        with running_server(**SERVER_SETTINGS) as (base, server, _):
            users = register_users(base)
            ws_base = base.replace("http://", "ws://")
            if name == "/ws":
                open_one = lambda t, s: open_client(ws_base + "/ws", t, s)
            else:
                open_one = lambda t, s: open_socketio_client(ws_base, t, s)
            before, after = asyncio.run(idle(open_one, users, server.pid))
            print(f"| {IDLE:,} over {name} | {before / 1024:.1f} MiB | {after / 1024:.1f} MiB | {(after - before) / IDLE:.1f} KiB |")


if __name__ == "__main__":
    main()
