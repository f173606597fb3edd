"""A 201 means the message is on disk: kill -9 during a burst of writes loses nothing that was acknowledged."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from conftest import create_session, post_json, register

WRITERS = 4
BURST_SECONDS = 1.5


def _writer(server, token, session_id, n, stop, acked, lock):
    http = requests.Session()
    http.headers.update({"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    url = server.url(f"/api/sessions/{session_id}/messages")
    i = 0
    while not stop.is_set():
        client_id = f"w{n}-{i}"
        content = f"writer {n} message {i} ✓"
        try:
            r = http.post(url, json={"content": content, "clientMessageId": client_id}, timeout=5)
        except requests.RequestException:
            break  # the server is gone
        if r.status_code == 201:
            body = r.json()
            with lock:
                acked.append({"id": body["id"], "content": content, "clientMessageId": client_id})
        else:
            with lock:
                acked.append({"unexpected": (r.status_code, r.text)})
        i += 1
    http.close()


def read_all_messages(server, token, session_id):
    headers = {"Authorization": f"Bearer {token}"}
    url = server.url(f"/api/sessions/{session_id}/messages")
    messages, after, pages = [], None, 0
    while True:
        params = {"limit": 200}
        if after:
            params["after"] = after
        r = requests.get(url, headers=headers, params=params, timeout=10)
        assert r.status_code == 200, r.text
        page = r.json()
        pages += 1
        messages += page["messages"]
        if not page["hasMore"]:
            assert len(page["messages"]) <= 200
            return messages, pages
        assert len(page["messages"]) == 200, "a page with hasMore must be full"
        after = page["messages"][-1]["id"]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_kill_9_loses_no_acknowledged_message(start_server, backend, request):
    database_url = request.getfixturevalue("pg_url") if backend == "postgres" else None
    first = start_server(name="db", database_url=database_url)
    user = register(first)
    token = user["accessToken"]
    session_id = create_session(first, token)["sessionId"]

    stop, lock, acked = threading.Event(), threading.Lock(), []
    threads = [threading.Thread(target=_writer, args=(first, token, session_id, n, stop, acked, lock), daemon=True)
               for n in range(WRITERS)]
    for t in threads:
        t.start()
    time.sleep(BURST_SECONDS)
    first.kill()  # SIGKILL while the writers are still posting
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)

    unexpected = [a["unexpected"] for a in acked if "unexpected" in a]
    assert not unexpected, f"non-201 answers during the burst: {unexpected[:5]}"
    assert len(acked) >= 20, f"only {len(acked)} messages were acknowledged in {BURST_SECONDS}s"

    second = start_server(name="db", db_path=first.db_path, database_url=database_url)
    stored, pages = read_all_messages(second, token, session_id)
    ids = [m["id"] for m in stored]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), "message ids must be strictly increasing"
    by_id = {m["id"]: m for m in stored}
    missing = [a for a in acked if a["id"] not in by_id]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged messages were lost, e.g. {missing[:3]}"
    for a in acked:
        m = by_id[a["id"]]
        assert (m["content"], m["clientMessageId"], m["sessionId"]) == (a["content"], a["clientMessageId"], session_id)
    # Nothing beyond what was sent: at most one unanswered in-flight message per writer.
    print(f"acknowledged {len(acked)}, stored {len(stored)} in {pages} pages")
    assert len(stored) <= len(acked) + WRITERS
    if len(acked) > 200:
        assert pages >= 2

    # Retrying an acknowledged message after the restart is recognised: 200, the same message.
    for a in (acked[0], acked[-1]):
        r = post_json(second.url(f"/api/sessions/{session_id}/messages"),
                      {"content": a["content"], "clientMessageId": a["clientMessageId"]}, token=token)
        assert r.status_code == 200, r.text
        assert r.json()["id"] == a["id"]
    stored_again, _ = read_all_messages(second, token, session_id)
    assert len(stored_again) == len(stored)

    # And the database keeps working for new writes.
    r = post_json(second.url(f"/api/sessions/{session_id}/messages"), {"content": "after the crash", "clientMessageId": "new-1"},
                  token=token)
    assert r.status_code == 201, r.text
    assert r.json()["id"] > ids[-1]
