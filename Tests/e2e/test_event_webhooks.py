"""Durable event webhooks (WEBHOOKS_FILE): events recorded by the database in the same transaction as the change,
delivered at least once, signed, in order per session, retried across failures, timeouts and restarts of the server
(SIGTERM and kill -9), parked after WEBHOOK_RETRY_PERIOD and sent again on request; on Postgres with two instances,
each event delivered once."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from conftest import Server, assert_json_error, auth_get, create_session, post_json, register
from fakes import answer_redirect
from test_agents import add_user, wait_for

SECRET = "event-secret-0123456789"


class Receiver:
    """Records every delivery; `mode` decides the answer: ok, fail (503), slow (answers after 3 s), down (connection refused),
    redirect (301 to a GET that would answer 200; GETs are recorded in `followed`), drip (200 with a 100-byte body sent a
    byte every 0.5 s). An event of a session in `hold` is answered 204 only after that many seconds."""

    def __init__(self):
        self.mode = "ok"
        self.hold: dict[str, float] = {}
        self.deliveries: list[dict] = []
        self.followed: list[str] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                receiver.followed.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                timestamp = self.headers.get("X-Chat-Timestamp", "")
                expected = "sha256=" + hmac.new(SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
                mode = receiver.mode
                event = json.loads(body)
                subject = event["data"].get("message") or event["data"].get("session")
                with receiver.lock:
                    receiver.deliveries.append({"event": event, "id": self.headers.get("X-Chat-Event-Id"),
                                                "type": self.headers.get("X-Chat-Event"), "mode": mode, "at": time.monotonic(),
                                                "signed": hmac.compare_digest(expected, self.headers.get("X-Chat-Signature", ""))})
                if mode == "redirect":
                    return answer_redirect(self, f"http://127.0.0.1:{receiver.port}/elsewhere")
                if mode == "drip":
                    self.send_response(200)
                    self.send_header("Content-Length", "100")
                    self.end_headers()
                    try:
                        for _ in range(100):
                            self.wfile.write(b"x")
                            self.wfile.flush()
                            time.sleep(0.5)
                    except OSError:
                        pass
                    return
                if mode == "slow":
                    time.sleep(3)
                time.sleep(receiver.hold.get(subject["sessionId"], 0))
                status = 503 if mode == "fail" else 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def accepted(self) -> list[dict]:
        """Events answered 2xx, in the order they arrived."""
        with self.lock:
            return [d for d in self.deliveries if d["mode"] == "ok"]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def webhooks_env(tmp_path, receiver: Receiver, timeout: str = "1s", **extra) -> dict:
    path = tmp_path / "webhooks.yaml"
    path.write_text(f"""\
webhooks:
  - name: crm
    url: http://127.0.0.1:{receiver.port}/hook
    secret: {SECRET}
    timeout: {timeout}
    events: [message.created, message.updated, message.deleted, session.created, session.resolved, handoff.waiting, handoff.claimed]
