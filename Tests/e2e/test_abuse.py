"""What an attacker tries from outside: locking a user out by failing logins in their name, and flooding the
realtime endpoints with handshakes, unauthenticated sessions and idle long-polls."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from websockets.sync.client import connect as ws_connect

from conftest import PASSWORD, register

ATTACKERS = [f"127.0.0.{i}" for i in range(2, 8)]


def post_from(server, source: str, path: str, body: dict) -> int:
    """POSTs JSON from the loopback address `source`; returns the status."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10, source_address=(source, 0))
    try:
        connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def login_from(server, source: str, username: str, password: str) -> int:
    return post_from(server, source, "/auth/login", {"username": username, "password": password})


def test_failed_logins_from_elsewhere_never_lock_out_the_right_password(start_server):
    """Attackers on six addresses fail one login a second each in the victim's name; the victim, logging in
    every 4 s from its own address, always gets in, while the attackers are refused with 429."""
    server = start_server(env={"RATE_LIMIT_AUTH": "10/1m"})
    victim = register(server)["user"]["username"]
    stop = threading.Event()
    attacker_statuses: list[int] = []

    def attack(source: str):
        while not stop.is_set():
            attacker_statuses.append(login_from(server, source, victim, "wrong-password-guess"))
            stop.wait(1.0)

    threads = [threading.Thread(target=attack, args=(source,), daemon=True) for source in ATTACKERS]
    for thread in threads:
        thread.start()
    victim_statuses = []
    try:
        time.sleep(3)  # the account is well past its failure budget by now
        for _ in range(6):
            victim_statuses.append(login_from(server, "127.0.0.1", victim, PASSWORD))
            time.sleep(4)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
    assert victim_statuses == [200] * 6, f"the victim was refused: {victim_statuses}"
    assert 429 in attacker_statuses, f"the attackers were never slowed down: {attacker_statuses}"
    assert attacker_statuses.count(401) <= len(ATTACKERS) * 10 + 5, "failures are not limited per address"


def test_a_success_clears_that_addresses_failures_and_failures_are_counted_not_requests(start_server):
    server = start_server(env={"RATE_LIMIT_AUTH": "3/1m"})
    users = [f"lockout_user_{i}" for i in range(4)]
    for i, name in enumerate(users):  # each from its own address: registering is in the auth tier too
        assert post_from(server, f"127.0.1.{i + 1}", "/auth/register", {"username": name, "password": PASSWORD}) == 201
    # Many successful logins from one address are not limited by the failure budget.
    assert [login_from(server, "127.0.0.9", users[0], PASSWORD) for _ in range(6)] == [200] * 6
    # Two failures, a success (it clears the address's failures), two more failures, each for another
    # account: the address may still try (without the clearing, its fourth failure would be refused).
    attempts = [(users[1], "bad-1"), (users[1], "bad-2"), (users[0], PASSWORD), (users[2], "bad-3"), (users[3], "bad-4")]
    statuses = [login_from(server, "127.0.0.9", name, password) for name, password in attempts]
    assert statuses == [401, 401, 200, 401, 401], statuses
    # Without a success in between, the fourth failure in the window is refused before the password is checked.
    statuses = [login_from(server, "127.0.0.10", users[i % 4], f"bad-two-{i}") for i in range(4)]
    assert statuses == [401, 401, 401, 429], statuses


def test_wrong_passwords_sent_at_once_are_counted_as_they_arrive(start_server):
    """Failures sent together are refused past the budget before their passwords are hashed, like ones sent
    one after another (each attempt counts as a failure until its password proves right)."""
    server = start_server(env={"RATE_LIMIT_AUTH": "5/1m"})
    victim = register(server)["user"]["username"]
    with ThreadPoolExecutor(max_workers=30) as pool:
        statuses = list(pool.map(lambda i: login_from(server, "127.0.0.11", victim, f"guess-{i}"), range(30)))
    assert statuses.count(401) <= 5 and statuses.count(429) >= 25, statuses
    # The account is over its budget only for the address that failed: its owner elsewhere still gets in.
    assert login_from(server, "127.0.0.12", victim, PASSWORD) == 200


