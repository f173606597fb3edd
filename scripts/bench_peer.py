#!/usr/bin/env python3
"""Fan-out over Socket.IO against chat-backend and against the python-socketio reference peer, same
workload, same run: CLIENTS clients in SESSIONS sessions, one sender per session at RATE messages/s.
Reports delivered messages/s for both and the ratio.
"""
import asyncio
import os
import subprocess
import sys
import tempfile
import time

import socketio

from benchlib import free_port, request, running_server
from bench_realtime import raise_nofile

SESSIONS = int(os.environ.get("BENCH_PEER_SESSIONS", "50"))
PER_SESSION = int(os.environ.get("BENCH_PEER_PER_SESSION", "10"))
RATE = float(os.environ.get("BENCH_PEER_RATE", "20"))
SECONDS = float(os.environ.get("BENCH_PEER_SECONDS", "10"))


async def workload(url, rooms):
    """rooms: list of (auth dict, session id). Returns delivered messages per second."""
    delivered = 0
    clients = []

    def on_message(_):
        nonlocal delivered
        delivered += 1

    for auth, session in rooms:
        for _ in range(PER_SESSION):
            client = socketio.AsyncClient(reconnection=False)
            client.on("message", on_message)
            await client.connect(url, auth=auth, transports=["websocket"], wait_timeout=10)
            await client.call("join", {"sessionId": session}, timeout=10)
            clients.append(client)
    stop = asyncio.Event()

    async def sender(client, session):
        interval, next_at = 1.0 / RATE, time.perf_counter()
        while not stop.is_set():
            await client.emit("message", {"sessionId": session, "content": f"{time.perf_counter()} peer"})
            next_at += interval
            await asyncio.sleep(max(0, next_at - time.perf_counter()))

    senders = [asyncio.create_task(sender(clients[i * PER_SESSION], rooms[i][1])) for i in range(len(rooms))]
    await asyncio.sleep(1)
    delivered = 0
    started = time.perf_counter()
    await asyncio.sleep(SECONDS)
    rate = delivered / (time.perf_counter() - started)
    stop.set()
    await asyncio.gather(*senders, return_exceptions=True)
    for client in clients:
        await client.disconnect()
    return rate


def main():
    raise_nofile()
    with running_server(REALTIME_MAX_CONNECTIONS_PER_USER="10000", JWT_ACCESS_TTL="1h") as (base, _, _work):
        rooms = []
        for i in range(SESSIONS):
            token = request("POST", base + "/auth/register", {"username": f"peer{i}", "password": "bench-password"})["accessToken"]
            rooms.append(({"token": token}, request("POST", base + "/api/sessions", {}, token)["sessionId"]))
        ours = asyncio.run(workload(base, rooms))
    work = tempfile.mkdtemp(prefix="chat-bench-peer-")
    port = free_port()
    peer = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "peer_socketio_server.py"), str(port),
                             os.path.join(work, "peer.db")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)
        peer_rooms = [({}, f"room-{i}") for i in range(SESSIONS)]
        theirs = asyncio.run(workload(f"http://127.0.0.1:{port}", peer_rooms))
    finally:
        peer.terminate()
        peer.wait(timeout=10)
    print("\n## Socket.IO fan-out against the python-socketio peer\n")
    print(f"{SESSIONS * PER_SESSION} Socket.IO clients in {SESSIONS} sessions, {RATE:g} messages/s per session for {SECONDS:g} s\n")
    print("| server | delivered messages/s |")
    print("|---|---:|")
    print(f"| chat-backend | {ours:,.0f} |")
    print(f"| python-socketio (aiohttp, SQLite) | {theirs:,.0f} |")
    print(f"\nratio: {ours / theirs if theirs else float('inf'):.1f}x")


if __name__ == "__main__":
    main()
