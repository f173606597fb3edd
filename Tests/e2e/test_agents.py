"""Agents answering in chat sessions, end to end: the built-in echo and rules agents, a signed webhook and an
OpenAI-compatible streaming server (fakes started on loopback), replies delivered over /ws and Socket.IO in order,
deltas before the final message, handoff to a human agent user, resolve by an agent, the circuit breaker, per-agent
metrics, and agent files that are refused with the line and field named."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import socketio
from websockets.sync.client import connect as ws_connect

from conftest import (Server, assert_json_error, auth_get, create_session, pg_control, post_json, register, run_cli,
                      unique_name)
from fakes import OpenAIServer, WebhookServer

HOOK_SECRET = "hook-secret-0123456789"
LLM_KEY = "sk-test-key-abcdef"


def wait_for(predicate, timeout=8.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.03)
    value = predicate()
    assert value, f"timed out waiting for {what}"
    return value


def history(server: Server, token: str, sid: str) -> list[dict]:
    r = auth_get(server.url(f"/api/sessions/{sid}/messages?limit=200"), token)
    assert r.status_code == 200, r.text
    return r.json()["messages"]


def send(server: Server, token: str, sid: str, content: str, expect: int = 201) -> dict:
    r = post_json(server.url(f"/api/sessions/{sid}/messages"), {"content": content}, token=token)
    assert r.status_code == expect, r.text
    return r.json()


def session(server: Server, token: str, sid: str) -> dict:
    r = auth_get(server.url(f"/api/sessions/{sid}"), token)
    assert r.status_code == 200, r.text
    return r.json()


def replies_to(messages: list[dict], message_id: str) -> list[dict]:
    return [m for m in messages if m["direction"] == "outbound" and m["metadata"].get("inReplyTo") == message_id]


def add_user(server: Server, role: str) -> dict:
    """A user with role `agent` or `admin`, created with the CLI; returns its login body."""
    name, password = unique_name(role), "staff-password-1"
    database = server.database_url or f"sqlite://{server.db_path}"
    r = run_cli(server.bin_path, ["user", "add", name, f"--{role}", "--password-stdin", "--database-url", database],
                server.dir, server.env, input=password + "\n")
    assert r.returncode == 0, r.stdout + r.stderr
    r = post_json(server.url("/auth/login"), {"username": name, "password": password})
    assert r.status_code == 200, r.text
    return r.json()


class WSListener:
    """A /ws connection joined to one session; collects every event in a background thread."""

    def __init__(self, server: Server, token: str, sid: str):
        self._context = ws_connect(f"ws://127.0.0.1:{server.port}/ws", additional_headers={"Authorization": f"Bearer {token}"},
                                   open_timeout=5, proxy=None)
        self.ws = self._context.__enter__()
        self.events: list[dict] = []
        self.ws.send(json.dumps({"type": "join", "sessionId": sid, "id": "j"}))
        first = json.loads(self.ws.recv(timeout=5))
        assert first["type"] == "ack" and first["event"] == "join", first
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            while True:
                self.events.append(json.loads(self.ws.recv()))
        except Exception:
            pass

    def of(self, type_: str) -> list[dict]:
        return [e for e in list(self.events) if e["type"] == type_]

    def messages(self) -> list[dict]:
        return [e["message"] for e in self.of("message")]

    def close(self):
        self._context.__exit__(None, None, None)


AGENTS_YAML = """\
# Agents for the end-to-end tests.
default_agent: front
max_concurrent: 4
routing:
  - keywords: [invoice, billing]
    agent: hook
agents:
  - name: echo
    kind: echo
    description: Repeats what you say
    prefix: "echo: "
  - name: front
    kind: rules
    intents:
      - keywords: [hello]
        reply: "Hi! You wrote: {{{{message}}}}"
      - pattern: "(?i)\\\\b(human|person)\\\\b"
        reply: Let me find a person for you.
        handoff: human
      - keywords: [stream]
        handoff: llm
      - keywords: [bye]
        reply: Goodbye!
        resolve: true
    fallback: Sorry, I can only say hello.
  - name: hook
    kind: webhook
    url: {hook_url}
    secret_env: HOOK_SECRET
    timeout: 1s
    retries: 1
    history: 5
    breaker:
      failures: 2
      cooldown: 2s
  - name: llm
    kind: openai
    base_url: {llm_url}/v1
    model: test-model
    api_key_env: LLM_KEY
    system_prompt: |
      You are a test assistant.
    history: 4
    timeout: 10s
