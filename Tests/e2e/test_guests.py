"""Guest visitors (`GUEST_ACCESS=on`): `POST /auth/guest` makes an account without a name or password that lives on its
refresh token, limited per client address (`RATE_LIMIT_GUEST`); guests chat in their own sessions only and are deleted
with their data after `GUEST_TTL` without activity. The widget's files: `/widget.js` for any site, `/widget/` framed
only by `WIDGET_ORIGINS`."""

from __future__ import annotations

import time

import requests

from conftest import assert_json_error, auth_get, create_session, post_json, register
from test_agents import wait_for


def guest(server, expect: int = 201) -> dict:
    r = requests.post(server.url("/auth/guest"), timeout=10)
    assert r.status_code == expect, r.text
    return r.json()


def test_guest_access_is_off_unless_configured(start_server):
    server = start_server()
    assert_json_error(requests.post(server.url("/auth/guest"), timeout=10), 403, "guest_access_disabled")


def test_a_guest_chats_in_its_own_sessions_only(start_server):
    server = start_server(env={"GUEST_ACCESS": "on"})
    body = guest(server)
    user, token = body["user"], body["accessToken"]
    assert user["role"] == "guest" and user["username"].startswith("guest-") and user["email"] is None
    assert body["tokenType"] == "Bearer" and body["refreshToken"]
    sid = create_session(server, token)["sessionId"]
    r = post_json(server.url(f"/api/sessions/{sid}/messages"), {"content": "hi there"}, token=token)
    assert r.status_code == 201, r.text
    assert auth_get(server.url(f"/api/users/{user['id']}/sessions"), token).json()["total"] == 1
    # The refresh token carries the visitor on (a reload of the widget).
    r = post_json(server.url("/auth/refresh"), {"refreshToken": body["refreshToken"]})
    assert r.status_code == 200 and r.json()["user"]["id"] == user["id"] and r.json()["user"]["role"] == "guest"
    # Nothing else: other sessions, staff and admin routes; and no password signs in as a guest.
    other = register(server)
    other_sid = create_session(server, other["accessToken"])["sessionId"]
    assert_json_error(auth_get(server.url(f"/api/sessions/{other_sid}"), token), 404, "not_found")
    assert_json_error(auth_get(server.url(f"/api/users/{other['user']['id']}/sessions"), token), 403, "forbidden")
    assert_json_error(auth_get(server.url("/api/handoffs"), token), 403, "forbidden")
    assert_json_error(auth_get(server.url("/api/admin/users"), token), 403, "forbidden")
    for password in ("!guest", "", "x" * 8):
        r = post_json(server.url("/auth/login"), {"username": user["username"], "password": password})
        assert r.status_code in (400, 401), r.text
    # The request takes no fields.
    assert_json_error(post_json(server.url("/auth/guest"), {"name": "me"}), 400, "validation_failed")
    assert_json_error(requests.post(server.url("/auth/guest"), data="x", headers={"Content-Type": "text/plain"}, timeout=10), 415)


def test_a_login_in_a_guests_name_takes_as_long_as_any_failed_login(start_server):
    """Guests have no password; refusing a login for one must not be quicker than for an unknown name,
    or the time of the answer tells which names are guests."""
    server = start_server(env={"GUEST_ACCESS": "on"})
    name = guest(server)["user"]["username"]

    def median_seconds(username: str) -> float:
        times = []
        for i in range(5):
            started = time.perf_counter()
            assert_json_error(post_json(server.url("/auth/login"), {"username": username, "password": f"wrong-{i}-password"}),
                              401, "invalid_credentials")
            times.append(time.perf_counter() - started)
        return sorted(times)[2]

    unknown, guest_name = median_seconds("nobody_by_this_name"), median_seconds(name)
    assert guest_name >= unknown / 3, f"a guest's name is refused in {guest_name * 1000:.1f} ms, an unknown one in {unknown * 1000:.1f} ms"


