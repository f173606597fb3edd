#!/usr/bin/env python3
"""Fan-out over Socket.IO against chat-backend and against the python-socketio reference peer, same
workload, same run: SESSIONS sessions of PER_SESSION clients, one sender per session at each rate of BENCH_PEER_RATES (messages/s per session).
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
RATES = [float(r) for r in os.environ.get("BENCH_PEER_RATES", "30,60").split(",")]  # messages/s per session
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


async def worker_main(url, rooms, rate, ready, go, results):
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
        interval = 1.0 / rate
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


def worker(url, rooms, rate, ready, go, results):
    raise_nofile()
    asyncio.run(worker_main(url, rooms, rate, ready, go, results))


def workload(base, rooms, rate):
    """rooms: list of (auth dict, session id). Returns delivered messages per second over all workers."""
    url = base.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    ready, go, results = multiprocessing.Semaphore(0), multiprocessing.Event(), multiprocessing.Queue()
    shares = [rooms[i::WORKERS] for i in range(WORKERS)]
    procs = [multiprocessing.Process(target=worker, args=(url, share, rate, ready, go, results)) for share in shares if share]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire(timeout=120)
    go.set()
    total = sum(results.get(timeout=SECONDS + 60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    return total


def peer_rate(rooms, rate):
    """Delivered messages/s of a fresh python-socketio peer server under the workload."""
    work = tempfile.mkdtemp(prefix="chat-bench-peer-")
    port = free_port()
    peer = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "peer_socketio_server.py"), str(port),
                             os.path.join(work, "peer.db")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)
        return workload(f"http://127.0.0.1:{port}", rooms, rate)
    finally:
        peer.terminate()
        try:
            peer.wait(timeout=10)
        except subprocess.TimeoutExpired:  # an overloaded peer may not get to its signal handler
            peer.kill()
            peer.wait()


def main():
    raise_nofile()
    ours = {}
    with running_server(REALTIME_MAX_CONNECTIONS_PER_USER="10000", JWT_ACCESS_TTL="1h") as (base, _, _work):
        rooms = []
        for i in range(SESSIONS):
            token = request("POST", base + "/auth/register", {"username": f"peer{i}", "password": "bench-password"})["accessToken"]
            rooms.append(({"token": token}, request("POST", base + "/api/sessions", {}, token)["sessionId"]))
        for rate in RATES:
            ours[rate] = workload(base, rooms, rate)
    theirs = {rate: peer_rate([({}, f"room-{i}") for i in range(SESSIONS)], rate) for rate in RATES}
    print("\n## Socket.IO fan-out against the python-socketio peer\n")
    print(f"{SESSIONS * PER_SESSION} Socket.IO clients in {SESSIONS} sessions, one sender per session, {SECONDS:g} s per run, "
          f"clients in {WORKERS} processes\n")
    print("| messages/s per session | deliveries/s offered | chat-backend delivered/s | python-socketio delivered/s | ratio |")
    print("|---:|---:|---:|---:|---:|")
    for rate in RATES:
        ratio = ours[rate] / theirs[rate] if theirs[rate] else float("inf")
        print(f"| {rate:g} | {SESSIONS * rate * (PER_SESSION - 1):,.0f} | {ours[rate]:,.0f} | {theirs[rate]:,.0f} | {ratio:.1f}x |")


if __name__ == "__main__":
    main()
