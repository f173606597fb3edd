#!/usr/bin/env python3
"""Reference peer for the realtime benchmark: a python-socketio AsyncServer on aiohttp doing the same
store-then-broadcast as chat-backend, with SQLite (WAL, synchronous=FULL, one commit per message).

Events: `join {sessionId}` (enters the room; ack), `message {sessionId, content}` (stored, acked, then
emitted to the room's other clients). No auth: it is a throughput reference, not a product.
Usage: peer_socketio_server.py PORT DATABASE_PATH
"""
import asyncio
import sqlite3
import sys
import time
import uuid

import socketio
from aiohttp import web

port, path = int(sys.argv[1]), sys.argv[2]
db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=FULL")
db.execute("CREATE TABLE IF NOT EXISTS messages (id TEXT PRIMARY KEY, session_id TEXT, content TEXT, created_at REAL)")
lock = asyncio.Lock()

sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*")
app = web.Application()
sio.attach(app)


@sio.event
async def join(sid, data):
    await sio.enter_room(sid, data["sessionId"])
    return {"event": "join", "sessionId": data["sessionId"]}


def store(message):
    db.execute("INSERT INTO messages VALUES (?, ?, ?, ?)", (message["id"], message["sessionId"], message["content"], message["createdAt"]))


@sio.event
async def message(sid, data):
    msg = {"id": str(uuid.uuid4()), "sessionId": data["sessionId"], "content": data["content"], "createdAt": time.time()}
    async with lock:
        await asyncio.get_running_loop().run_in_executor(None, store, msg)
    await sio.emit("message", msg, room=data["sessionId"], skip_sid=sid)
    return {"event": "message", "message": msg}


web.run_app(app, host="127.0.0.1", port=port, print=None)
