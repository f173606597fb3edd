"""Access tokens are standard HS256 JWTs: PyJWT reads the server's and the server accepts PyJWT's, and only those."""

from __future__ import annotations

import base64
import json
import time
import uuid

import jwt
import pytest
import requests

from conftest import JWT_SECRET, assert_json_error, auth_get, create_session, post_json, register

ACCESS_TTL_SECONDS = 7 * 60


@pytest.fixture
def jwt_server(start_server):
    return start_server(env={"JWT_ACCESS_TTL": "7m"})


@pytest.fixture
def alice(jwt_server):
    return register(jwt_server)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_for(user_id: str, role: str = "user", **changes) -> dict:
    now = int(time.time())
    claims = {"sub": user_id, "role": role, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def sessions_url(server, user_id: str) -> str:
    return server.url(f"/api/users/{user_id}/sessions")


def test_server_token_decodes_with_pyjwt(jwt_server, alice):
    token = alice["accessToken"]
    assert alice["tokenType"] == "Bearer"
    assert alice["expiresIn"] == ACCESS_TTL_SECONDS

    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256"
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"], options={"require": ["sub", "role", "iat", "exp", "jti"]})
    assert claims["sub"] == alice["user"]["id"]
    assert claims["role"] == "user"
    assert claims["exp"] - claims["iat"] == ACCESS_TTL_SECONDS
    assert abs(claims["iat"] - time.time()) < 60
    assert isinstance(claims["jti"], str) and claims["jti"]

    # A second login issues a token with a different id.
    r = post_json(jwt_server.url("/auth/login"), {"username": alice["user"]["username"], "password": alice["password"]})
    assert r.status_code == 200, r.text
    other = jwt.decode(r.json()["accessToken"], JWT_SECRET, algorithms=["HS256"])
    assert other["jti"] != claims["jti"]

    # Signed with the configured secret: verifying with another key fails.
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "x" * 64, algorithms=["HS256"])


def test_pyjwt_token_is_accepted(jwt_server, alice):
    user_id = alice["user"]["id"]
    forged = jwt.encode(claims_for(user_id), JWT_SECRET, algorithm="HS256")

    # A session created with the PyJWT token belongs to the user…
    created = create_session(jwt_server, forged, metadata={"via": "pyjwt"})
    assert created["userId"] == user_id

    r = auth_get(sessions_url(jwt_server, user_id), forged)
    assert r.status_code == 200, r.text
    assert [s["sessionId"] for s in r.json()["sessions"]] == [created["sessionId"]]

    # …and the server's own token sees it too.
    r = auth_get(sessions_url(jwt_server, user_id), alice["accessToken"])
    assert r.status_code == 200, r.text
    assert r.json()["total"] == 1


def _alg_none(claims: dict) -> str:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims).encode())
    return f"{header}.{payload}."


def _tampered(token: str, **changes) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    return ".".join([header, b64url(json.dumps(claims, separators=(",", ":")).encode()), signature])


BAD_TOKENS = {
    "alg_none": lambda uid, tok: _alg_none(claims_for(uid)),
    "alg_none_with_server_signature": lambda uid, tok: _alg_none(claims_for(uid))[:-1] + "." + tok.split(".")[2],
    "hs512_same_secret": lambda uid, tok: jwt.encode(claims_for(uid), JWT_SECRET, algorithm="HS512"),
    "hs256_other_secret": lambda uid, tok: jwt.encode(claims_for(uid), "another-secret-" + "z" * 50, algorithm="HS256"),
    "tampered_role": lambda uid, tok: _tampered(tok, role="admin"),
    "tampered_exp": lambda uid, tok: _tampered(tok, exp=int(time.time()) + 10 * 86400),
    "expired": lambda uid, tok: jwt.encode(claims_for(uid, iat=int(time.time()) - 600, exp=int(time.time()) - 60), JWT_SECRET,
                                           algorithm="HS256"),
    "nbf_not_a_number": lambda uid, tok: jwt.encode(claims_for(uid) | {"nbf": "yesterday"}, JWT_SECRET, algorithm="HS256"),
    "nbf_in_the_future": lambda uid, tok: jwt.encode(claims_for(uid) | {"nbf": int(time.time()) + 3600}, JWT_SECRET, algorithm="HS256"),
    "issued_in_the_future": lambda uid, tok: jwt.encode(claims_for(uid, iat=int(time.time()) + 3600), JWT_SECRET, algorithm="HS256"),
    "missing_jti": lambda uid, tok: jwt.encode(claims_for(uid, jti=None), JWT_SECRET, algorithm="HS256"),
    "missing_exp": lambda uid, tok: jwt.encode(claims_for(uid, exp=None), JWT_SECRET, algorithm="HS256"),
    "sub_not_uuid": lambda uid, tok: jwt.encode(claims_for("alice"), JWT_SECRET, algorithm="HS256"),
    "unknown_role": lambda uid, tok: jwt.encode(claims_for(uid, role="root"), JWT_SECRET, algorithm="HS256"),
    "malformed_word": lambda uid, tok: "not-a-jwt",
    "malformed_two_parts": lambda uid, tok: ".".join(tok.split(".")[:2]),
    "malformed_four_parts": lambda uid, tok: tok + ".abc",
    "malformed_dots": lambda uid, tok: "...",
    "malformed_bad_base64": lambda uid, tok: "%%%." + tok.split(".", 1)[1],
    "malformed_truncated_signature": lambda uid, tok: tok[:-5],
}


