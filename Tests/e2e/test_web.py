"""The web console's files as a browser receives them: the redirect from `/`, every file the page loads
(following its script and style links and the modules' imports), caching by ETag, gzip, and the page's
Content-Security-Policy. What the console does in a browser is tested in test_console.py."""

import gzip
import re
import socket

import pytest
import requests

TIMEOUT = 10


def get(server, path, **headers):
    return requests.get(server.url(path), headers=headers, timeout=TIMEOUT, allow_redirects=False)


def raw_get(server, path: str, accept_encoding: str) -> tuple[str, bytes]:
    """The head and the body exactly as sent (requests would decompress a gzip body)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept-Encoding: {accept_encoding}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode(), body


def loaded_files(server) -> dict[str, requests.Response]:
    """Every file the console page loads: its scripts and style sheets, and what the modules import."""
    seen: dict[str, requests.Response] = {}
    page = get(server, "/console/")
    pending = [m for m in re.findall(r'(?:src|href)="(/console/[^"]+)"', page.text)]
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen[path] = response = get(server, path)
        if path.endswith(".js"):
            for target in re.findall(r'(?:import|from)\s*\(?\s*["\'](\./[^"\']+)["\']', response.text):
                pending.append(path.rsplit("/", 1)[0] + "/" + target[2:])
    return seen


def test_root_leads_to_the_console(server):
    r = get(server, "/")
    assert r.status_code == 302 and r.headers["Location"] == "/console/"
    page = get(server, "/console/")
    assert page.status_code == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "<html" in page.text.lower() and '<script type="module"' in page.text


def test_every_file_the_page_loads_is_served_with_its_type(server):
    files = loaded_files(server)
    assert any(p.endswith(".js") for p in files) and any(p.endswith(".css") for p in files), files.keys()
    for path, response in files.items():
        assert response.status_code == 200, f"{path}: {response.status_code}"
        expected = {"js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8", "svg": "image/svg+xml"}[path.rsplit(".", 1)[1]]
        assert response.headers["Content-Type"] == expected, path
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    total = len(get(server, "/console/").content) + sum(len(r.content) for r in files.values())
    assert total <= 150 * 1024, f"the console's files are {total} bytes together"


def test_the_page_policy_allows_only_this_server_and_no_inline_code(server):
    page = get(server, "/console/")
    policy = page.headers["Content-Security-Policy"]
    directives = {d.split()[0]: d.split()[1:] for d in (p.strip() for p in policy.split(";")) if d}
    assert directives["default-src"] == ["'none'"]
    assert directives["script-src"] == ["'self'"] and directives["style-src"] == ["'self'"]
    assert directives["frame-ancestors"] == ["'none'"] and page.headers["X-Frame-Options"] == "DENY"
    assert set(directives["connect-src"]) == {"'self'", f"ws://127.0.0.1:{server.port}", f"wss://127.0.0.1:{server.port}"}
    assert "unsafe" not in policy
    # The page itself has no inline script, style element or style attribute (the policy would block them).
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page.text), "inline <script>"
    assert "<style" not in page.text and " style=" not in page.text and "javascript:" not in page.text
    # API answers keep the API policy.
    assert get(server, "/health").headers["Content-Security-Policy"].startswith("default-src 'none'")


def test_etag_revalidation_answers_304_without_a_body(server):
    for path in ["/console/", *loaded_files(server)]:
        first = get(server, path)
        etag = first.headers["ETag"]
        assert re.fullmatch(r'"[A-Za-z0-9_-]+"', etag) and first.headers["Cache-Control"] == "no-cache", path
        again = get(server, path, **{"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b"" and again.headers["ETag"] == etag, path
        assert get(server, path, **{"If-None-Match": f'W/{etag}, "other"'}).status_code == 304
        assert get(server, path, **{"If-None-Match": '"stale"'}).status_code == 200


def test_gzip_only_when_accepted_and_the_same_bytes_once_decoded(server):
    for path in ["/console/", *loaded_files(server)]:
        plain_head, plain = raw_get(server, path, "identity")
        zipped_head, zipped = raw_get(server, path, "gzip, br")
        assert "content-encoding" not in plain_head.lower(), path
        assert "Content-Encoding: gzip" in zipped_head and "Vary: Accept-Encoding" in zipped_head, path
        assert gzip.decompress(zipped) == plain and len(zipped) < len(plain), path
        refused_head, _ = raw_get(server, path, "gzip;q=0")
        assert "content-encoding" not in refused_head.lower(), path


def test_gzip_and_identity_copies_have_their_own_etags_and_if_match_compares_strongly(server):
    """RFC 9110 §8.8.3: a strong tag names one representation, so the gzip copy has its own; §13.1.1: an
    If-Match that names no current version is 412, a weak tag never matches."""
    path = "/console/"
    plain = get(server, path, **{"Accept-Encoding": "identity"})
    zipped = get(server, path, **{"Accept-Encoding": "gzip"})
    assert zipped.headers.get("Content-Encoding") == "gzip" and "Content-Encoding" not in plain.headers
    assert plain.headers["ETag"] != zipped.headers["ETag"], (plain.headers["ETag"], zipped.headers["ETag"])
    assert get(server, path, **{"Accept-Encoding": "gzip", "If-None-Match": plain.headers["ETag"]}).status_code == 200
    assert get(server, path, **{"Accept-Encoding": "gzip", "If-None-Match": zipped.headers["ETag"]}).status_code == 304
    for tag in (plain.headers["ETag"], "*", f'"other", {plain.headers["ETag"]}'):
        assert get(server, path, **{"Accept-Encoding": "identity", "If-Match": tag}).status_code == 200, tag
    for tag in ('"stale"', "W/" + plain.headers["ETag"], zipped.headers["ETag"]):
        r = get(server, path, **{"Accept-Encoding": "identity", "If-Match": tag})
        assert r.status_code == 412 and r.json()["error"]["code"] == "precondition_failed", (tag, r.status_code, r.text)


def test_unknown_console_file_is_a_json_404(server):
    r = get(server, "/console/no-such-file.js")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert get(server, "/console/..%2fopenapi.yaml").status_code == 404


@pytest.mark.parametrize("path", ["/", "/console/"])
def test_head_answers_without_a_body(server, path):
    r = requests.head(server.url(path), timeout=TIMEOUT, allow_redirects=False)
    assert r.status_code in (200, 302) and r.content == b""
