"""The admin API (`/api/admin/users…`): accounts listed with search and paging, created with a role, changed,
disabled and enabled, given a new password, deleted with their data. A change that matters for signing in ends the
account's logins at once: its access tokens are refused and its realtime connections closed, on every instance."""

from __future__ import annotations

import contextlib
import json
import time

import pytest
import requests
from websockets.sync.client import connect

from conftest import PASSWORD, Server, assert_json_error, auth_get, closed_code, create_session, post_json, register, unique_name
from test_agents import add_user


def admin_call(server: Server, method: str, path: str, token: str, body=None) -> requests.Response:
    return requests.request(method, server.url(f"/api/admin{path}"), json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def login(server: Server, username: str, password: str = PASSWORD) -> requests.Response:
    return post_json(server.url("/auth/login"), {"username": username, "password": password})


def open_ws(server: Server, token: str, stack: contextlib.ExitStack):
    ws = stack.enter_context(connect(f"ws://127.0.0.1:{server.port}/ws", additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=5))
    ws.send(json.dumps({"type": "join", "sessionId": create_session(server, token)["sessionId"], "id": 1}))
    assert json.loads(ws.recv(timeout=5))["type"] == "ack"
    return ws


@pytest.fixture(scope="module")
def admin_world(bin_path, tmp_path_factory):
    server = Server(bin_path, tmp_path_factory.mktemp("admin") / "server")
    server.start()
    try:
        yield server, add_user(server, "admin")
    finally:
        server.stop()


def test_only_admins_reach_the_admin_api(admin_world):
    server, _ = admin_world
    user, agent = register(server), add_user(server, "agent")
    some_id = user["user"]["id"]
    for who in (user, agent):
        for method, path, body in (("GET", "/users", None), ("POST", "/users", {"username": unique_name(), "password": PASSWORD}),
                                   ("GET", f"/users/{some_id}", None), ("PATCH", f"/users/{some_id}", {"disabled": True}),
                                   ("POST", f"/users/{some_id}/password", {"password": "another-password"}), ("DELETE", f"/users/{some_id}", None)):
            assert_json_error(admin_call(server, method, path, who["accessToken"], body), 403, "forbidden")
    assert_json_error(requests.get(server.url("/api/admin/users"), timeout=10), 401)
    # Nothing changed.
    assert login(server, user["user"]["username"]).status_code == 200


def test_accounts_are_listed_with_search_and_paging_and_created_with_a_role(admin_world):
    server, admin = admin_world
    token = admin["accessToken"]
    tag = unique_name("find")
    made = []
    for i, role in enumerate(["user", "agent", "admin"]):
        r = admin_call(server, "POST", "/users", token, {"username": f"{tag}_{i}", "password": PASSWORD, "role": role, "email": f"{tag}{i}@example.com"})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["role"] == role and body["disabled"] is False and body["disabledAt"] is None and body["email"] == f"{tag}{i}@example.com"
        made.append(body)
    # The new staff account signs in with its role.
    r = login(server, f"{tag}_1")
    assert r.status_code == 200 and r.json()["user"]["role"] == "agent"

    r = admin_call(server, "GET", f"/users?search={tag.upper()}", token)
    assert r.status_code == 200, r.text
    page = r.json()
    assert page["total"] == 3 and [u["username"] for u in page["users"]] == [f"{tag}_2", f"{tag}_1", f"{tag}_0"], page
    assert "passwordHash" not in json.dumps(page)
    r = admin_call(server, "GET", f"/users?search={tag}&limit=1&offset=1", token)
    assert r.json()["users"][0]["username"] == f"{tag}_1" and r.json()["total"] == 3 and r.json()["limit"] == 1
    r = admin_call(server, "GET", f"/users?search={tag}&role=agent", token)
    assert [u["id"] for u in r.json()["users"]] == [made[1]["id"]]
    # The email is searched too; a LIKE wildcard is a plain character.
    assert admin_call(server, "GET", f"/users?search={tag}2@", token).json()["total"] == 1
    assert admin_call(server, "GET", "/users?search=%25%25%25_", token).json()["total"] == 0
    assert admin_call(server, "GET", f"/users/{made[0]['id']}", token).json() == made[0]

    for query in ("limit=0", "limit=101", "offset=-1", "role=boss", "sort=name", "search=" + "x" * 300):
        assert_json_error(admin_call(server, "GET", f"/users?{query}", token), 400, "validation_failed")
    r = admin_call(server, "POST", "/users", token, {"username": f"{tag}_null", "password": PASSWORD, "role": None})
    assert r.status_code == 201 and r.json()["role"] == "user", r.text
    assert admin_call(server, "DELETE", f"/users/{r.json()['id']}", token).status_code == 204
    for body in ({"username": "x", "password": PASSWORD}, {"username": unique_name(), "password": "short"},
                 {"username": unique_name(), "password": PASSWORD, "role": "guest"},
                 {"username": unique_name(), "password": PASSWORD, "role": "owner"}, {"username": unique_name(), "password": PASSWORD, "extra": 1}):
        assert_json_error(admin_call(server, "POST", "/users", token, body), 400, "validation_failed")
    assert_json_error(admin_call(server, "POST", "/users", token, {"username": f"{tag}_0".upper(), "password": PASSWORD}), 409, "username_taken")
    assert_json_error(admin_call(server, "GET", "/users/00000000-0000-4000-8000-000000000000", token), 404, "not_found")
    assert_json_error(admin_call(server, "GET", "/users/nope", token), 400, "validation_failed")
    assert admin_call(server, "GET", f"/users?search={tag}", token).json()["total"] == 3


def test_disabling_an_account_ends_its_logins_at_once_and_enabling_lets_it_sign_in(admin_world):
    server, admin = admin_world
    token = admin["accessToken"]
    user, bystander = register(server), register(server)
    with contextlib.ExitStack() as stack:
        ws, other_ws = open_ws(server, user["accessToken"], stack), open_ws(server, bystander["accessToken"], stack)
        r = admin_call(server, "PATCH", f"/users/{user['user']['id']}", token, {"disabled": True})
        assert r.status_code == 200, r.text
        assert r.json()["disabled"] is True and r.json()["disabledAt"]
        assert closed_code(ws) == 1008
        assert_json_error(auth_get(server.url(f"/api/users/{user['user']['id']}/sessions"), user["accessToken"]), 401, "token_revoked")
        assert_json_error(post_json(server.url("/auth/refresh"), {"refreshToken": user["refreshToken"]}), 401)
        assert_json_error(login(server, user["user"]["username"]), 403, "account_disabled")
        # A wrong password does not learn that the account exists and is disabled.
        assert_json_error(login(server, user["user"]["username"], "wrong-password-1"), 401)
        assert closed_code(other_ws, within=0.5) is None, "another user's connection must stay"
    r = admin_call(server, "PATCH", f"/users/{user['user']['id']}", token, {"disabled": False})
    assert r.status_code == 200 and r.json()["disabled"] is False and r.json()["disabledAt"] is None
    assert login(server, user["user"]["username"]).status_code == 200


def test_a_new_role_or_password_takes_effect_with_the_next_sign_in(admin_world):
    server, admin = admin_world
    token = admin["accessToken"]
    user = register(server)
    uid = user["user"]["id"]
    r = admin_call(server, "PATCH", f"/users/{uid}", token, {"role": "agent"})
    assert r.status_code == 200 and r.json()["role"] == "agent"
    # The old token said role user: it is refused, and the next sign-in carries the new role.
    assert_json_error(auth_get(server.url("/api/handoffs"), user["accessToken"]), 401, "token_revoked")
    fresh = login(server, user["user"]["username"]).json()
    assert fresh["user"]["role"] == "agent" and auth_get(server.url("/api/handoffs"), fresh["accessToken"]).status_code == 200
    # An empty change changes nothing and keeps the logins.
    assert admin_call(server, "PATCH", f"/users/{uid}", token, {}).json()["role"] == "agent"
    assert auth_get(server.url("/api/handoffs"), fresh["accessToken"]).status_code == 200
    assert_json_error(admin_call(server, "PATCH", f"/users/{uid}", token, {"role": "root"}), 400, "validation_failed")
    assert_json_error(admin_call(server, "PATCH", f"/users/{uid}", token, {"disabled": "yes"}), 400, "validation_failed")

    r = admin_call(server, "POST", f"/users/{uid}/password", token, {"password": "a-new-password-2"})
    assert r.status_code == 204, r.text
    assert_json_error(auth_get(server.url("/api/handoffs"), fresh["accessToken"]), 401, "token_revoked")
    assert_json_error(login(server, user["user"]["username"]), 401)
    assert login(server, user["user"]["username"], "a-new-password-2").status_code == 200
    assert_json_error(admin_call(server, "POST", f"/users/{uid}/password", token, {"password": "short"}), 400, "validation_failed")


def test_deleting_an_account_deletes_its_sessions_and_messages(admin_world):
    server, admin = admin_world
    token = admin["accessToken"]
    user = register(server)
    sid = create_session(server, user["accessToken"])["sessionId"]
    assert post_json(server.url(f"/api/sessions/{sid}/messages"), {"content": "remember me"}, token=user["accessToken"]).status_code == 201
    with contextlib.ExitStack() as stack:
        ws = open_ws(server, user["accessToken"], stack)
        r = admin_call(server, "DELETE", f"/users/{user['user']['id']}", token)
        assert r.status_code == 204, r.text
        assert closed_code(ws) == 1008
    assert_json_error(auth_get(server.url(f"/api/sessions/{sid}"), token), 404, "not_found")
    assert_json_error(admin_call(server, "GET", f"/users/{user['user']['id']}", token), 404, "not_found")
    assert_json_error(login(server, user["user"]["username"]), 401)
    assert_json_error(admin_call(server, "DELETE", f"/users/{user['user']['id']}", token), 404, "not_found")
    # The name is free again.
    assert register(server, user["user"]["username"])["user"]["id"] != user["user"]["id"]


def test_admins_cannot_lock_themselves_out(admin_world):
    server, admin = admin_world
    token, me = admin["accessToken"], admin["user"]["id"]
    for method, path, body in (("PATCH", f"/users/{me}", {"disabled": True}), ("PATCH", f"/users/{me}", {"role": "agent"}),
                               ("DELETE", f"/users/{me}", None)):
        assert_json_error(admin_call(server, method, path, token, body), 409, "own_account")
    assert admin_call(server, "GET", f"/users/{me}", token).json()["role"] == "admin"
    assert admin_call(server, "PATCH", f"/users/{me}", token, {"disabled": False}).status_code == 200
    # Setting their own password ends their other logins, not the one they use.
    other_login = login(server, admin["user"]["username"], "staff-password-1").json()
    assert admin_call(server, "POST", f"/users/{me}/password", token, {"password": "staff-password-1"}).status_code == 204
    assert admin_call(server, "GET", f"/users/{me}", token).status_code == 200
    assert_json_error(admin_call(server, "GET", f"/users/{me}", other_login["accessToken"]), 401, "token_revoked")


def test_disabling_on_one_instance_ends_connections_on_the_other(start_server, pg_url):
    a = start_server(name="a", database_url=pg_url)
    b = start_server(name="b", database_url=pg_url)
    admin = add_user(a, "admin")
    user = register(a)
    with contextlib.ExitStack() as stack:
        ws = open_ws(b, user["accessToken"], stack)
        # B has just checked the token and remembers it as good.
        assert auth_get(b.url("/api/status"), user["accessToken"]).status_code == 200
        r = admin_call(a, "PATCH", f"/users/{user['user']['id']}", admin["accessToken"], {"disabled": True})
        assert r.status_code == 200, r.text
        assert closed_code(ws) == 1008
        assert_json_error(auth_get(b.url(f"/api/users/{user['user']['id']}/sessions"), user["accessToken"]), 401, "token_revoked")
        assert_json_error(login(b, user["user"]["username"]), 403, "account_disabled")


OPS_AGENTS = """\
default_agent: echo
agents:
  - name: echo
    kind: echo
  - name: broken
    kind: webhook
    url: http://127.0.0.1:{port}/hook
    secret_env: HOOK_SECRET
    timeout: 1s
    retries: 0
    breaker:
      failures: 2
      cooldown: 60s
"""


def test_agents_status_and_activity_show_what_happened(bin_path, tmp_path):
    from conftest import free_port
    from test_agents import history, new_session, send, wait_for

    agents_file = tmp_path / "agents.yaml"
    agents_file.write_text(OPS_AGENTS.format(port=free_port()))  # nothing listens there
    server = Server(bin_path, tmp_path / "server", env={"AGENTS_FILE": str(agents_file), "HOOK_SECRET": "s3cret"})
    server.start()
    try:
        admin = add_user(server, "admin")
        token = admin["accessToken"]
        agents = {a["name"]: a for a in admin_call(server, "GET", "/agents", token).json()["agents"]}
        assert agents["echo"] == {"name": "echo", "kind": "echo", "default": True, "breaker": "closed", "requests": 0, "errors": 0,
                                  "refused": 0, "latencyMs": None, "lastError": None}
        assert agents["broken"]["kind"] == "webhook" and agents["broken"]["default"] is False
        before = admin_call(server, "GET", "/activity?days=7", token).json()
        assert len(before["days"]) == 7 and before["days"][-1]["messages"] == 0

        user = register(server)
        utoken = user["accessToken"]
        echo_sid = new_session(server, utoken)
        send(server, utoken, echo_sid, "hello")
        wait_for(lambda: len(history(server, utoken, echo_sid)) == 2, what="the echo reply")
        broken_sid = new_session(server, utoken, "broken")
        for i in range(3):
            send(server, utoken, broken_sid, f"try {i}")
            wait_for(lambda: len([m for m in history(server, utoken, broken_sid) if m["type"] == "system"]) == i + 1, what="the failure note")

        agents = {a["name"]: a for a in admin_call(server, "GET", "/agents", token).json()["agents"]}
        assert agents["echo"]["requests"] == 1 and agents["echo"]["errors"] == 0 and agents["echo"]["latencyMs"]["p95"] >= 0
        broken = agents["broken"]
        assert (broken["requests"], broken["errors"], broken["refused"], broken["breaker"]) == (2, 2, 1, "open"), broken
        assert broken["lastError"]["code"] in ("connection", "timeout") and broken["lastError"]["at"]

        with contextlib.ExitStack() as stack:
            open_ws(server, utoken, stack)
            status = admin_call(server, "GET", "/status", token).json()
        assert status["storage"] == {"backend": "sqlite", "up": True, "reason": None}
        assert status["realtimeConnections"] == 1 and status["agents"] == {"configured": 2, "breakersOpen": 1}
        assert status["statistics"]["users"] == 2 and status["version"] and status["uptimeSeconds"] > 0

        assert post_json(server.url(f"/api/sessions/{echo_sid}/resolve"), {}, token=utoken).status_code == 200
        after = admin_call(server, "GET", "/activity?days=7", token).json()
        today = after["days"][-1]
        assert today["date"] == time.strftime("%Y-%m-%d", time.gmtime()) or after["days"][-2]["sessions"] > 0
        assert sum(d["messages"] for d in after["days"]) == len(history(server, utoken, echo_sid)) + len(history(server, utoken, broken_sid))
        assert sum(d["sessions"] for d in after["days"]) == 3  # the two above and the one open_ws made
        assert after["sessions"] == {"opened": 3, "resolved": 1, "resolvedShare": 0.333}
        # The echo session was answered; the broken one got only system notes, which are no reply.
        assert after["firstReply"]["sessions"] == 1 and 0 <= after["firstReply"]["medianSeconds"] < 10
        # By day: the day the echo session was opened has that reply; days without one have no median.
        answered = [d for d in after["days"] if d["firstReplies"]]
        assert len(answered) == 1 and answered[0]["firstReplyMedianSeconds"] == after["firstReply"]["medianSeconds"]
        assert all(d["firstReplyMedianSeconds"] is None for d in after["days"] if not d["firstReplies"])
        for query in ("days=0", "days=367", "days=x", "from=1"):
            assert_json_error(admin_call(server, "GET", f"/activity?{query}", token), 400, "validation_failed")
        assert_json_error(admin_call(server, "GET", "/status", utoken), 403, "forbidden")
    finally:
        server.stop()