def test_refused_tokens(jwt_server, alice):
    user_id = alice["user"]["id"]
    url = sessions_url(jwt_server, user_id)
    assert auth_get(url, alice["accessToken"]).status_code == 200
    failures = []
    for name, make in BAD_TOKENS.items():
        token = make(user_id, alice["accessToken"])
        r = auth_get(url, token)
        try:
            error = assert_json_error(r, 401)
            # RFC 6750 §3.1: a refused token is named in the challenge.
            assert r.headers.get("WWW-Authenticate") == 'Bearer realm="chat-backend", error="invalid_token"', r.headers
            if name == "expired":
                assert error["code"] == "token_expired", error
            else:
                assert error["code"] == "invalid_token", error
        except AssertionError as e:
            failures.append(f"{name}: {e}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("header", [
    "{token}",                 # no scheme
    "Token {token}",           # wrong scheme
    "Basic {token}",
    "Bearer",                  # scheme only
    "Bearer{token}",           # no space
])
def test_authorization_header_must_be_bearer(jwt_server, alice, header):
    r = requests.get(sessions_url(jwt_server, alice["user"]["id"]),
                     headers={"Authorization": header.format(token=alice["accessToken"])}, timeout=10)
    assert_json_error(r, 401)
    assert r.headers.get("WWW-Authenticate", "").startswith("Bearer "), r.headers


@pytest.mark.parametrize("header", ["bearer {token}", "BEARER {token}", "Bearer   {token}"])
def test_authorization_scheme_is_case_insensitive_and_takes_several_spaces(jwt_server, alice, header):
    """RFC 9110 §11.1, §11.4: the scheme is case-insensitive, followed by one or more spaces."""
    r = requests.get(sessions_url(jwt_server, alice["user"]["id"]),
                     headers={"Authorization": header.format(token=alice["accessToken"])}, timeout=10)
    assert r.status_code == 200, r.text


def test_no_token_is_401(jwt_server, alice):
    r = requests.get(sessions_url(jwt_server, alice["user"]["id"]), timeout=10)
    assert_json_error(r, 401, "unauthenticated")
    # RFC 9110 §15.5.2: every 401 carries a challenge; no error code when no token was sent (RFC 6750 §3.1).
    assert r.headers.get("WWW-Authenticate") == 'Bearer realm="chat-backend"', r.headers


def refresh(server, token):
    return post_json(server.url("/auth/refresh"), {"refreshToken": token})


def test_refresh_rotation_and_reuse_revokes_family(jwt_server, alice):
    user_id = alice["user"]["id"]
    url = sessions_url(jwt_server, user_id)
    r0 = alice["refreshToken"]

    r = refresh(jwt_server, r0)
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["user"]["id"] == user_id
    assert first["tokenType"] == "Bearer" and first["expiresIn"] == ACCESS_TTL_SECONDS
    assert first["refreshToken"] != r0
    assert first["accessToken"] != alice["accessToken"]
    assert jwt.decode(first["accessToken"], JWT_SECRET, algorithms=["HS256"])["sub"] == user_id
    assert auth_get(url, first["accessToken"]).status_code == 200

    r = refresh(jwt_server, first["refreshToken"])
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["refreshToken"] not in (r0, first["refreshToken"])

    # r0 was already rotated: replaying it is theft; the whole family is revoked.
    assert_json_error(refresh(jwt_server, r0), 401, "invalid_refresh_token")
    assert_json_error(refresh(jwt_server, second["refreshToken"]), 401, "invalid_refresh_token")
    assert_json_error(refresh(jwt_server, first["refreshToken"]), 401, "invalid_refresh_token")