def test_guests_are_limited_per_address(start_server):
    server = start_server(env={"GUEST_ACCESS": "on", "RATE_LIMIT_GUEST": "2/1h"})
    guest(server)
    guest(server)
    r = requests.post(server.url("/auth/guest"), timeout=10)
    assert_json_error(r, 429, "rate_limited")
    assert int(r.headers["Retry-After"]) > 0
    # Accounts still register: the guest limit is its own.
    register(server)


def test_inactive_guests_are_deleted_with_their_data(start_server):
    server = start_server(env={"GUEST_ACCESS": "on", "GUEST_TTL": "3s"})
    idle, active = guest(server), guest(server)
    idle_sid = create_session(server, idle["accessToken"])["sessionId"]
    assert post_json(server.url(f"/api/sessions/{idle_sid}/messages"), {"content": "bye"}, token=idle["accessToken"]).status_code == 201
    member = register(server)
    active_sid = create_session(server, active["accessToken"])["sessionId"]
    # The active guest keeps writing; the idle one says nothing more.
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        r = post_json(server.url(f"/api/sessions/{active_sid}/messages"), {"content": "still here"}, token=active["accessToken"])
        assert r.status_code == 201, r.text
        if post_json(server.url("/auth/refresh"), {"refreshToken": idle["refreshToken"]}).status_code == 401:
            break
        time.sleep(0.5)
    # Refresh refused: the idle guest is gone, with its session (an admin would get 404 too).
    wait_for(lambda: "deleted inactive guests" in server.logs(), what="the sweep's log line")
    assert_json_error(post_json(server.url("/auth/refresh"), {"refreshToken": idle["refreshToken"]}), 401)
    assert auth_get(server.url(f"/api/users/{active['user']['id']}/sessions"), active["accessToken"]).status_code == 200
    assert post_json(server.url("/auth/login"), {"username": member["user"]["username"], "password": member["password"]}).status_code == 200


def test_the_widget_files_are_framed_only_by_the_configured_sites(start_server):
    server = start_server(env={"WIDGET_ORIGINS": "https://shop.example, http://127.0.0.1:8000"})
    script = requests.get(server.url("/widget.js"), headers={"Origin": "https://shop.example"}, timeout=10)
    assert script.status_code == 200 and script.headers["Content-Type"].startswith("text/javascript")
    assert script.headers["Cross-Origin-Resource-Policy"] == "cross-origin"
    assert script.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    other = requests.get(server.url("/widget.js"), headers={"Origin": "https://evil.example"}, timeout=10)
    assert "Access-Control-Allow-Origin" not in other.headers
    page = requests.get(server.url("/widget/"), timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    policy = page.headers["Content-Security-Policy"]
    assert policy.endswith("frame-ancestors https://shop.example http://127.0.0.1:8000"), policy
    assert "script-src 'self';" in policy and "unsafe" not in policy
    assert "X-Frame-Options" not in page.headers
    # The console stays unframeable.
    console = requests.get(server.url("/console/"), timeout=10)
    assert "frame-ancestors 'none'" in console.headers["Content-Security-Policy"] and console.headers["X-Frame-Options"] == "DENY"
    # Without WIDGET_ORIGINS no site may frame the widget.
    plain = start_server(name="plain")
    assert requests.get(plain.url("/widget/"), timeout=10).headers["Content-Security-Policy"].endswith("frame-ancestors 'none'")


def test_origins_must_be_origins(bin_path, tmp_path):
    from conftest import base_env, run_cli
    for bad in ("shop.example", "https://shop.example/", "https://shop.example/path", "ftp://x"):
        env = dict(base_env(tmp_path), WIDGET_ORIGINS=bad)
        r = run_cli(bin_path, ["check-config"], tmp_path, env)
        assert r.returncode == 78 and "WIDGET_ORIGINS" in r.stderr, (bad, r.stderr)
    for bad in ("maybe",):
        r = run_cli(bin_path, ["check-config"], tmp_path, dict(base_env(tmp_path), GUEST_ACCESS=bad))
        assert r.returncode == 78 and "GUEST_ACCESS" in r.stderr