"""


@pytest.fixture(scope="module")
def agents_world(bin_path, tmp_path_factory):
    hook = WebhookServer(HOOK_SECRET, slow_seconds=3.0)
    llm = OpenAIServer(LLM_KEY)
    directory = tmp_path_factory.mktemp("agents")
    agents_file = directory / "agents.yaml"
    agents_file.write_text(AGENTS_YAML.format(hook_url=hook.url + "/hook", llm_url=llm.url))
    server = Server(bin_path, directory / "server", env={"AGENTS_FILE": str(agents_file), "HOOK_SECRET": HOOK_SECRET,
                                                          "LLM_KEY": LLM_KEY})
    server.start()
    try:
        yield server, hook, llm
    finally:
        server.stop()
        hook.close()
        llm.close()


def new_session(server: Server, token: str, agent: str | None = None) -> str:
    body = {"agent": agent} if agent else {}
    r = post_json(server.url("/api/sessions"), body, token=token)
    assert r.status_code == 201, r.text
    assert r.json()["agent"] == agent
    return r.json()["sessionId"]


def test_agents_are_listed_without_secrets_and_unknown_agents_are_refused(agents_world):
    server, hook, _ = agents_world
    token = register(server)["accessToken"]
    r = auth_get(server.url("/api/agents"), token)
    assert r.status_code == 200
    body = r.json()
    assert body["defaultAgent"] == "front"
    assert [(a["name"], a["kind"], a["default"]) for a in body["agents"]] == [
        ("echo", "echo", False), ("front", "rules", True), ("hook", "webhook", False), ("llm", "openai", False)]
    assert HOOK_SECRET not in r.text and LLM_KEY not in r.text and hook.url not in r.text
    assert auth_get(server.url("/api/agents"), None).status_code == 401
    error = assert_json_error(post_json(server.url("/api/sessions"), {"agent": "nobody"}, token=token), 400, "validation_failed")
    assert error["details"]["field"] == "agent"


def test_echo_replies_are_stored_and_delivered_in_order_over_ws_and_socketio(agents_world):
    server, _, _ = agents_world
    token = register(server)["accessToken"]
    sid = new_session(server, token, "echo")
    ws = WSListener(server, token, sid)
    sio_messages: list[dict] = []
    sio = socketio.Client(reconnection=False)
    sio.on("message", sio_messages.append)
    sio.connect(server.base_url, auth={"token": token}, transports=["websocket"], wait_timeout=5)
    try:
        assert sio.call("join", {"sessionId": sid}, timeout=5)["event"] == "join"
        sent = [send(server, token, sid, f"number {i}") for i in range(5)]
        stored = wait_for(lambda: (lambda h: h if len(h) == 10 else None)(history(server, token, sid)), what="5 echo replies")
        # Each reply follows its message, in message order.
        for i, m in enumerate(sent):
            reply = replies_to(stored, m["id"])
            assert len(reply) == 1, stored
            assert reply[0]["content"] == f"echo: number {i}"
            assert reply[0]["type"] == "agent" and reply[0]["metadata"]["agent"] == "echo" and reply[0]["userId"] is None
        order = [m["metadata"].get("inReplyTo") for m in stored if m["direction"] == "outbound"]
        assert order == [m["id"] for m in sent]
        ids = [m["id"] for m in stored]
        wait_for(lambda: [m["id"] for m in ws.messages()] == ids, what="/ws to deliver all ten in order")
        wait_for(lambda: [m["id"] for m in sio_messages] == ids, what="Socket.IO to deliver all ten in order")
    finally:
        ws.close()
        sio.disconnect()


def test_rules_route_answer_and_resolve(agents_world):
    server, hook, _ = agents_world
    token = register(server)["accessToken"]
    # No agent chosen: the default agent (rules) takes the session on its first message.
    sid = new_session(server, token)
    m = send(server, token, sid, "hello there")
    reply = wait_for(lambda: replies_to(history(server, token, sid), m["id"]), what="rules reply")
    assert reply[0]["content"] == "Hi! You wrote: hello there" and reply[0]["metadata"]["intent"] == 0
    assert session(server, token, sid)["agent"] == "front"
    m = send(server, token, sid, "what is this")
    assert wait_for(lambda: replies_to(history(server, token, sid), m["id"]))[0]["content"] == "Sorry, I can only say hello."
    # Resolve by agent: the reply is stored, then the session is resolved and takes no more messages.
    m = send(server, token, sid, "ok bye")
    assert wait_for(lambda: replies_to(history(server, token, sid), m["id"]))[0]["content"] == "Goodbye!"
    wait_for(lambda: session(server, token, sid)["isResolved"], what="the session to be resolved")
    r = post_json(server.url(f"/api/sessions/{sid}/messages"), {"content": "still there?"}, token=token)
    assert_json_error(r, 409, "session_resolved")
    # Routing rules pick the agent from a new session's first message.
    sid2 = new_session(server, token)
    send(server, token, sid2, "question about my invoice")
    wait_for(lambda: session(server, token, sid2)["agent"] == "hook", what="routing to the webhook agent")
    wait_for(lambda: any(m["content"] == "hook: question about my invoice" for m in history(server, token, sid2)))


def test_webhook_is_signed_gets_history_and_can_hand_off_and_resolve(agents_world):
    server, hook, _ = agents_world
    token = register(server)["accessToken"]
    sid = new_session(server, token, "hook")
    first = send(server, token, sid, "first question")
    wait_for(lambda: replies_to(history(server, token, sid), first["id"]))
    second = send(server, token, sid, "second question")
    reply = wait_for(lambda: replies_to(history(server, token, sid), second["id"]))[0]
    assert reply["content"] == "hook: second question" and reply["metadata"]["agent"] == "hook"
    call = hook.calls_for("second question")[0]
    assert call["signed"], "the webhook request was not signed correctly"
    payload = call["payload"]
    assert payload["session"]["sessionId"] == sid and payload["message"]["id"] == second["id"]
    # The earlier exchange is in recentMessages, oldest first; the message itself is not.
    assert [m["content"] for m in payload["recentMessages"]] == ["first question", "hook: first question"]
    assert reply["metadata"]["seen"] == 2
    assert call["request_id"], "the request id travels to the webhook"
    # Nothing to say (204): no reply, no error.
    silent = send(server, token, sid, "silent")
    wait_for(lambda: hook.calls_for("silent"))
    time.sleep(0.5)
    assert replies_to(history(server, token, sid), silent["id"]) == []
    # Resolve with metadata.
    closing = send(server, token, sid, "close it")
    reply = wait_for(lambda: replies_to(history(server, token, sid), closing["id"]))[0]
    assert reply["metadata"]["ticket"] == 42
    wait_for(lambda: session(server, token, sid)["isResolved"])


def test_webhook_failures_become_system_messages_and_trip_the_breaker(agents_world):
    server, hook, _ = agents_world
    token = register(server)["accessToken"]
    sid = new_session(server, token, "hook")

    ok = send(server, token, sid, "warm up")
    wait_for(lambda: replies_to(history(server, token, sid), ok["id"]))

    # 503: retried once (2 calls), then a system message; the user's message stays stored.
    failed = send(server, token, sid, "fail")
    note = wait_for(lambda: replies_to(history(server, token, sid), failed["id"]), what="system message after 503s")[0]
    assert note["type"] == "system" and note["metadata"]["error"] == "http_503" and note["metadata"]["agent"] == "hook"
    assert note["metadata"]["requestId"]
    assert len(hook.calls_for("fail")) == 2
    # The failure is logged with the request id of the user's send.
    wait_for(lambda: any("agent failed" in line and note["metadata"]["requestId"] in line for line in server.stderr().splitlines()),
             what="the failure in the log with its request id")
    assert any(m["id"] == failed["id"] for m in history(server, token, sid))

    # A timeout is the second failure in a row: the breaker opens (failures: 2).
    slow = send(server, token, sid, "slow")
    note = wait_for(lambda: replies_to(history(server, token, sid), slow["id"]), timeout=10, what="timeout note")[0]
    assert note["type"] == "system" and note["metadata"]["error"] == "timeout"
    agents = {a["name"]: a for a in auth_get(server.url("/api/agents"), token).json()["agents"]}
    assert agents["hook"]["available"] is False

    # While open, the agent is not called at all.
    blocked = send(server, token, sid, "are you there")
    note = wait_for(lambda: replies_to(history(server, token, sid), blocked["id"]))[0]
    assert note["type"] == "system" and note["metadata"]["error"] == "breaker_open"
    assert hook.calls_for("are you there") == []

    # After the cooldown one trial goes through; its success closes the breaker.
    time.sleep(2.2)
    trial = send(server, token, sid, "after cooldown")
    reply = wait_for(lambda: replies_to(history(server, token, sid), trial["id"]))[0]
    assert reply["content"] == "hook: after cooldown"
    agents = {a["name"]: a for a in auth_get(server.url("/api/agents"), token).json()["agents"]}
    assert agents["hook"]["available"] is True

    # A redirect is not followed: the answer is the endpoint's own, and a 3xx is an error (not retried).
    moved = send(server, token, sid, "redirect")
    note = wait_for(lambda: replies_to(history(server, token, sid), moved["id"]))[0]
    assert note["type"] == "system" and note["metadata"]["error"] == "http_301", note
    assert hook.followed == [] and len(hook.calls_for("redirect")) == 1
    back = send(server, token, sid, "back again")  # a success: the failures in a row start over
    assert wait_for(lambda: replies_to(history(server, token, sid), back["id"]))[0]["content"] == "hook: back again"

    # A malformed answer is an error too (not retried).
    garbage = send(server, token, sid, "garbage")
    note = wait_for(lambda: replies_to(history(server, token, sid), garbage["id"]))[0]
    assert note["metadata"]["error"] == "bad_response"
    assert len(hook.calls_for("garbage")) == 1

    metrics = auth_get(server.url("/api/metrics"), token).text
    assert 'chat_agent_requests_total{agent="hook"}' in metrics
    assert 'chat_agent_errors_total{agent="hook",reason="breaker_open"} 1' in metrics
    assert 'chat_agent_errors_total{agent="hook",reason="timeout"} 1' in metrics
    assert 'chat_agent_latency_seconds_count{agent="hook"}' in metrics


def test_openai_reply_streams_deltas_then_one_final_message(agents_world):
    server, _, llm = agents_world
    token = register(server)["accessToken"]
    sid = new_session(server, token, "llm")
    ws = WSListener(server, token, sid)
    sio_deltas: list[dict] = []
    sio_messages: list[dict] = []
    sio = socketio.Client(reconnection=False)
    sio.on("message.delta", sio_deltas.append)
    sio.on("message", sio_messages.append)
    sio.connect(server.base_url, auth={"token": token}, transports=["polling", "websocket"], wait_timeout=5)
    try:
        assert sio.call("join", {"sessionId": sid}, timeout=5)["event"] == "join"
        first = send(server, token, sid, "tell me something")
        final = wait_for(lambda: replies_to(history(server, token, sid), first["id"]), what="the LLM reply")[0]
        assert final["content"] == "Echoing: tell me something"
        assert final["type"] == "agent" and final["metadata"]["agent"] == "llm" and final["metadata"]["model"] == "test-model"
        assert final["metadata"]["finishReason"] == "stop"
        stream_id = final["metadata"]["streamId"]
        wait_for(lambda: any(m["id"] == final["id"] for m in ws.messages()))
        # Every delta came before the final message, in order, and they add up to it.
        events = list(ws.events)
        deltas = [e for e in events if e["type"] == "message.delta" and e["streamId"] == stream_id]
        words = len(final["content"].split(" "))
        # A delta per piece, or fewer (pieces closer than 40 ms apart go out together).
        assert 1 <= len(deltas) <= words, events
        assert [d["index"] for d in deltas] == list(range(len(deltas)))
        assert "".join(d["delta"] for d in deltas) == final["content"]
        final_at = next(i for i, e in enumerate(events) if e["type"] == "message" and e["message"]["id"] == final["id"])
        assert all(events.index(d) < final_at for d in deltas)
        # The agent shows as typing from before its first delta until its reply is complete.
        typing = [(i, e["isTyping"]) for i, e in enumerate(events) if e["type"] == "typing" and e.get("agent") == "llm"]
        assert [t for _, t in typing][:2] == [True, False], events
        assert typing[0][0] < events.index(deltas[0]) and events.index(deltas[-1]) < typing[1][0] < final_at
        assert all(e["userId"] is None for e in events if e["type"] == "typing" and e.get("agent"))
        assert all(d["sessionId"] == sid and d["agent"] == "llm" for d in deltas)
        wait_for(lambda: any(m["id"] == final["id"] for m in sio_messages))
        assert "".join(d["delta"] for d in sio_deltas if d["streamId"] == stream_id) == final["content"]

        # The request carried the system prompt and the history (user → user, agent → assistant).
        second = send(server, token, sid, "and more")
        wait_for(lambda: replies_to(history(server, token, sid), second["id"]))
        body = llm.calls_for("and more")[0]["body"]
        assert body["model"] == "test-model" and body["stream"] is True
        assert [(m["role"], m["content"]) for m in body["messages"]] == [
            ("system", "You are a test assistant.\n"), ("user", "tell me something"),
            ("assistant", "Echoing: tell me something"), ("user", "and more")]

        # An error status before any output: a system message.
        failed = send(server, token, sid, "fail")
        note = wait_for(lambda: replies_to(history(server, token, sid), failed["id"]))[0]
        assert note["type"] == "system" and note["metadata"]["error"] == "http_500"
    finally:
        ws.close()
        sio.disconnect()


def test_provider_streams_that_misbehave(agents_world):
    """A provider that floods tiny pieces, sends a NUL, ends lines with CR alone, stops mid-answer or fails after
    streaming: readers stay connected, stored text is clean, a cut-off answer is marked, a failed one names the
    stream whose draft clients showed."""
    server, _, _ = agents_world
    token = register(server)["accessToken"]
    sid = new_session(server, token, "llm")
    ws = WSListener(server, token, sid)
    try:
        flood = send(server, token, sid, "flood")
        final = wait_for(lambda: replies_to(history(server, token, sid), flood["id"]), what="the flooded reply")[0]
        assert final["content"] == "x" * 2000
        wait_for(lambda: any(m["id"] == final["id"] for m in ws.messages()), what="the final message on a reading client")
        deltas = [e for e in ws.of("message.delta") if e["streamId"] == final["metadata"]["streamId"]]
        assert "".join(d["delta"] for d in deltas) == final["content"]
        assert len(deltas) < 200, f"{len(deltas)} deltas for 2000 pieces sent at once"

        nul = send(server, token, sid, "nul")
        assert wait_for(lambda: replies_to(history(server, token, sid), nul["id"]))[0]["content"] == "ab"

        cr = send(server, token, sid, "cr")
        reply = wait_for(lambda: replies_to(history(server, token, sid), cr["id"]))[0]
        assert reply["content"] == "Echoing: cr" and reply["metadata"]["finishReason"] == "stop", reply

        cut = send(server, token, sid, "cut")
        reply = wait_for(lambda: replies_to(history(server, token, sid), cut["id"]))[0]
        assert reply["type"] == "agent" and reply["content"] == "one two three" and reply["metadata"]["incomplete"] is True, reply
        assert "incomplete" not in final["metadata"]

        drop = send(server, token, sid, "drop")
        note = wait_for(lambda: replies_to(history(server, token, sid), drop["id"]))[0]
        assert note["type"] == "system" and note["metadata"]["error"] == "provider_error", note
        streamed = {e["streamId"] for e in ws.of("message.delta") if e["delta"] == "one "}
        assert note["metadata"]["streamId"] in streamed, (note, streamed)
        assert ws.of("error") == [] and not any(e["type"] == "close" for e in ws.events)
    finally:
        ws.close()


def test_messages_past_a_full_agent_queue_are_told_not_answered(agents_world):
    """At most 32 messages of a session wait for its agent; those refused past that are listed in one system
    message once the agent is free (they were saved, not answered). No message is left without either."""
    server, _, _ = agents_world
    token = register(server)["accessToken"]
    sid = new_session(server, token, "llm")
    hold = send(server, token, sid, "hold")  # the agent takes 3 s over this one
    time.sleep(0.3)
    with ThreadPoolExecutor(max_workers=4) as pool:
        sent = list(pool.map(lambda i: send(server, token, sid, f"quick {i}"), range(40)))

    def settled():
        messages = history(server, token, sid)
        notes = [m for m in messages if m["type"] == "system" and m["metadata"].get("error") == "queue_full"]
        refused = {i for n in notes for i in n["metadata"]["notAnswered"]}
        answered = {m["metadata"].get("inReplyTo") for m in messages if m["direction"] == "outbound" and m["type"] == "agent"}
        return notes if notes and all(s["id"] in refused or s["id"] in answered for s in [hold] + sent) else None

    notes = wait_for(settled, timeout=30, what="every message answered or listed as not answered")
    refused = [i for n in notes for i in n["metadata"]["notAnswered"]]
    assert 1 <= len(refused) <= 40 - 31, refused


def test_rules_agent_hands_off_to_another_agent_which_answers_the_same_message(agents_world):
    server, _, llm = agents_world
    token = register(server)["accessToken"]
    sid = new_session(server, token, "front")
    m = send(server, token, sid, "stream please")
    reply = wait_for(lambda: replies_to(history(server, token, sid), m["id"]))[0]
    assert reply["metadata"]["agent"] == "llm" and reply["content"] == "Echoing: stream please"
    assert session(server, token, sid)["agent"] == "llm"


def test_handoff_to_a_human_agent(agents_world):
    server, _, _ = agents_world
    owner = register(server)
    token = owner["accessToken"]
    staff = add_user(server, "agent")
    other_staff = add_user(server, "agent")
    staff_token, other_token = staff["accessToken"], other_staff["accessToken"]

    sid = new_session(server, token, "front")
    ws = WSListener(server, token, sid)
    try:
        m = send(server, token, sid, "I want a human please")
        wait_for(lambda: session(server, token, sid)["handoff"], what="the handoff")
        s = session(server, token, sid)
        assert s["handoff"]["status"] == "waiting" and s["agent"] is None
        texts = [x["content"] for x in replies_to(history(server, token, sid), m["id"])]
        assert texts == ["Let me find a person for you."]
        assert any(x["type"] == "system" and x["metadata"].get("handoff") == "human" for x in history(server, token, sid))

        # Ordinary users cannot see the queue; staff can, and can read the waiting session.
        assert_json_error(auth_get(server.url("/api/handoffs"), token), 403, "forbidden")
        queue = auth_get(server.url("/api/handoffs"), staff_token).json()["sessions"]
        assert sid in [x["sessionId"] for x in queue]
        assert auth_get(server.url(f"/api/sessions/{sid}/messages"), staff_token).status_code == 200
        # Not claimed yet: staff may not write; nor delete it.
        assert_json_error(post_json(server.url(f"/api/sessions/{sid}/messages"), {"content": "hi"}, token=staff_token), 403,
                          "handoff_not_claimed")

        # While waiting, the bot no longer answers the owner.
        waiting = send(server, token, sid, "hello? anyone?")
        time.sleep(0.5)
        assert replies_to(history(server, token, sid), waiting["id"]) == []

        r = post_json(server.url(f"/api/handoffs/{sid}/claim"), {}, token=staff_token)
        assert r.status_code == 200, r.text
        assert r.json()["handoff"]["status"] == "assigned" and r.json()["handoff"]["assigneeId"] == staff["user"]["id"]
        assert_json_error(post_json(server.url(f"/api/handoffs/{sid}/claim"), {}, token=other_token), 409, "handoff_unavailable")
        assert sid not in [x["sessionId"] for x in auth_get(server.url("/api/handoffs"), other_token).json()["sessions"]]
        assert auth_get(server.url(f"/api/sessions/{sid}"), other_token).status_code == 404

        # The human agent joins over /ws and replies; the owner sees it like any other message.
        staff_ws = WSListener(server, staff_token, sid)
        try:
            r = post_json(server.url(f"/api/sessions/{sid}/messages"), {"content": "Hi, I am Sam from support."}, token=staff_token)
            assert r.status_code == 201, r.text
            reply = r.json()
            assert reply["direction"] == "outbound" and reply["type"] == "agent" and reply["userId"] == staff["user"]["id"]
            assert reply["metadata"]["agent"] == "human"
            wait_for(lambda: any(x["id"] == reply["id"] for x in ws.messages()), what="the owner to receive the reply")
            owner_msg = send(server, token, sid, "thanks Sam")
            wait_for(lambda: any(x["id"] == owner_msg["id"] for x in staff_ws.messages()), what="the agent to receive it")
        finally:
            staff_ws.close()
        time.sleep(0.3)
        assert replies_to(history(server, token, sid), owner_msg["id"]) == []  # no bot while a human has it
        assert auth_get(server.url(f"/api/sessions/{sid}/messages"), staff_token).status_code == 200
        r = requests_delete(server, staff_token, sid)
        assert r.status_code == 403

        # Release hands it back to the default agent, which answers again.
        r = post_json(server.url(f"/api/handoffs/{sid}/release"), {}, token=staff_token)
        assert r.status_code == 200 and r.json()["handoff"] is None and r.json()["agent"] == "front", r.text
        again = send(server, token, sid, "hello again")
        assert wait_for(lambda: replies_to(history(server, token, sid), again["id"]))[0]["content"].startswith("Hi!")

        # A human agent can resolve the session it holds.
        send(server, token, sid, "a human again please")
        wait_for(lambda: (session(server, token, sid)["handoff"] or {}).get("status") == "waiting")
        assert post_json(server.url(f"/api/handoffs/{sid}/claim"), {}, token=other_token).status_code == 200
        r = post_json(server.url(f"/api/sessions/{sid}/resolve"), {}, token=other_token)
        assert r.status_code == 200 and r.json()["isResolved"] is True, r.text
    finally:
        ws.close()


def test_the_owner_asks_for_a_person_without_any_agent(server):
    """POST /api/sessions/{id}/handoff puts a session in the staff inbox with no agents configured at all (the
    widget's "Talk to a person"); once; never taking a claimed session back from its person."""
    owner = register(server)
    token = owner["accessToken"]
    staff = add_user(server, "agent")
    staff_token = staff["accessToken"]
    sid = new_session(server, token)
    send(server, token, sid, "I would like to talk to a person")
    handoff = server.url(f"/api/sessions/{sid}/handoff")

    assert_json_error(post_json(handoff, {}, token=register(server)["accessToken"]), 404, "not_found")  # not theirs
    r = post_json(handoff, {}, token=token)
    assert r.status_code == 200 and r.json()["handoff"]["status"] == "waiting" and r.json()["agent"] is None, r.text
    assert sid in [x["sessionId"] for x in auth_get(server.url("/api/handoffs"), staff_token).json()["sessions"]]
    assert_json_error(post_json(handoff, {}, token=staff_token), 403, "forbidden")  # staff may read it, not ask for it
    again = post_json(handoff, {}, token=token)
    assert again.status_code == 200 and again.json() == r.json(), again.text
    notes = [m for m in history(server, token, sid) if m["type"] == "system" and m["metadata"].get("handoff") == "human"]
    assert len(notes) == 1, notes

    assert post_json(server.url(f"/api/handoffs/{sid}/claim"), {}, token=staff_token).status_code == 200
    r = post_json(handoff, {}, token=token)
    assert r.status_code == 200 and r.json()["handoff"]["status"] == "assigned", r.text  # still the person's
    assert post_json(server.url(f"/api/sessions/{sid}/resolve"), {}, token=staff_token).status_code == 200
    assert (session(server, token, sid)["handoff"] or {}).get("status") == "assigned"

    resolved = new_session(server, token)
    assert post_json(server.url(f"/api/sessions/{resolved}/resolve"), {}, token=token).status_code == 200
    assert_json_error(post_json(server.url(f"/api/sessions/{resolved}/handoff"), {}, token=token), 409, "session_resolved")


def test_agents_and_handoff_on_postgres(start_server, tmp_path, pg_url):
    """The same orchestration on the Postgres store: routing, replies delivered live, handoff, claim, resolve."""
    agents_file = tmp_path / "agents.yaml"
    agents_file.write_text(AGENTS_YAML.format(hook_url="http://127.0.0.1:9/hook", llm_url="http://127.0.0.1:9"))
    server = start_server(env={"AGENTS_FILE": str(agents_file), "HOOK_SECRET": "x", "LLM_KEY": "y"}, database_url=pg_url)
    token = register(server)["accessToken"]
    staff = add_user(server, "agent")
    sid = new_session(server, token)
    ws = WSListener(server, token, sid)
    try:
        hello = send(server, token, sid, "hello from postgres")
        reply = wait_for(lambda: replies_to(history(server, token, sid), hello["id"]))[0]
        assert reply["content"] == "Hi! You wrote: hello from postgres"
        wait_for(lambda: any(m["id"] == reply["id"] for m in ws.messages()), what="the reply over /ws")
        assert session(server, token, sid)["agent"] == "front"

        send(server, token, sid, "a person please")
        wait_for(lambda: (session(server, token, sid)["handoff"] or {}).get("status") == "waiting")
        assert sid in [x["sessionId"] for x in auth_get(server.url("/api/handoffs"), staff["accessToken"]).json()["sessions"]]
        assert post_json(server.url(f"/api/handoffs/{sid}/claim"), {}, token=staff["accessToken"]).status_code == 200
        r = post_json(server.url(f"/api/sessions/{sid}/messages"), {"content": "Human here."}, token=staff["accessToken"])
        assert r.status_code == 201 and r.json()["type"] == "agent", r.text
        wait_for(lambda: any(m["id"] == r.json()["id"] for m in ws.messages()), what="the human reply over /ws")
        r = post_json(server.url(f"/api/sessions/{sid}/resolve"), {}, token=staff["accessToken"])
        assert r.status_code == 200 and r.json()["isResolved"] is True
    finally:
        ws.close()


def test_an_agent_reply_that_comes_during_a_database_outage_is_stored_after_it(start_server, tmp_path, pg_url):
    """The agent answers while Postgres is down: the reply is kept and stored once the database is back, once."""
    hook = WebhookServer(HOOK_SECRET, slow_seconds=2.0)
    agents_file = tmp_path / "agents.yaml"
    agents_file.write_text(f"default_agent: hook\nagents:\n  - name: hook\n    kind: webhook\n    url: {hook.url}/hook\n"
                           "    secret_env: HOOK_SECRET\n    timeout: 10s\n")
    try:
        server = start_server(env={"AGENTS_FILE": str(agents_file), "HOOK_SECRET": HOOK_SECRET}, database_url=pg_url)
        token = register(server)["accessToken"]
        sid = new_session(server, token)
        asked = send(server, token, sid, "slow")
        wait_for(lambda: hook.calls_for("slow"), what="the agent being asked")
        pg_control("halt")
        try:
            time.sleep(4)  # the agent answers meanwhile, and its reply cannot be stored
        finally:
            pg_control("resume")
        reply = wait_for(lambda: replies_to(history(server, token, sid), asked["id"]), timeout=30, what="the reply stored after the outage")
        assert [m["content"] for m in reply] == ["too late"], reply
        time.sleep(1)
        assert len(replies_to(history(server, token, sid), asked["id"])) == 1
    finally:
        hook.close()


def requests_delete(server: Server, token: str, sid: str):
    import requests
    return requests.delete(server.url(f"/api/sessions/{sid}"), headers={"Authorization": f"Bearer {token}"}, timeout=10)


# ---- agent files ------------------------------------------------------------------------------------------


def check_config(bin_path: str, tmp_path: Path, text: str, env: dict | None = None):
    path = tmp_path / "agents.yaml"
    path.write_text(text)
    server = Server(bin_path, tmp_path / "cfg", env={"AGENTS_FILE": str(path), **(env or {})})
    return run_cli(bin_path, ["check-config", "--database-url", f"sqlite://{tmp_path}/cfg.db"], tmp_path, server.env)


BAD_FILES = [
    ("agents:\n  - name: a\n    kind: robot\n", "line 3: agents[0].kind: must be one of echo, rules, webhook, openai"),
    ("agents:\n  - name: a\n    kind: echo\n    prefx: x\n", "line 4: agents[0].prefx: unknown field"),
    ("agents:\n  - name: hook\n    kind: webhook\n    secret_env: S\n", "agents[0].url: is required"),
    ("agents:\n  - name: hook\n    kind: webhook\n    url: ftp://x\n    secret_env: S\n", "line 4: agents[0].url: must be an http"),
    ("agents:\n  - name: hook\n    kind: webhook\n    url: http://x\n    secret_env: MISSING_SECRET\n",
     "line 5: agents[0].secret_env: MISSING_SECRET is not set"),
    ("agents:\n  - name: r\n    kind: rules\n    intents:\n      - pattern: \"([a-\"\n        reply: x\n",
     "line 5: agents[0].intents[0].pattern: is not a valid regular expression"),
    ("agents:\n  - name: r\n    kind: rules\n    intents:\n      - keywords: [x]\n        handoff: ghost\n",
     "agents[0].intents[0].handoff: no agent named ghost"),
    ("default_agent: ghost\nagents:\n  - name: a\n    kind: echo\n", "line 1: default_agent: no agent named ghost"),
    ("agents:\n  - name: a\n    kind: echo\n  - name: a\n    kind: echo\n", "agents[1].name: duplicate agent name a"),
    ("agents:\n\t- name: a\n", "line 2: tabs are not allowed"),
    ("agents:\n  - name: Bad Name\n    kind: echo\n", "line 2: agents[0].name: must be 1"),
    ("agents:\n  - name: a\n    kind: webhook\n    url: http://x\n    secret_env: S\n    timeout: forever\n",
     "line 6: agents[0].timeout: must be a duration"),
    ("max_concurrent: 0\n", "line 1: max_concurrent: must be a whole number in 1...1024"),
    ('{"agents": [{"name": "a", "kind": "echo",}]}', "not valid JSON"),
]


@pytest.mark.parametrize("text,message", BAD_FILES, ids=[m.split(":")[1].strip()[:30] if ":" in m else m for _, m in BAD_FILES])
def test_bad_agent_files_are_refused_naming_line_and_field(bin_path, tmp_path, text, message):
    r = check_config(bin_path, tmp_path, text, env={"S": "secret"})
    assert r.returncode != 0, r.stdout
    assert message in r.stderr, r.stderr
    assert "AGENTS_FILE" in r.stderr


def test_valid_agent_files_in_yaml_and_json_pass_check_config_and_bad_ones_stop_serve(bin_path, tmp_path):
    r = check_config(bin_path, tmp_path, AGENTS_YAML.format(hook_url="http://127.0.0.1:9/hook", llm_url="http://127.0.0.1:9"),
                     env={"HOOK_SECRET": "x", "LLM_KEY": "y"})
    assert r.returncode == 0, r.stderr
    assert "4 agents: echo, front, hook, llm" in r.stdout
    # The documented example is valid as shipped, once its two secrets exist.
    example = (Path(__file__).resolve().parents[2] / "examples" / "agents.yaml").read_text()
    r = check_config(bin_path, tmp_path, example, env={"BILLING_WEBHOOK_SECRET": "x", "OPENAI_API_KEY": "y"})
    assert r.returncode == 0, r.stderr
    assert "4 agents: echo, front, billing, assistant" in r.stdout
    doc = {"default_agent": "e", "agents": [{"name": "e", "kind": "echo"}]}
    r = check_config(bin_path, tmp_path, json.dumps(doc))
    assert r.returncode == 0, r.stderr
    assert "1 agents: e" in r.stdout
    # An explicitly named file that does not exist is an error; serve refuses to start with a bad file.
    server = Server(bin_path, tmp_path / "missing", env={"AGENTS_FILE": str(tmp_path / "nope.yaml")})
    r = run_cli(bin_path, ["check-config", "--database-url", f"sqlite://{tmp_path}/x.db"], tmp_path, server.env)
    assert r.returncode != 0 and "does not exist" in r.stderr
    (tmp_path / "bad.yaml").write_text("agents:\n  - name: a\n    kind: robot\n")
    server = Server(bin_path, tmp_path / "bad", env={"AGENTS_FILE": str(tmp_path / "bad.yaml")})
    server.start(wait=False)
    assert server.proc.wait(timeout=15) != 0
    server._close_files()
    assert "agents[0].kind" in server.stderr()