def test_unknown_refresh_token_is_401(jwt_server):
    assert_json_error(refresh(jwt_server, "this-token-was-never-issued"), 401, "invalid_refresh_token")


def test_logout_revokes_access_and_refresh_token(jwt_server, alice):
    user_id = alice["user"]["id"]
    url = sessions_url(jwt_server, user_id)
    # A second, independent login of the same user.
    r = post_json(jwt_server.url("/auth/login"), {"username": alice["user"]["username"], "password": alice["password"]})
    assert r.status_code == 200, r.text
    other = r.json()

    assert auth_get(url, alice["accessToken"]).status_code == 200
    r = requests.post(jwt_server.url("/auth/logout"), headers={"Authorization": f"Bearer {alice['accessToken']}"}, timeout=10)
    assert r.status_code == 204, r.text
    assert r.content == b""

    assert_json_error(auth_get(url, alice["accessToken"]), 401, "token_revoked")
    assert_json_error(refresh(jwt_server, alice["refreshToken"]), 401, "invalid_refresh_token")
    # Logging out again with the revoked token is refused as well.
    r = requests.post(jwt_server.url("/auth/logout"), headers={"Authorization": f"Bearer {alice['accessToken']}"}, timeout=10)
    assert_json_error(r, 401)

    # The other login is not signed out.
    assert auth_get(url, other["accessToken"]).status_code == 200
    r = refresh(jwt_server, other["refreshToken"])
    assert r.status_code == 200, r.text


def test_logout_needs_a_token(jwt_server):
    r = requests.post(jwt_server.url("/auth/logout"), timeout=10)
    assert_json_error(r, 401, "unauthenticated")


def _standard_alphabet_token(user_id: str) -> str:
    """A valid token re-encoded with base64's standard alphabet (`+` and `/` for `-` and `_`) somewhere."""
    for _ in range(200):
        token = jwt.encode(claims_for(user_id, jti=str(uuid.uuid4())), JWT_SECRET, algorithm="HS256")
        if "-" in token or "_" in token:
            return token.replace("-", "+").replace("_", "/")
    raise AssertionError("no token with '-' or '_' in 200 tries")


def _nonzero_trailing_bits(token: str) -> str:
    """The same bytes, but the signature's last character carries set bits past the last byte (RFC 4648 §3.5):
    a loose decoder reads the same signature."""
    head, payload, signature = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature[-1])
    assert len(signature) % 4 == 3  # 32 bytes: 43 characters, the last carries 2 unused bits
    return f"{head}.{payload}.{signature[:-1]}{alphabet[last | 0b01]}"


def _padded_payload(user_id: str) -> str:
    """A valid token whose payload is written with its `=` padding."""
    for n in range(200):
        token = jwt.encode(claims_for(user_id, jti="j" * (n % 4 + 30)), JWT_SECRET, algorithm="HS256")
        head, payload, signature = token.split(".")
        if len(payload) % 4:
            return f"{head}.{payload}{'=' * (-len(payload) % 4)}.{signature}"
    raise AssertionError("no payload needing padding")


NON_CANONICAL = {
    "padded_signature": lambda uid, tok: tok + "=",
    "padded_payload": lambda uid, tok: _padded_payload(uid),
    "standard_alphabet": lambda uid, tok: _standard_alphabet_token(uid),
    "nonzero_trailing_bits": lambda uid, tok: _nonzero_trailing_bits(tok),
    "whitespace_inside": lambda uid, tok: tok[:20] + " " + tok[20:],
}


@pytest.mark.parametrize("name", sorted(NON_CANONICAL))
def test_tokens_not_in_canonical_base64url_are_refused(jwt_server, alice, name):
    """RFC 7515 §2: base64url without padding or other characters; a token is refused unless each part is the one
    canonical encoding of its bytes."""
    user_id = alice["user"]["id"]
    token = NON_CANONICAL[name](user_id, alice["accessToken"])
    assert token != alice["accessToken"]
    assert_json_error(auth_get(sessions_url(jwt_server, user_id), token), 401, "invalid_token")