def test_a_username_must_be_ascii_even_where_unicode_calls_it_equal(server):
    """The Kelvin sign (U+212A) is canonically equivalent to K: a second account that looks like the first
    must not be made with it."""
    name = f"Kate_{os.urandom(3).hex()}"
    assert post_from(server, "127.0.0.1", "/auth/register", {"username": name, "password": PASSWORD}) == 201
    assert post_from(server, "127.0.0.1", "/auth/register", {"username": "\u212a" + name[1:], "password": PASSWORD}) == 400


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_idle_long_polls_cost_no_cpu(start_server):
    server = start_server(env={"REALTIME_MAX_UNAUTHENTICATED_PER_IP": "1000"})
    count = 200
    sids = []
    for _ in range(count):
        r = requests.get(server.url("/socket.io/?EIO=4&transport=polling"), timeout=5)
        assert r.status_code == 200 and r.text.startswith("0"), r.text
        sids.append(json.loads(r.text[1:])["sid"])

    def poll(sid: str):
        try:
            requests.get(server.url(f"/socket.io/?EIO=4&transport=polling&sid={sid}"), timeout=30)
        except requests.RequestException:
            pass

    with ThreadPoolExecutor(max_workers=count) as pool:
        for sid in sids:
            pool.submit(poll, sid)
        time.sleep(2)  # every poll is pending now
        before = cpu_seconds(server.proc.pid)
        time.sleep(4)
        used = cpu_seconds(server.proc.pid) - before
        assert used < 0.25, f"{count} idle long-polls used {used:.2f} s of CPU in 4 s"
        for sid in sids:  # end the polls: the client closes each session
            requests.post(server.url(f"/socket.io/?EIO=4&transport=polling&sid={sid}"), data="1", timeout=5)


def test_realtime_handshakes_are_rate_limited_per_address(start_server):
    server = start_server(env={"RATE_LIMIT_API": "20/1m", "REALTIME_MAX_UNAUTHENTICATED_PER_IP": "1000"})
    statuses = [requests.get(server.url("/socket.io/?EIO=4&transport=polling"), timeout=5).status_code for _ in range(25)]
    assert statuses[:20] == [200] * 20 and set(statuses[20:]) == {429}, statuses
    r = requests.get(server.url("/socket.io/?EIO=4&transport=polling"), timeout=5)
    assert r.status_code == 429 and r.headers.get("Retry-After") and r.json()["error"]["code"] == "rate_limited", r.text


def test_unauthenticated_realtime_connections_are_capped_per_address(start_server):
    server = start_server(env={"REALTIME_MAX_UNAUTHENTICATED_PER_IP": "5"})
    opened = [requests.get(server.url("/socket.io/?EIO=4&transport=polling"), timeout=5) for _ in range(5)]
    assert [r.status_code for r in opened] == [200] * 5
    r = requests.get(server.url("/socket.io/?EIO=4&transport=polling"), timeout=5)
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_connections", r.text
    # The same cap covers /ws before authentication; the upgrade is refused with the same answer.
    try:
        with ws_connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=5, proxy=None):
            raise AssertionError("a sixth unauthenticated connection was accepted")
    except Exception as e:  # websockets raises InvalidStatus for a refused upgrade
        assert "429" in str(e), e
    # Another address is not affected.
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5, source_address=("127.0.0.3", 0))
    connection.request("GET", "/socket.io/?EIO=4&transport=polling")
    assert connection.getresponse().status == 200
    connection.close()
    # Closing the sessions frees the slots.
    for response in opened:
        sid = json.loads(response.text[1:])["sid"]
        requests.post(server.url(f"/socket.io/?EIO=4&transport=polling&sid={sid}"), data="1", timeout=5)
    time.sleep(0.3)
    assert requests.get(server.url("/socket.io/?EIO=4&transport=polling"), timeout=5).status_code == 200


