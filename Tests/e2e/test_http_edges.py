"""HTTP behaviour at the edges: rate limits, body limits, security headers, CORS, ownership and session states."""

from __future__ import annotations

import time

import pytest
import requests

from conftest import assert_json_error, auth_get, create_session, post_json, register

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def assert_rate_limited(r: requests.Response, limit: int) -> None:
    error = assert_json_error(r, 429, "rate_limited")
    retry_after = int(r.headers["Retry-After"])
    window = 60
    assert 1 <= retry_after <= window, r.headers
    assert r.headers["RateLimit-Limit"] == str(limit), r.headers
    assert r.headers["RateLimit-Remaining"] == "0", r.headers
    assert 1 <= int(r.headers["RateLimit-Reset"]) <= window, r.headers
    assert error["details"]["retryAfter"] == retry_after, error


def messages_url(server, session_id: str) -> str:
    return server.url(f"/api/sessions/{session_id}/messages")


# ---- rate limits ----------------------------------------------------------------------------------------------

def test_auth_tier_rate_limit(start_server):
    server = start_server(env={"RATE_LIMIT_AUTH": "3/1m"})
    # Four attempts from one address, each naming a different account (so only the per-address bucket is hit).
    attempts = [post_json(server.url("/auth/login"), {"username": f"nobody{i}", "password": "wrong-password"}) for i in range(4)]
    statuses = [r.status_code for r in attempts]
    assert statuses == [401, 401, 401, 429], (
        f"RATE_LIMIT_AUTH=3/1m must allow 3 login attempts per address and refuse the 4th; got {statuses}: "
        f"{[r.text for r in attempts]}")
    for r in attempts[:3]:
        assert_json_error(r, 401, "invalid_credentials")
    assert_rate_limited(attempts[3], 3)
    for name, value in SECURITY_HEADERS.items():
        assert attempts[3].headers.get(name) == value
    # The tier is per client address and covers every auth route.
    r = post_json(server.url("/auth/register"), {"username": "latecomer", "password": "long-enough-pw"})
    assert_rate_limited(r, 3)
    r = post_json(server.url("/auth/refresh"), {"refreshToken": "whatever"})
    assert_rate_limited(r, 3)
    # Other routes are not in the auth tier.
    assert requests.get(server.url("/health"), timeout=5).status_code == 200


def test_messages_tier_rate_limit(start_server):
    server = start_server(env={"RATE_LIMIT_MESSAGES": "2/1m"})
    alice = register(server)
    session_id = create_session(server, alice["accessToken"])["sessionId"]
    # A send refused as invalid does not use up the budget.
    assert_json_error(post_json(messages_url(server, session_id), {"content": ""}, token=alice["accessToken"]), 400, "validation_failed")
    answers = [post_json(messages_url(server, session_id), {"content": f"hello {i}"}, token=alice["accessToken"])
               for i in range(3)]
    assert [r.status_code for r in answers[:2]] == [201, 201], [r.text for r in answers]
    assert_rate_limited(answers[2], 2)

    r = auth_get(messages_url(server, session_id), alice["accessToken"])
    assert r.status_code == 200, "reading is not limited by the messages tier"
    assert [m["content"] for m in r.json()["messages"]] == ["hello 0", "hello 1"], "the refused message must not be stored"

    # The tier is per user: someone else can still send.
    bob = register(server)
    bob_session = create_session(server, bob["accessToken"])["sessionId"]
    r = post_json(messages_url(server, bob_session), {"content": "hi"}, token=bob["accessToken"])
    assert r.status_code == 201, r.text


def test_api_tier_counts_refused_tokens_and_unknown_routes(start_server):
    """RATE_LIMIT_API covers every /api/ request: one with a token that is refused, or to a path no route
    has, counts against the address like one without a token; every answer, errors included, carries the
    tier's RateLimit-* headers."""
    server = start_server(env={"RATE_LIMIT_API": "7/1m"})
    token = register(server)["accessToken"]  # /auth/ is in the tier too: 6 left for this address
    answers = [
        auth_get(server.url("/api/agents"), "not.a.token"),
        auth_get(server.url("/api/agents"), "not.a.token"),
        requests.get(server.url("/api/no-such-route"), timeout=5),
        requests.delete(server.url("/api/status"), timeout=5),  # 405
        requests.get(server.url("/api/agents"), timeout=5),  # 401 without a token
        requests.get(server.url("/api/status"), timeout=5),
    ]
    assert [r.status_code for r in answers] == [401, 401, 404, 405, 401, 200], [r.text for r in answers]
    assert [r.headers.get("RateLimit-Remaining") for r in answers] == ["5", "4", "3", "2", "1", "0"], [dict(r.headers) for r in answers]
    for r in (auth_get(server.url("/api/agents"), "not.a.token"), requests.get(server.url("/api/no-such-route"), timeout=5),
              requests.get(server.url("/api/status"), timeout=5)):
        assert_rate_limited(r, 7)
    # A valid token has its own bucket, per user.
    r = auth_get(server.url("/api/agents"), token)
    assert r.status_code == 200 and r.headers["RateLimit-Remaining"] == "6", (r.status_code, dict(r.headers))


