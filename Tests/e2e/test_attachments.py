"""Attachments over HTTP, on SQLite and on Postgres: raw and multipart uploads streamed into the database a chunk
at a time, downloads with the headers that keep a browser safe (inline only for checked images, nosniff, a sandbox
CSP), ETags and byte ranges, messages that carry files (REST, /ws, Socket.IO), who may read and write them, size and
quota limits refused with nothing stored, files deleted with their message or session, a kill -9 in the middle of
an upload leaving nothing half-stored, and `chat-backend copy` carrying the bytes."""

from __future__ import annotations

import hashlib
import os
import socket
import sqlite3
import time

import pytest
import requests

from conftest import PASSWORD, Server, assert_json_error, auth_get, base_env, create_session, post_json, psql, register, run_cli
from test_agents import WSListener, add_user, new_session, wait_for
from test_room_access import AGENTS_YAML

PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8cf"
                    "c0f01f0005000201a2d6bd0a0000000049454e44ae426082")


@pytest.fixture(params=["sqlite", "postgres"])
def files_server(request, start_server):
    if request.param == "sqlite":
        return start_server()
    return start_server(database_url=request.getfixturevalue("pg_url"))


def upload(server: Server, token: str, sid: str, data: bytes, content_type: str | None = "application/octet-stream",
           filename: str | None = "file.bin", **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"}
    if content_type:
        headers["Content-Type"] = content_type
    params = {"filename": filename} if filename is not None else {}
    return requests.post(server.url(f"/api/sessions/{sid}/attachments"), params=params, data=data, headers=headers, timeout=30, **kwargs)


def download(server: Server, token: str, url: str, **headers) -> requests.Response:
    return requests.get(server.url(url), headers={"Authorization": f"Bearer {token}", **headers}, timeout=30)


def stored_rows(server: Server) -> tuple[int, int]:
    """(attachments, chunks) in the server's database, complete or not."""
    query = "SELECT (SELECT count(*) FROM attachments), (SELECT count(*) FROM attachment_chunks)"
    if server.database_url:
        a, c = psql(server.database_url, query).split("|")
        return int(a), int(c)
    with sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True) as conn:
        return tuple(conn.execute(query).fetchone())


