"""Full-text search over HTTP, on SQLite and on Postgres: ranked results with snippets as text parts, only what the
caller may read, paging with nextCursor, edits and deletes followed at once, and every query that cannot be searched
refused with a 400 naming `q` (never a 500)."""

from __future__ import annotations

import pytest
import requests

from conftest import Server, assert_json_error, auth_get, create_session, post_json, register
from test_agents import add_user


@pytest.fixture(params=["sqlite", "postgres"])
def search_server(request, start_server):
    if request.param == "sqlite":
        return start_server()
    return start_server(database_url=request.getfixturevalue("pg_url"))


def search(server: Server, token: str, **params) -> requests.Response:
    return requests.get(server.url("/api/search"), params=params, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def send(server: Server, token: str, sid: str, content: str) -> dict:
    r = post_json(server.url(f"/api/sessions/{sid}/messages"), {"content": content}, token=token)
    assert r.status_code == 201, r.text
    return r.json()


def test_search_finds_ranks_highlights_and_pages(search_server):
    server = search_server
    ann = register(server)
    token = ann["accessToken"]
    sid = create_session(server, token)["sessionId"]
    other_sid = create_session(server, token)["sessionId"]
    invoice = send(server, token, sid, "Where is my <b>invoice</b>? Invoice 42, the INVOICE!")
    once = send(server, token, sid, "The invoice arrived")
    invoices = send(server, token, other_sid, "two invoices overdue")
    send(server, token, sid, "nothing to see")
    bob = register(server)["accessToken"]
    send(server, bob, create_session(server, bob)["sessionId"], "bob's invoice is private")

    r = search(server, token, q="invoice")
    assert r.status_code == 200, r.text
    body = r.json()
    assert [hit["message"]["id"] for hit in body["results"]] == [invoice["id"], once["id"]]
    assert body["nextCursor"] is None
    first = body["results"][0]
    assert first["sessionId"] == sid and first["message"] == invoice
    parts = first["snippet"]
    # The text around the matches (Postgres leaves markup-like tags out of it, SQLite keeps them).
    assert "".join(p["text"] for p in parts).startswith("Where is my ")
    assert [p["text"] for p in parts if p["match"]] == ["invoice", "Invoice", "INVOICE"]

    assert [h["message"]["id"] for h in search(server, token, q="invoice*").json()["results"]][-1] == invoices["id"]
    assert [h["message"]["id"] for h in search(server, token, q='"invoice arrived"').json()["results"]] == [once["id"]]
    assert [h["message"]["id"] for h in search(server, token, q="invoice -arrived").json()["results"]] == [invoice["id"]]
    assert [h["message"]["id"] for h in search(server, token, q="invoice*", sessionId=other_sid).json()["results"]] == [invoices["id"]]
    # Someone else's session: 404, as everywhere; an admin searches everything.
    assert_json_error(search(server, bob, q="invoice", sessionId=sid), 404, "not_found")
    admin = add_user(server, "admin")["accessToken"]
    assert len(search(server, admin, q="invoice").json()["results"]) == 3

    # Pages of one, following nextCursor, give the same results in the same order.
    seen, cursor = [], None
    while True:
        params = {"q": "invoice*", "limit": 1}
        if cursor:
            params["cursor"] = cursor
        page = search(server, token, **params).json()
        seen += [h["message"]["id"] for h in page["results"]]
        cursor = page["nextCursor"]
        if not cursor:
            break
    assert seen == [h["message"]["id"] for h in search(server, token, q="invoice*").json()["results"]] and len(seen) == 3

    # Edits and deletes are searched as they are now.
    headers = {"Authorization": f"Bearer {token}"}
    assert requests.patch(server.url(f"/api/sessions/{sid}/messages/{once['id']}"), json={"content": "The receipt arrived"},
                          headers=headers, timeout=10).status_code == 200
    assert requests.delete(server.url(f"/api/sessions/{other_sid}/messages/{invoices['id']}"), headers=headers, timeout=10).status_code == 200
    assert [h["message"]["id"] for h in search(server, token, q="invoice*").json()["results"]] == [invoice["id"]]
    assert [h["message"]["id"] for h in search(server, token, q="receipt").json()["results"]] == [once["id"]]


def test_queries_that_cannot_be_searched_are_400s_naming_q(search_server):
    server = search_server
    token = register(server)["accessToken"]
    sid = create_session(server, token)["sessionId"]
    send(server, token, sid, "some text AND more")
    for q in ["", "   ", "-alone", '"unclosed', "*", "e-mail*", "!!!", "w " * 17, "x" * 257,
              "*text", "te*xt", "-*more", "text\x00", "more\x00 text"]:
        error = assert_json_error(search(server, token, q=q), 400, "validation_failed")
        assert error["details"]["field"] == "q", (q, error)
    # What would be syntax to the databases is plain words here.
    for q in ["AND", "NOT text", "NEAR(text", "text:*", "a & b | !c", "'", "\\", "text\x00", "(text))", "^text"]:
        r = search(server, token, q=q)
        assert r.status_code in (200, 400) and r.status_code != 500, (q, r.text)
        if r.status_code == 400:
            assert r.json()["error"]["details"]["field"] == "q"
    assert len(search(server, token, q="AND more").json()["results"]) == 1
    for params, field in (({}, "q"), ({"q": "x", "limit": 0}, "limit"), ({"q": "x", "limit": 51}, "limit"),
                          ({"q": "x", "cursor": "nonsense"}, "cursor"), ({"q": "x", "sessionId": "no"}, "sessionId"),
                          ({"q": "x", "page": 2}, "page")):
        error = assert_json_error(search(server, token, **params), 400, "validation_failed")
        assert error["details"]["field"] == field, (params, error)
    assert auth_get(server.url("/api/search?q=x"), None).status_code == 401


def test_paging_stays_complete_while_others_write(search_server):
    """Each page continues where the last ended though messages sent meanwhile (anyone's) change every rank on SQLite."""
    server = search_server
    ann, bob = register(server)["accessToken"], register(server)["accessToken"]
    sid, bob_sid = create_session(server, ann)["sessionId"], create_session(server, bob)["sessionId"]
    mine = [send(server, ann, sid, " ".join(["kumquat"] * (1 + i % 3) + ["filler"] * i))["id"] for i in range(12)]
    seen, cursor = [], None
    while True:
        params = {"q": "kumquat", "limit": 3, **({"cursor": cursor} if cursor else {})}
        body = search(server, ann, **params).json()
        seen += [hit["message"]["id"] for hit in body["results"]]
        send(server, bob, bob_sid, "kumquat kumquat")  # shifts every bm25 score
        cursor = body["nextCursor"]
        if not cursor:
            break
        assert len(seen) <= 12, "pages repeat"
    assert sorted(seen) == sorted(mine) and len(seen) == 12


def test_a_message_holding_the_match_marks_is_not_highlighted_by_them(search_server):
    server = search_server
    token = register(server)["accessToken"]
    sid = create_session(server, token)["sessionId"]
    send(server, token, sid, "invoice \ue000FAKE\ue001 marker")
    parts = search(server, token, q="invoice").json()["results"][0]["snippet"]
    assert not any(p["match"] and p["text"] == "FAKE" for p in parts), parts


def test_words_are_split_at_punctuation_on_both_databases(search_server):
    server = search_server
    token = register(server)["accessToken"]
    sid = create_session(server, token)["sessionId"]
    texts = {"mail bob@example.com": ["bob", "example", "bob@example.com"], "see https://docs.example.org/guide/setup": ["guide", "setup"],
             "in /usr/local/bin": ["usr", "local"], "version 1.2.3": ["version 1.2.3", "1"],
             "<script>alert(1)</script> unpaid": ["script", "alert"]}
    ids = {text: send(server, token, sid, text)["id"] for text in texts}
    for text, queries in texts.items():
        for q in queries:
            found = [hit["message"]["id"] for hit in search(server, token, q=q).json()["results"]]
            assert ids[text] in found, (q, text, found)