# ---- body size ------------------------------------------------------------------------------------------------

MAX_BODY = 2048


@pytest.fixture
def small_body_server(start_server):
    return start_server(env={"MAX_BODY_BYTES": str(MAX_BODY)})


def test_body_under_limit_is_accepted(small_body_server):
    server = small_body_server
    alice = register(server)
    session_id = create_session(server, alice["accessToken"])["sessionId"]
    r = post_json(messages_url(server, session_id), {"content": "a" * (MAX_BODY - 100)}, token=alice["accessToken"])
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("route", ["message", "session", "register", "login", "refresh"])
def test_body_over_limit_is_413(small_body_server, route):
    server = small_body_server
    big = "x" * (MAX_BODY + 500)
    if route in ("message", "session"):
        alice = register(server)
        session_id = create_session(server, alice["accessToken"])["sessionId"]
        if route == "message":
            r = post_json(messages_url(server, session_id), {"content": big}, token=alice["accessToken"])
        else:
            r = post_json(server.url("/api/sessions"), {"metadata": {"note": big}}, token=alice["accessToken"])
    elif route == "register":
        r = post_json(server.url("/auth/register"), {"username": "bigbody", "password": "long-enough-pw", "email": big})
    elif route == "login":
        r = post_json(server.url("/auth/login"), {"username": "bigbody", "password": big})
    else:
        r = post_json(server.url("/auth/refresh"), {"refreshToken": big})
    assert_json_error(r, 413, "payload_too_large")
    assert requests.get(server.url("/health"), timeout=5).status_code == 200


# ---- headers --------------------------------------------------------------------------------------------------

def assert_security_headers(r: requests.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert r.headers.get(name) == value, f"{name} on {r.status_code}: {r.headers}"
    csp = r.headers.get("Content-Security-Policy", "")
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp, r.headers
    assert r.headers.get("X-Request-Id"), r.headers


def test_security_headers_on_success_and_errors(server):
    ok = requests.get(server.url("/health"), timeout=5)
    assert ok.status_code == 200
    assert_security_headers(ok)
    assert ok.headers.get("Cache-Control") == "no-store"

    missing = requests.get(server.url("/no/such/route"), timeout=5)
    assert_json_error(missing, 404, "not_found")
    assert_security_headers(missing)

    unauthenticated = requests.get(server.url("/api/sessions/00000000-0000-0000-0000-000000000000"), timeout=5)
    assert_json_error(unauthenticated, 401)
    assert_security_headers(unauthenticated)

    ids = {ok.headers["X-Request-Id"], missing.headers["X-Request-Id"], unauthenticated.headers["X-Request-Id"]}
    assert len(ids) == 3, "every request gets its own id"
    echoed = requests.get(server.url("/health"), headers={"X-Request-Id": "trace-abc_123"}, timeout=5)
    assert echoed.headers["X-Request-Id"] == "trace-abc_123"
    # An id that is too long or has odd characters is replaced, not echoed into responses and logs.
    for given in ("x" * 100, "a b<script>"):
        replaced = requests.get(server.url("/health"), headers={"X-Request-Id": given}, timeout=5)
        assert replaced.headers["X-Request-Id"] not in ("", given), replaced.headers


def test_cors(start_server):
    server = start_server(env={"CORS_ORIGINS": "https://a.example"})
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"}

    r = requests.options(server.url("/api/sessions"), headers={"Origin": "https://a.example", **preflight}, timeout=5)
    assert r.status_code == 204, r.text
    assert r.headers.get("Access-Control-Allow-Origin") == "https://a.example"
    assert "POST" in r.headers.get("Access-Control-Allow-Methods", "")
    allowed_headers = r.headers.get("Access-Control-Allow-Headers", "").lower()
    assert "authorization" in allowed_headers and "content-type" in allowed_headers

    r = requests.options(server.url("/api/sessions"), headers={"Origin": "https://evil.example", **preflight}, timeout=5)
    assert_json_error(r, 403)
    assert "Access-Control-Allow-Origin" not in r.headers

    # Simple requests: the allowed origin can read the response, another origin cannot.
    r = requests.get(server.url("/health"), headers={"Origin": "https://a.example"}, timeout=5)
    assert r.status_code == 200
    assert r.headers.get("Access-Control-Allow-Origin") == "https://a.example"
    assert "X-Request-Id" in r.headers.get("Access-Control-Expose-Headers", "")
    r = requests.get(server.url("/health"), headers={"Origin": "https://evil.example"}, timeout=5)
    assert r.status_code == 200
    assert "Access-Control-Allow-Origin" not in r.headers
    # With origins configured every answer depends on the Origin (RFC 9110 §12.5.5), whatever it was,
    # and a route's own Vary is kept: a cache must not serve the gzip copy to a client that did not ask for it.
    assert "origin" in r.headers.get("Vary", "").lower(), r.headers
    head, _ = raw_head(server, "/console/", {"Origin": "https://a.example", "Accept-Encoding": "gzip"})
    vary = [v.strip().lower() for v in head.get("vary", "").split(",")]
    assert "content-encoding" in head and set(vary) >= {"accept-encoding", "origin"}, head


def raw_head(server, path: str, headers: dict) -> tuple[dict, bytes]:
    """The response's headers (lowercased names) and its body as sent, without decompressing."""
    import socket
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{lines}Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    fields = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return fields, body


# ---- ownership and session states ---------------------------------------------------------------------------

def test_other_users_session_is_404(server):
    alice, bob = register(server), register(server)
    session_id = create_session(server, alice["accessToken"], metadata={"topic": "private"})["sessionId"]
    r = post_json(messages_url(server, session_id), {"content": "alice's secret"}, token=alice["accessToken"])
    assert r.status_code == 201, r.text
    message_id = r.json()["id"]

    bob_token = bob["accessToken"]
    h = {"Authorization": f"Bearer {bob_token}"}
    base = server.url(f"/api/sessions/{session_id}")
    attempts = {
        "GET session": requests.get(base, headers=h, timeout=5),
        "GET messages": requests.get(base + "/messages", headers=h, timeout=5),
        "GET message": requests.get(base + f"/messages/{message_id}", headers=h, timeout=5),
        "POST message": post_json(base + "/messages", {"content": "bob was here"}, token=bob_token),
        "POST resume": post_json(base + "/resume", {}, token=bob_token),
        "POST resolve": post_json(base + "/resolve", {}, token=bob_token),
        "DELETE session": requests.delete(base, headers=h, timeout=5),
    }
    failures = []
    for name, r in attempts.items():
        try:
            assert_json_error(r, 404, "not_found")
            assert "alice's secret" not in r.text and "private" not in r.text
        except AssertionError as e:
            failures.append(f"{name}: {e}")
    assert not failures, "\n".join(failures)

    # Bob's attempts changed nothing.
    r = auth_get(base, alice["accessToken"])
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["isResolved"]) == ("active", False)
    r = auth_get(base + "/messages", alice["accessToken"])
    assert [m["content"] for m in r.json()["messages"]] == ["alice's secret"]

    # Nor may bob list alice's sessions.
    r = auth_get(server.url(f"/api/users/{alice['user']['id']}/sessions"), bob_token)
    assert_json_error(r, 403)