def test_upload_download_headers_etag_and_ranges(files_server):
    server = files_server
    owner = register(server)
    token = owner["accessToken"]
    sid = create_session(server, token)["sessionId"]

    r = upload(server, token, sid, PNG, "image/png", "../../pixel.png")
    assert r.status_code == 201, r.text
    png = r.json()
    assert (png["filename"], png["contentType"], png["size"], png["sessionId"], png["userId"]) == \
        ("pixel.png", "image/png", len(PNG), sid, owner["user"]["id"])
    assert png["sha256"] == hashlib.sha256(PNG).hexdigest()
    assert r.headers["Location"] == png["url"] == f"/api/attachments/{png['id']}"

    got = download(server, token, png["url"])
    assert got.status_code == 200 and got.content == PNG
    assert got.headers["Content-Type"] == "image/png"
    assert got.headers["Content-Disposition"].startswith('inline; filename="pixel.png"')
    assert got.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in got.headers["Content-Security-Policy"]
    assert got.headers["ETag"] == f'"{png["sha256"]}"' and got.headers["Accept-Ranges"] == "bytes"
    assert download(server, token, png["url"], **{"If-None-Match": got.headers["ETag"]}).status_code == 304
    assert download(server, token, png["url"], **{"If-Match": got.headers["ETag"]}).content == PNG
    stale = download(server, token, png["url"], **{"If-Match": '"not-this-file"'})
    assert stale.status_code == 412 and stale.json()["error"]["code"] == "precondition_failed", stale.text
    head = requests.head(server.url(png["url"]), headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(PNG)) and head.content == b""

    # Anything but a checked image is a download, whatever it claims; markup never renders here.
    page = b"<html><script>alert(1)</script></html>"
    r = requests.post(server.url(f"/api/sessions/{sid}/attachments"), headers={"Authorization": f"Bearer {token}"},
                      files={"file": ("r\u00e9sum\u00e9 1.html", page, "text/html; charset=UTF-8")}, data={"note": "hi"}, timeout=10)
    # RFC 2046 §5.1.1: a boundary may hold spaces (quoted), just not end with one.
    spaced = (b'--a b\r\nContent-Disposition: form-data; name="file"; filename="s.txt"\r\nContent-Type: text/plain\r\n\r\n'
              b'spaced\r\n--a b--\r\n')
    s_r = requests.post(server.url(f"/api/sessions/{sid}/attachments"), data=spaced, timeout=10,
                        headers={"Authorization": f"Bearer {token}", "Content-Type": 'multipart/form-data; boundary="a b"'})
    assert s_r.status_code == 201 and s_r.json()["size"] == 6, s_r.text
    assert r.status_code == 201, r.text
    html = r.json()
    assert (html["filename"], html["contentType"], html["size"]) == ("r\u00e9sum\u00e9 1.html", "text/html; charset=utf-8", len(page))
    got = download(server, token, html["url"])
    assert got.content == page
    assert got.headers["Content-Disposition"] == \
        "attachment; filename=\"r_sum_ 1.html\"; filename*=UTF-8''r%C3%A9sum%C3%A9%201.html"

    # A file larger than a chunk (256 KiB), its length not a multiple of one: whole, and ranges across chunks.
    big = os.urandom(3 * 256 * 1024 + 12345)
    r = upload(server, token, sid, big, "application/zip", "big.zip")
    assert r.status_code == 201, r.text
    url = r.json()["url"]
    assert download(server, token, url).content == big
    part = download(server, token, url, Range="bytes=262140-262150")
    assert part.status_code == 206 and part.content == big[262140:262151]
    assert part.headers["Content-Range"] == f"bytes 262140-262150/{len(big)}"
    assert download(server, token, url, Range="bytes=-100").content == big[-100:]
    assert download(server, token, url, Range=f"bytes={len(big) - 5}-").content == big[-5:]
    assert download(server, token, url, Range="bytes=0-0,5-9").status_code == 200  # several ranges: the whole file
    # Positions beyond 64 bits are positions past the end: to the end, the whole file, or nothing.
    tail = download(server, token, url, Range="bytes=10-99999999999999999999999")
    assert tail.status_code == 206 and tail.content == big[10:], tail.headers
    assert download(server, token, url, Range="bytes=-99999999999999999999999").content == big
    assert download(server, token, url, Range="bytes=99999999999999999999999-").status_code == 416
    refused = download(server, token, url, Range=f"bytes={len(big)}-")
    assert_json_error(refused, 416, "range_not_satisfiable")
    assert refused.headers["Content-Range"] == f"bytes */{len(big)}"
    stale = download(server, token, url, Range="bytes=0-9", **{"If-Range": '"not-the-etag"'})
    assert stale.status_code == 200 and len(stale.content) == len(big)