""")
    return {"WEBHOOKS_FILE": str(path), **extra}


def send(server: Server, token: str, sid: str, content: str) -> dict:
    r = post_json(server.url(f"/api/sessions/{sid}/messages"), {"content": content}, token=token)
    assert r.status_code == 201, r.text
    return r.json()


def test_every_event_arrives_signed_in_order(start_server, tmp_path, receiver):
    server = start_server(env=webhooks_env(tmp_path, receiver))
    token = register(server)["accessToken"]
    sid = create_session(server, token)["sessionId"]
    first = send(server, token, sid, "one")
    send(server, token, sid, "two")
    h = {"Authorization": f"Bearer {token}"}
    assert requests.patch(server.url(f"/api/sessions/{sid}/messages/{first['id']}"), json={"content": "one!"}, headers=h, timeout=5).status_code == 200
    assert requests.delete(server.url(f"/api/sessions/{sid}/messages/{first['id']}"), headers=h, timeout=5).status_code == 200
    assert requests.post(server.url(f"/api/sessions/{sid}/resolve"), headers=h, timeout=5).status_code == 200
    wait_for(lambda: len(receiver.accepted()) == 6, what="six events")
    got = receiver.accepted()
    assert [d["type"] for d in got] == ["session.created", "message.created", "message.created", "message.updated", "message.deleted",
                                       "session.resolved"]
    assert all(d["signed"] for d in got) and len({d["id"] for d in got}) == 6
    assert all(d["event"]["id"] == d["id"] and d["event"]["type"] == d["type"] for d in got)
    assert got[1]["event"]["data"]["message"]["content"] == "one" and got[3]["event"]["data"]["message"]["content"] == "one!"
    assert got[4]["event"]["data"]["message"]["deletedAt"] and got[5]["event"]["data"]["session"]["state"] == "resolved"
    assert got[1]["event"]["data"]["message"]["id"] == first["id"] and got[0]["event"]["data"]["session"]["sessionId"] == sid
    # The message and the session as the API writes them, as they were at the event.
    assert got[1]["event"]["data"]["message"] == {**got[3]["event"]["data"]["message"], "content": "one", "editedAt": None,
                                                  "updatedAt": got[1]["event"]["data"]["message"]["createdAt"]}
    assert set(got[0]["event"]["data"]["session"]) == set(auth_get(server.url(f"/api/sessions/{sid}"), token).json())


def test_failures_timeouts_and_restarts_lose_nothing_and_keep_order(start_server, tmp_path, receiver):
    server = start_server(env=webhooks_env(tmp_path, receiver))
    token = register(server)["accessToken"]
    sids = [create_session(server, token)["sessionId"] for _ in range(2)]
    wait_for(lambda: len(receiver.accepted()) == 2, what="session.created twice")
    sent = {sid: [] for sid in sids}
    receiver.mode = "fail"
    for i in range(3):
        for sid in sids:
            sent[sid].append(send(server, token, sid, f"fail {i}")["id"])
    time.sleep(1.5)
    receiver.mode = "slow"  # answers after the 1 s timeout: counted as failed, may arrive twice
    for sid in sids:
        sent[sid].append(send(server, token, sid, "slow")["id"])
    time.sleep(2)
    server.stop()  # SIGTERM with deliveries pending
    receiver.mode = "ok"
    server.start()
    for sid in sids:
        sent[sid].append(send(server, token, sid, "after restart")["id"])
    receiver.mode = "slow"  # a delivery is in flight when the server dies
    for sid in sids:
        sent[sid].append(send(server, token, sid, "before the crash")["id"])
    time.sleep(0.5)
    server.kill()
    receiver.mode = "ok"
    server.start()
    wait_for(lambda: all(ids[-1] in {d["event"]["data"]["message"]["id"] for d in receiver.accepted() if d["type"] == "message.created"}
                         for ids in sent.values()), timeout=60, what="every message delivered")
    for sid, ids in sent.items():
        delivered = [d["event"]["data"]["message"]["id"] for d in receiver.accepted()
                     if d["type"] == "message.created" and d["event"]["data"]["message"]["sessionId"] == sid]
        # Every message, in the order sent; a repeat only right after itself (an acknowledgement that was lost).
        deduplicated = [m for i, m in enumerate(delivered) if i == 0 or delivered[i - 1] != m]
        assert deduplicated == ids, (delivered, ids)


def test_a_redirect_or_a_dripping_answer_is_a_failed_attempt(start_server, tmp_path, receiver):
    """A 3xx is not a delivery (followed, the POST became a GET elsewhere whose 200 lost the event), and the
    timeout bounds the whole attempt, the answer's body too (a dripping body held the attempt past its claim,
    and the event was sent again meanwhile)."""
    receiver.mode = "redirect"
    server = start_server(env=webhooks_env(tmp_path, receiver))
    token = register(server)["accessToken"]
    sid = create_session(server, token)["sessionId"]
    wait_for(lambda: len(receiver.deliveries) >= 2, timeout=10, what="a second attempt after a 301")
    assert receiver.followed == []
    receiver.mode = "drip"
    wait_for(lambda: sum(d["mode"] == "drip" for d in receiver.deliveries) >= 2, timeout=20, what="a second attempt after a dripping answer")
    drips = [d["at"] for d in receiver.deliveries if d["mode"] == "drip"]
    # 1 s of timeout and a backoff of at most 4.8 s; held by the drip, the event came again only when its claim ran out (11 s).
    assert drips[1] - drips[0] < 8, f"the second attempt came {drips[1] - drips[0]:.1f} s after the first"
    receiver.mode = "ok"
    wait_for(lambda: receiver.accepted(), timeout=30, what="the delivery once the receiver answers")
    assert [d["event"]["data"]["session"]["sessionId"] for d in receiver.accepted()] == [sid]


def test_parked_deliveries_are_listed_and_sent_again(start_server, tmp_path, receiver):
    server = start_server(env=webhooks_env(tmp_path, receiver, WEBHOOK_RETRY_PERIOD="3s"))
    admin = add_user(server, "admin")
    token = register(server)["accessToken"]
    receiver.mode = "fail"
    sid = create_session(server, token)["sessionId"]
    h = {"Authorization": f"Bearer {admin['accessToken']}"}

    def parked():
        return auth_get(server.url("/api/admin/webhooks/deliveries?status=parked"), admin["accessToken"]).json()["deliveries"]
    wait_for(lambda: len(parked()) == 1, timeout=20, what="the delivery parked")
    item = parked()[0]
    assert (item["webhook"], item["type"], item["sessionId"], item["status"]) == ("crm", "session.created", sid, "parked")
    assert item["attempts"] >= 2 and "503" in item["lastError"]
    assert_json_error(auth_get(server.url("/api/admin/webhooks/deliveries"), token), 403, "forbidden")
    assert_json_error(requests.post(server.url(f"/api/admin/webhooks/deliveries/nope/{item['eventId']}/redeliver"), headers=h, timeout=5), 404)
    receiver.mode = "ok"
    r = requests.post(server.url(f"/api/admin/webhooks/deliveries/crm/{item['eventId']}/redeliver"), headers=h, timeout=5)
    assert r.status_code == 202, r.text
    wait_for(lambda: any(d["id"] == item["eventId"] for d in receiver.accepted()), what="the redelivery")
    assert parked() == []
    delivered = auth_get(server.url("/api/admin/webhooks/deliveries?status=delivered"), admin["accessToken"]).json()["deliveries"]
    assert [d["eventId"] for d in delivered] == [item["eventId"]]


def test_a_slow_receiver_holds_up_only_its_own_session(start_server, tmp_path, receiver):
    """A call that takes long holds back its session's later events (order), not another session's."""
    server = start_server(env=webhooks_env(tmp_path, receiver, timeout="10s"))
    token = register(server)["accessToken"]
    slow, fast = create_session(server, token)["sessionId"], create_session(server, token)["sessionId"]
    wait_for(lambda: len(receiver.accepted()) == 2, what="both session.created")
    receiver.hold[slow] = 5
    held = send(server, token, slow, "held")
    wait_for(lambda: any(d["event"]["data"].get("message", {}).get("id") == held["id"] for d in receiver.deliveries), what="the slow call")
    after_held = send(server, token, slow, "after the held one")
    sent_at, ids = time.monotonic(), [send(server, token, fast, f"fast {i}")["id"] for i in range(3)]

    def arrivals(session):
        return [d for d in receiver.deliveries if d["type"] == "message.created" and d["event"]["data"]["message"]["sessionId"] == session]
    wait_for(lambda: len(arrivals(fast)) == 3, timeout=4, what="the other session's events while the slow call runs")
    assert [d["event"]["data"]["message"]["id"] for d in arrivals(fast)] == ids
    assert max(d["at"] for d in arrivals(fast)) - sent_at < 2.5, "the other session's events waited for the slow call"
    assert [d["event"]["data"]["message"]["id"] for d in arrivals(slow)] == [held["id"]], "the slow session's next event waits for it"
    wait_for(lambda: len(arrivals(slow)) == 2, timeout=10, what="the slow session's next event, once the slow call is answered")
    assert [d["event"]["data"]["message"]["id"] for d in arrivals(slow)] == [held["id"], after_held["id"]]


def test_a_redelivered_event_is_retried_for_a_new_period(start_server, tmp_path, receiver):
    server = start_server(env=webhooks_env(tmp_path, receiver, WEBHOOK_RETRY_PERIOD="3s"))
    admin = add_user(server, "admin")["accessToken"]
    receiver.mode = "fail"
    token = register(server)["accessToken"]
    create_session(server, token)

    def parked():
        return auth_get(server.url("/api/admin/webhooks/deliveries?status=parked"), admin).json()["deliveries"]
    wait_for(lambda: len(parked()) == 1, timeout=20, what="the delivery parked")
    event_id = parked()[0]["eventId"]
    time.sleep(4)  # the event is now older than the retry period
    attempts = len([d for d in receiver.deliveries if d["id"] == event_id])
    r = requests.post(server.url(f"/api/admin/webhooks/deliveries/crm/{event_id}/redeliver"), headers={"Authorization": f"Bearer {admin}"},
                      timeout=5)
    assert r.status_code == 202, r.text
    wait_for(lambda: len(parked()) == 1, timeout=20, what="parked again")
    again = len([d for d in receiver.deliveries if d["id"] == event_id]) - attempts
    assert again >= 2 and parked()[0]["attempts"] == again, "retried for WEBHOOK_RETRY_PERIOD after the redelivery, not tried once"


def test_two_postgres_instances_deliver_each_event_once(start_server, tmp_path, receiver, pg_url):
    env = webhooks_env(tmp_path, receiver)
    a = start_server(name="a", env=env, database_url=pg_url)
    b = start_server(name="b", env=env, database_url=pg_url)
    token = register(a)["accessToken"]
    sid = create_session(a, token)["sessionId"]
    ids = [send(a if i % 2 else b, token, sid, f"m{i}")["id"] for i in range(20)]
    wait_for(lambda: len([d for d in receiver.accepted() if d["type"] == "message.created"]) >= 20, timeout=30, what="twenty messages")
    time.sleep(1)
    delivered = [d["event"]["data"]["message"]["id"] for d in receiver.accepted() if d["type"] == "message.created"]
    assert delivered == ids

    # Many writers on both at once: events commit in another order than their numbers were drawn; every one is
    # still delivered, once (a cursor on the number alone passed over some for good).
    sessions = [create_session(a if i % 2 else b, token)["sessionId"] for i in range(8)]

    def sender(i: int) -> list[str]:
        server = a if i % 2 else b
        return [send(server, token, sessions[i], f"burst {i}.{n}")["id"] for n in range(60)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        burst = {m for ids in pool.map(sender, range(8)) for m in ids}
    wait_for(lambda: burst <= {d["event"]["data"]["message"]["id"] for d in receiver.accepted() if d["type"] == "message.created"},
             timeout=60, what="every message of the burst delivered")
    time.sleep(1)
    delivered = [d["event"]["data"]["message"]["id"] for d in receiver.accepted() if d["type"] == "message.created"]
    assert len(delivered) == len(set(delivered)), "an event was delivered twice"
    for session in sessions:  # in order per session
        mine = [d["event"]["data"]["message"]["content"] for d in receiver.accepted()
                if d["type"] == "message.created" and d["event"]["data"]["message"]["sessionId"] == session]
        assert mine == sorted(mine, key=lambda c: int(c.rsplit(".", 1)[1])), mine


def test_copy_to_postgres_carries_the_outbox(start_server, bin_path, tmp_path, receiver, pg_url):
    """Switching databases with events still undelivered: the server on the new one delivers them, in order, and
    nothing that had been delivered before the move."""
    from conftest import PASSWORD, base_env, psql, run_cli
    env = webhooks_env(tmp_path, receiver)
    source = start_server(name="outbox-source", env=env)
    token = register(source)["accessToken"]
    sid = create_session(source, token)["sessionId"]
    wait_for(lambda: len(receiver.accepted()) == 1, what="session.created")
    receiver.mode = "fail"
    ids = [send(source, token, sid, f"pending {i}")["id"] for i in range(3)]
    wait_for(lambda: len(receiver.deliveries) >= 2, what="a failed attempt")

    def deliveries_made():
        with closing(sqlite3.connect(source.db_path)) as db:  # closed: copy refuses a database another process holds
            return db.execute("SELECT count(*) FROM webhook_deliveries").fetchone()[0]
    wait_for(lambda: deliveries_made() == 4, what="a delivery for each event")
    source.stop()
    r = run_cli(bin_path, ["copy", "--from", f"sqlite://{source.db_path}", "--to", pg_url], tmp_path, base_env(tmp_path), timeout=120)
    assert r.returncode == 0 and "4 webhook events" in r.stdout, r.stdout + r.stderr
    assert psql(pg_url, "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'") == "3"
    receiver.mode = "ok"
    moved = start_server(name="outbox-pg", env=env, database_url=pg_url)
    username = psql(pg_url, "SELECT username FROM users")
    token = post_json(moved.url("/auth/login"), {"username": username, "password": PASSWORD}).json()["accessToken"]
    ids.append(send(moved, token, sid, "after the move")["id"])

    def messages():
        return [d["event"]["data"]["message"]["id"] for d in receiver.accepted() if d["type"] == "message.created"]
    wait_for(lambda: len(messages()) >= 4, timeout=30, what="the pending events and the new one")
    time.sleep(1)
    assert messages() == ids
    assert [d["type"] for d in receiver.accepted()].count("session.created") == 1


def test_the_example_is_valid_and_a_bad_webhooks_file_stops_the_start(start_server, tmp_path, bin_path):
    from pathlib import Path

    from conftest import base_env, run_cli
    example = Path(__file__).resolve().parents[2] / "examples" / "webhooks.yaml"
    env = base_env(tmp_path, WEBHOOKS_FILE=str(example), CRM_WEBHOOK_SECRET=SECRET, PAGER_WEBHOOK_SECRET=SECRET)
    r = run_cli(bin_path, ["check-config"], tmp_path, env)
    assert r.returncode == 0 and "2 webhooks: crm, pager" in r.stdout, r.stdout + r.stderr
    path = tmp_path / "bad.yaml"
    path.write_text("webhooks:\n  - name: x\n    url: http://127.0.0.1:1/\n    secret: short\n    events: [message.created]\n")
    env = base_env(tmp_path, WEBHOOKS_FILE=str(path))
    r = run_cli(bin_path, ["check-config"], tmp_path, env)
    assert r.returncode == 78 and "secret" in r.stderr, r.stderr
    path.write_text(f"webhooks:\n  - name: x\n    url: http://127.0.0.1:1/\n    secret: {SECRET}\n    events: [message.exploded]\n")
    r = run_cli(bin_path, ["check-config"], tmp_path, env)
    assert r.returncode == 78 and "message.exploded" in r.stderr, r.stderr