def test_expired_session_can_be_resumed(start_server):
    server = start_server(env={"SESSION_TTL": "2s"})
    alice = register(server)
    token = alice["accessToken"]
    session = create_session(server, token)
    session_id = session["sessionId"]
    r = post_json(messages_url(server, session_id), {"content": "before expiry"}, token=token)
    assert r.status_code == 201, r.text

    time.sleep(3)
    r = post_json(messages_url(server, session_id), {"content": "too late"}, token=token)
    assert_json_error(r, 410, "session_expired")
    r = auth_get(server.url(f"/api/sessions/{session_id}"), token)
    assert r.json()["state"] == "expired"

    r = post_json(server.url(f"/api/sessions/{session_id}/resume"), {}, token=token)
    assert r.status_code == 200, r.text
    resumed = r.json()
    assert resumed["session"]["state"] == "active"
    assert resumed["session"]["expiresAt"] > session["expiresAt"]
    assert [m["content"] for m in resumed["messages"]] == ["before expiry"]

    r = post_json(messages_url(server, session_id), {"content": "after resume"}, token=token)
    assert r.status_code == 201, r.text
    r = auth_get(messages_url(server, session_id), token)
    assert [m["content"] for m in r.json()["messages"]] == ["before expiry", "after resume"]


def test_resolved_session_refuses_messages_and_resume(server):
    alice = register(server)
    token = alice["accessToken"]
    session_id = create_session(server, token)["sessionId"]
    r = post_json(messages_url(server, session_id), {"content": "thanks, solved"}, token=token)
    assert r.status_code == 201, r.text

    r = post_json(server.url(f"/api/sessions/{session_id}/resolve"), {}, token=token)
    assert r.status_code == 200, r.text
    assert r.json()["isResolved"] is True and r.json()["state"] == "resolved" and r.json()["resolvedAt"]

    assert_json_error(post_json(messages_url(server, session_id), {"content": "one more"}, token=token), 409, "session_resolved")
    assert_json_error(post_json(server.url(f"/api/sessions/{session_id}/resume"), {}, token=token), 409, "session_resolved")

    r = auth_get(messages_url(server, session_id), token)
    assert r.status_code == 200
    assert [m["content"] for m in r.json()["messages"]] == ["thanks, solved"]