def test_messages_carry_attachments_to_every_client(files_server):
    server = files_server
    owner = register(server)
    token = owner["accessToken"]
    sid = create_session(server, token)["sessionId"]
    other_sid = create_session(server, token)["sessionId"]
    photo = upload(server, token, sid, PNG, "image/png", "photo.png").json()
    elsewhere = upload(server, token, other_sid, b"x" * 10, "text/plain", "x.txt").json()
    listener = WSListener(server, token, sid)
    try:
        r = post_json(server.url(f"/api/sessions/{sid}/messages"), {"attachments": [photo["id"]], "type": "image"}, token=token)
        assert r.status_code == 201, r.text
        message = r.json()
        ref = {"id": photo["id"], "filename": "photo.png", "contentType": "image/png", "size": len(PNG), "url": photo["url"]}
        assert message["content"] == "" and message["attachments"] == [ref]
        wait_for(lambda: any(e.get("type") == "message" and e["message"]["id"] == message["id"] for e in listener.events))
        event = next(e for e in listener.events if e.get("type") == "message" and e["message"]["id"] == message["id"])
        assert event["message"]["attachments"] == [ref]
    finally:
        listener.close()
    history = auth_get(server.url(f"/api/sessions/{sid}/messages"), token).json()["messages"]
    assert history[-1]["attachments"] == [ref]

    # Over /ws too; files of another session, unknown ids and bad lists are refused, nothing stored.
    from websockets.sync.client import connect
    import json
    second = upload(server, token, sid, PNG, "image/png", "second.png").json()
    with connect(f"ws://127.0.0.1:{server.port}/ws", additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        ws.send(json.dumps({"type": "message", "id": 7, "sessionId": sid, "content": "and this", "attachments": [second["id"]]}))
        ack = json.loads(ws.recv(timeout=5))
        assert ack["type"] == "ack" and [a["id"] for a in ack["message"]["attachments"]] == [second["id"]], ack
    # A file another message carries already is refused too: deleting one message never takes another's file.
    for bad in ([elsewhere["id"]], ["00000000-0000-7000-8000-000000000000"], "nope", [photo["id"], photo["id"]], [1], [photo["id"]]):
        r = post_json(server.url(f"/api/sessions/{sid}/messages"), {"content": "x", "attachments": bad}, token=token)
        assert_json_error(r, 400, "validation_failed")
        assert r.json()["error"]["details"]["field"] == "attachments"
    assert_json_error(post_json(server.url(f"/api/sessions/{sid}/messages"), {"content": ""}, token=token), 400, "validation_failed")
    assert len(auth_get(server.url(f"/api/sessions/{sid}/messages"), token).json()["messages"]) == 2

    # Deleting the message deletes its file; deleting a session deletes the files uploaded to it.
    r = requests.delete(server.url(f"/api/sessions/{sid}/messages/{message['id']}"), headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200 and r.json()["attachments"] == []
    assert_json_error(download(server, token, photo["url"]), 404, "not_found")
    assert download(server, token, second["url"]).status_code == 200, "the other message keeps its file"
    for each in (other_sid, sid):
        assert requests.delete(server.url(f"/api/sessions/{each}"), headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code == 204
    assert_json_error(download(server, token, elsewhere["url"]), 404, "not_found")
    assert stored_rows(server) == (0, 0)


def test_who_may_upload_and_download(start_server, tmp_path):
    agents_file = tmp_path / "agents.yaml"
    agents_file.write_text(AGENTS_YAML)
    server = start_server(env={"AGENTS_FILE": str(agents_file)})
    stranger, staff = register(server), add_user(server, "agent")
    owner = register(server)
    token = owner["accessToken"]
    sid = new_session(server, token, "front")
    file = upload(server, token, sid, b"private notes", "text/plain", "notes.txt").json()
    assert_json_error(download(server, stranger["accessToken"], file["url"]), 404, "not_found")
    assert_json_error(upload(server, stranger["accessToken"], sid, b"x", "text/plain", "x.txt"), 404, "not_found")
    assert_json_error(download(server, "not-a-token", file["url"]), 401)
    assert_json_error(download(server, token, "/api/attachments/not-a-uuid"), 400)
    # A person the session is handed to reads its files once it waits for them, and uploads once claimed.
    assert_json_error(download(server, staff["accessToken"], file["url"]), 404, "not_found")
    post_json(server.url(f"/api/sessions/{sid}/messages"), {"content": "a human please"}, token=token)
    wait_for(lambda: (auth_get(server.url(f"/api/sessions/{sid}"), token).json()["handoff"] or {}).get("status") == "waiting", what="the handoff")
    assert download(server, staff["accessToken"], file["url"]).content == b"private notes"
    assert_json_error(upload(server, staff["accessToken"], sid, b"x", "text/plain", "x.txt"), 403, "handoff_not_claimed")
    assert requests.post(server.url(f"/api/handoffs/{sid}/claim"), headers={"Authorization": f"Bearer {staff['accessToken']}"},
                         timeout=10).status_code == 200
    assert upload(server, staff["accessToken"], sid, b"reply file", "text/plain", "answer.txt").status_code == 201
    # Resolved: no more uploads.
    assert requests.post(server.url(f"/api/sessions/{sid}/resolve"), headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code == 200
    assert_json_error(upload(server, token, sid, b"late", "text/plain", "late.txt"), 409, "session_resolved")


def test_bad_uploads_are_refused_and_store_nothing(start_server):
    server = start_server(env={"ATTACHMENT_MAX_BYTES": "64KiB", "ATTACHMENT_QUOTA": "100KiB"})
    token = register(server)["accessToken"]
    sid = create_session(server, token)["sessionId"]
    assert_json_error(upload(server, token, sid, b"GIF89a not really a png", "image/png", "fake.png"), 415, "content_type_mismatch")
    assert_json_error(upload(server, token, sid, b"x", "text/plain", "n" * 1025), 400, "validation_failed")
    assert_json_error(upload(server, token, sid, b"", "image/png", "empty.png"), 415, "content_type_mismatch")
    assert_json_error(upload(server, token, sid, b"x", "text/plain", ""), 400, "validation_failed")
    assert_json_error(upload(server, token, sid, b"", None, "nothing.bin"), 400, "validation_failed")
    assert_json_error(upload(server, token, sid, b"x", "not a type", "x.txt"), 400, "validation_failed")
    # Too large, by its Content-Length and as it streams (chunked, no length).
    r = upload(server, token, sid, b"y" * (65 * 1024), "application/octet-stream", "big.bin")
    assert_json_error(r, 413, "attachment_too_large")
    assert r.json()["error"]["details"] == {"maxBytes": 65536}

    def pieces():
        for _ in range(10):
            yield b"z" * 8192
    assert_json_error(upload(server, token, sid, pieces(), "application/octet-stream", "stream.bin"), 413, "attachment_too_large")
    # Malformed multipart bodies.
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "multipart/form-data; boundary=XyZ"}
    for body in (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\r\nno end",
                 b"--XyZ\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nv\r\n--XyZ--\r\n",
                 b"--XyZ\r\nno colon here\r\n\r\nv\r\n--XyZ--\r\n"):
        r = requests.post(server.url(f"/api/sessions/{sid}/attachments"), data=body, headers=headers, timeout=10)
        assert r.status_code == 400, r.text
    assert stored_rows(server) == (0, 0)
    # Without a name or a type: `file`, application/octet-stream. An empty file is a file.
    r = upload(server, token, sid, b"anonymous", None, None)
    assert r.status_code == 201 and (r.json()["filename"], r.json()["contentType"]) == ("file", "application/octet-stream"), r.text
    # So is a name of which nothing is left once directories and control characters are dropped.
    for nameless in ("/", "\x1b", "a/..", "\u202e"):
        r = upload(server, token, sid, b"x", "text/plain", nameless)
        assert r.status_code == 201 and r.json()["filename"] == "file", (nameless, r.text)
    r = upload(server, token, sid, b"", "text/plain", "empty.txt")
    assert r.status_code == 201 and r.json()["size"] == 0, r.text
    empty = download(server, token, r.json()["url"])
    assert empty.status_code == 200 and empty.content == b"" and empty.headers["Content-Length"] == "0"
    assert_json_error(download(server, token, r.json()["url"], Range="bytes=0-"), 416, "range_not_satisfiable")
    assert requests.delete(server.url(f"/api/sessions/{sid}"), headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code == 204
    sid = create_session(server, token)["sessionId"]
    # The quota counts complete uploads: 60 KiB fits, 60 KiB more does not.
    assert upload(server, token, sid, b"q" * (60 * 1024), "application/octet-stream", "one.bin").status_code == 201
    r = upload(server, token, sid, b"q" * (60 * 1024), "application/octet-stream", "two.bin")
    assert_json_error(r, 413, "quota_exceeded")
    assert r.json()["error"]["details"] == {"quotaBytes": 102400, "usedBytes": 61440}
    assert stored_rows(server) == (1, 1)


def test_kill_during_upload_leaves_nothing_half_stored(start_server):
    server = start_server(name="crash")
    token = register(server)["accessToken"]
    sid = create_session(server, token)["sessionId"]
    # 2 MiB of an announced 8 MiB, then the server dies before the rest arrives.
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall((f"POST /api/sessions/{sid}/attachments?filename=half.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                  f"Content-Type: application/octet-stream\r\nContent-Length: {8 << 20}\r\n\r\n").encode())
    sock.sendall(os.urandom(2 << 20))
    wait_for(lambda: stored_rows(server)[1] >= 4, timeout=10)  # chunks of the upload are on disk
    server.kill()
    sock.close()
    server.start()
    # The interrupted upload is not an attachment: it cannot be read, referred to or counted.
    assert auth_get(server.url(f"/api/sessions/{sid}/messages"), token).status_code == 200
    with sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True) as conn:
        (id_, completed), = conn.execute("SELECT id, completed_at FROM attachments").fetchall()
    assert completed is None
    assert_json_error(download(server, token, f"/api/attachments/{id_}"), 404, "not_found")
    assert_json_error(post_json(server.url(f"/api/sessions/{sid}/messages"), {"content": "x", "attachments": [id_]}, token=token),
                      400, "validation_failed")
    # And the next upload works, whole.
    data = os.urandom(300_000)
    r = upload(server, token, sid, data, "application/octet-stream", "whole.bin")
    assert r.status_code == 201 and download(server, token, r.json()["url"]).content == data


def test_copy_carries_attachments_to_postgres(start_server, bin_path, tmp_path, pg_url):
    source = start_server(name="files-source")
    token = register(source)["accessToken"]
    sid = create_session(source, token)["sessionId"]
    data = os.urandom(600_000)
    file = upload(source, token, sid, data, "application/pdf", "report.pdf").json()
    assert post_json(source.url(f"/api/sessions/{sid}/messages"), {"content": "see", "attachments": [file["id"]]}, token=token).status_code == 201
    source.stop()
    r = run_cli(bin_path, ["copy", "--from", f"sqlite://{source.db_path}", "--to", pg_url], tmp_path, base_env(tmp_path), timeout=120)
    assert r.returncode == 0 and "1 attachments" in r.stdout, r.stdout + r.stderr
    moved = start_server(name="files-pg", database_url=pg_url)
    username = psql(pg_url, "SELECT username FROM users")
    token = post_json(moved.url("/auth/login"), {"username": username, "password": PASSWORD}).json()["accessToken"]
    got = download(moved, token, file["url"])
    assert got.status_code == 200 and got.content == data and got.headers["ETag"] == f'"{file["sha256"]}"'
    assert auth_get(moved.url(f"/api/sessions/{sid}/messages"), token).json()["messages"][0]["attachments"][0]["id"] == file["id"]


def test_parameters_do_not_skip_the_image_check_and_names_lose_bidi_controls(start_server):
    server = start_server()
    token = register(server)["accessToken"]
    sid = create_session(server, token)["sessionId"]
    # A charset on an image type is dropped, so the type is still checked against the bytes.
    assert_json_error(upload(server, token, sid, b"<html><script>alert(1)</script>", "image/png; charset=utf-8", "x.png"), 415,
                      "content_type_mismatch")
    png = upload(server, token, sid, PNG, "image/png; charset=utf-8", "x.png")
    assert png.status_code == 201 and png.json()["contentType"] == "image/png", png.text
    assert download(server, token, png.json()["url"]).headers["Content-Disposition"].startswith("inline")
    text = upload(server, token, sid, b"hello", "text/plain; charset=UTF-8", "a.txt").json()
    assert text["contentType"] == "text/plain; charset=utf-8"
    # U+202E would make "\u202etxt.exe" read as "exe.txt".
    named = upload(server, token, sid, b"x", "application/octet-stream", "\u202etxt.\u2066exe").json()
    assert named["filename"] == "txt.exe", named


def test_the_longest_filename_the_document_allows_fits_in_the_request_target(start_server):
    """`filename` may be 1024 characters (openapi.yaml); sent percent-encoded, 1024 characters outside the
    Basic Multilingual Plane take 12,288 bytes of the request target, which the server must still read."""
    server = start_server()
    token = register(server)["accessToken"]
    sid = create_session(server, token)["sessionId"]
    longest = "\U0001F600" * 1024
    r = upload(server, token, sid, b"x", "application/octet-stream", longest)
    assert r.status_code == 201, r.text
    stored = r.json()["filename"]
    assert set(stored) == {"\U0001F600"} and len(stored.encode()) <= 255, stored
    assert_json_error(upload(server, token, sid, b"x", "application/octet-stream", longest + "\U0001F600"), 400, "validation_failed")