def test_behind_a_trusted_proxy_each_client_address_has_its_own_limits(start_server):
    """With TRUST_PROXY, WebSocket upgrades count against the forwarded address like every other request (they
    counted against the proxy's, so all clients shared one cap), one address is one bucket however it is written
    (`::ffff:10.0.0.1`, `10.0.0.1:5555`), and IPv6 addresses count by their /64."""
    server = start_server(env={"TRUST_PROXY": "true", "REALTIME_MAX_UNAUTHENTICATED_PER_IP": "2"})

    def upgrade(forwarded: str) -> int:
        try:
            held.enter_context(ws_connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=5, proxy=None,
                                          additional_headers={"X-Forwarded-For": f"203.0.113.9, {forwarded}"}))
            return 101
        except Exception as e:  # websockets raises InvalidStatus for a refused upgrade
            assert "429" in str(e), e
            return 429

    with contextlib.ExitStack() as held:
        assert [upgrade(a) for a in ("10.0.0.1", "::ffff:10.0.0.1", "10.0.0.1:5555")] == [101, 101, 429]
        assert [upgrade(a) for a in ("10.0.0.2", "[2001:db8:0:0::1]:443", "2001:DB8::2", "2001:db8::ffff")] == [101, 101, 101, 429]
        assert upgrade("2001:db8:0:1::1") == 101  # another /64


def test_refused_realtime_tokens_count_against_the_address(start_server):
    """Guessing tokens over an open connection is limited like opening connections: each refused `authenticate`
    counts against the address's realtime budget (RATE_LIMIT_API), and past it tokens are refused unchecked."""
    server = start_server(env={"RATE_LIMIT_API": "5/1m"})
    with ws_connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=5, proxy=None) as ws:  # the upgrade counts: 4 left
        codes = []
        for i in range(8):
            ws.send(json.dumps({"type": "authenticate", "id": i, "token": f"guess.{i}.token"}))
            codes.append(json.loads(ws.recv(timeout=5))["error"]["code"])
    assert codes == ["invalid_token"] * 4 + ["rate_limited"] * 4, codes


def test_leaving_the_namespace_makes_a_session_unauthenticated_again(start_server):
    """A Socket.IO client that authenticates and then sends DISCONNECT (`41`) keeps its Engine.IO session,
    but from then on it counts against its address's cap on unauthenticated sessions and is closed when it
    has not authenticated again within the timeout: `40` then `41` is no way around either limit."""
    server = start_server(env={"REALTIME_MAX_UNAUTHENTICATED_PER_IP": "1", "REALTIME_AUTH_TIMEOUT": "2s"})
    url = server.url("/socket.io/")

    def handshake():
        return requests.get(url, params={"EIO": "4", "transport": "polling"}, timeout=5)

    def post(sid, body):
        r = requests.post(url, params={"EIO": "4", "transport": "polling", "sid": sid}, data=body, timeout=5)
        assert (r.status_code, r.text) == (200, "ok"), r.text

    def poll(sid):
        return requests.get(url, params={"EIO": "4", "transport": "polling", "sid": sid}, timeout=10)

    token = register(server)["accessToken"]
    sid = json.loads(handshake().text[1:])["sid"]
    post(sid, "40" + json.dumps({"token": token}))
    assert poll(sid).text.startswith('40{"sid":')
    # Authenticated, it no longer counts: another session may open (and closes again).
    other = handshake()
    assert other.status_code == 200, other.text
    post(json.loads(other.text[1:])["sid"], "1")
    time.sleep(0.3)

    left = time.monotonic()
    post(sid, "41")
    time.sleep(0.3)
    refused = handshake()
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_connections", refused.text
    # Not authenticated again within 2 s: the server ends the session with a close packet, and nothing is
    # sent on the namespace the client has left.
    packets = []
    while time.monotonic() - left < 8:
        r = poll(sid)
        if r.status_code != 200:
            break
        packets += r.text.split("\x1e")
        if packets[-1] == "1":
            break
    assert packets and packets[-1] == "1", packets
    assert time.monotonic() - left >= 1.5, "closed before the authentication timeout"
    assert not any(p.startswith("4") for p in packets), f"Socket.IO packets on a namespace the client left: {packets}"
    time.sleep(0.3)
    assert handshake().status_code == 200
