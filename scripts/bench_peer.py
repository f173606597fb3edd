#!/usr/bin/env python3
"""Fan-out over Socket.IO against chat-backend and against the python-socketio reference peer, same
workload, same run: SESSIONS sessions of PER_SESSION clients, one sender per session at RATE messages/s.
Reports delivered messages/s for both and the ratio.

The clients speak Engine.IO v4 / Socket.IO v5 over WebSocket directly (open, CONNECT with auth, `join`
with an ack, `message` events, pong to pings) with the `websockets` library, spread over WORKERS
processes: python-socketio's own client costs several times more CPU per message and would measure
itself instead of the servers.
"""
import asyncio
import json
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import time

import websockets

from benchlib import free_port, request, running_server
from bench_realtime import raise_nofile

SESSIONS = int(os.environ.get("BENCH_PEER_SESSIONS", "100"))
PER_SESSION = int(os.environ.get("BENCH_PEER_PER_SESSION", "10"))
RATE = float(os.environ.get("BENCH_PEER_RATE", "30"))
SECONDS = float(os.environ.get("BENCH_PEER_SECONDS", "10"))
WORKERS = int(os.environ.get("BENCH_PEER_WORKERS", "2"))


async def connect(url, auth):
    ws = await websockets.connect(url, max_queue=None, ping_interval=None, compression=None)
    opened = await ws.recv()
    assert opened.startswith("0"), opened
    await ws.send("40" + json.dumps(auth))
    while True:
        packet = await ws.recv()
        if packet.startswith("40"):
            return ws
        if packet == "2":
            await ws.send("3")
        elif packet.startswith("44"):
            raise RuntimeError(f"connect refused: {packet}")


async def join(ws, session):
    await ws.send('421' + json.dumps(["join", {"sessionId": session}]))
    while True:
        packet = await ws.recv()
        if packet.startswith("431"):
            return
        if packet == "2":
            await ws.send("3")


async def worker_main(url, rooms, ready, go, results):
    delivered = 0
    counting = False
    clients = []
    for auth, session in rooms:
        for _ in range(PER_SESSION):
            ws = await connect(url, auth)
            await join(ws, session)
            clients.append((ws, session))
    ready.release()
    while not go.is_set():
        await asyncio.sleep(0.01)
    stop = asyncio.Event()

    async def reader(ws):
        nonlocal delivered
        try:
            async for packet in ws:
                if packet.startswith('42["message"'):
                    if counting:
                        delivered += 1
                elif packet == "2":
                    await ws.send("3")
        except websockets.ConnectionClosed:
            pass

    async def sender(ws, session):
        interval = 1.0 / RATE
        next_at = time.perf_counter() + random.uniform(0, interval)
        while not stop.is_set():
            await asyncio.sleep(max(0, next_at - time.perf_counter()))
            await ws.send("42" + json.dumps(["message", {"sessionId": session, "content": f"{time.perf_counter()} peer"}]))
            next_at += interval

    readers = [asyncio.create_task(reader(ws)) for ws, _ in clients]
    senders = [asyncio.create_task(sender(*clients[i * PER_SESSION])) for i in range(len(rooms))]
    await asyncio.sleep(1)
    counting = True
    started = time.perf_counter()
    await asyncio.sleep(SECONDS)
    elapsed = time.perf_counter() - started
    counting = False
    results.put(delivered / elapsed)
    stop.set()
    await asyncio.gather(*senders, return_exceptions=True)
    for ws, _ in clients:
        await ws.close()
    await asyncio.gather(*readers, return_exceptions=True)


def worker(url, rooms, ready, go, results):
    raise_nofile()
    asyncio.run(worker_main(url, rooms, ready, go, results))


def workload(base, rooms):
    """rooms: list of (auth dict, session id). Returns delivered messages per second over all workers."""
    url = base.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    ready, go, results = multiprocessing.Semaphore(0), multiprocessing.Event(), multiprocessing.Queue()
    shares = [rooms[i::WORKERS] for i in range(WORKERS)]
    procs = [multiprocessing.Process(target=worker, args=(url, share, ready, go, results)) for share in shares if share]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire(timeout=120)
    go.set()
    total = sum(results.get(timeout=SECONDS + 60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    return total


def main():
    raise_nofile()
    with running_server(REALTIME_MAX_CONNECTIONS_PER_USER="10000", JWT_ACCESS_TTL="1h") as (base, _, _work):
        rooms = []
        for i in range(SESSIONS):
            token = request("POST", base + "/auth/register", {"username": f"peer{i}", "password": "bench-password"})["accessToken"]
            rooms.append(({"token": token}, request("POST", base + "/api/sessions", {}, token)["sessionId"]))
        ours = workload(base, rooms)
    work = tempfile.mkdtemp(prefix="chat-bench-peer-")
    port = free_port()
    peer = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "peer_socketio_server.py"), str(port),
                             os.path.join(work, "peer.db")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)
        peer_rooms = [({}, f"room-{i}") for i in range(SESSIONS)]
        theirs = workload(f"http://127.0.0.1:{port}", peer_rooms)
    finally:
        peer.terminate()
        peer.wait(timeout=10)
    expected = SESSIONS * RATE * (PER_SESSION - 1)
    print("\n## Socket.IO fan-out against the python-socketio peer\n")
    print(f"{SESSIONS * PER_SESSION} Socket.IO clients in {SESSIONS} sessions, {RATE:g} messages/s per session offered "
          f"({expected:,.0f} deliveries/s), {SECONDS:g} s, clients in {WORKERS} processes\n")
    print("| server | delivered messages/s |")
    print("|---|---:|")
    print(f"| chat-backend | {ours:,.0f} |")
    print(f"| python-socketio (aiohttp, SQLite) | {theirs:,.0f} |")
    print(f"\nratio: {ours / theirs if theirs else float('inf'):.1f}x")


if __name__ == "__main__":
    main()
