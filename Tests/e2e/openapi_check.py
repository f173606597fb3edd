"""Every response the end-to-end suite receives, checked against openapi.yaml.

conftest.py wraps `requests` (every HTTP call the tests make through it, helpers included) and hands each
response from a chat-backend server to `check()`, which returns what is wrong with it:

* the route (path template and method) and the status must be documented, the content type must be the
  documented one, and a JSON body must validate against the documented schema (OpenAPI 3.0 turned into
  JSON Schema: `$ref` resolved, `nullable` as a `null` type, `format: uuid` and `date-time` checked, the
  latter as the document's convention: RFC 3339 UTC with milliseconds);
* object fields must come in the order of the schema's `properties` (the server writes them in that order);
* the answers of the connection layer (openapi.yaml, "Refused by the connection layer") and 405 may come
  from any path: they must be the Error object with the code the table gives; a JSON answer from a path the
  document does not describe must be the Error object too. `/socket.io/` (Engine.IO's own answers) and
  `/ws` are not HTTP API routes and are not checked.
"""

from __future__ import annotations

import copy
import json
import re
from functools import lru_cache
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "openapi.yaml"

# "Refused by the connection layer": status -> the codes it may carry, on any path.
CONNECTION_LAYER = {400: {"bad_request"}, 408: {"request_timeout"}, 413: {"payload_too_large"}, 414: {"uri_too_long"},
                    431: {"headers_too_large"},
                    417: {"expectation_failed"}, 426: {"unsupported_websocket_version"}, 501: {"unsupported_transfer_coding"},
                    503: {"too_many_connections"}}
NOT_CHECKED = ("/socket.io/", "/ws")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

FORMATS = jsonschema.FormatChecker(formats=())
FORMATS.checks("date-time")(lambda value: not isinstance(value, str) or bool(TIMESTAMP.match(value)))
FORMATS.checks("uuid")(lambda value: not isinstance(value, str) or bool(UUID.match(value)))


@lru_cache(maxsize=1)
def document() -> dict:
    return yaml.safe_load(DOCUMENT.read_text())


def _resolve(node, root: dict):
    """A copy of an OpenAPI 3.0 schema as JSON Schema: refs inlined, `nullable` as a null type."""
    if isinstance(node, list):
        return [_resolve(item, root) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = root
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return _resolve(target, root)
    out = {key: _resolve(value, root) for key, value in node.items() if key not in ("example", "examples", "nullable")}
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
        if "$ref" in node or ("type" not in node and "enum" not in node):
            out = {"anyOf": [out, {"type": "null"}]}
    return out


@lru_cache(maxsize=None)
def _schema(path: str, method: str, status: int) -> tuple[str, str] | None:
    """(media types, their JSON Schemas as JSON text) documented for the answer, or None if the status is not documented."""
    doc = document()
    responses = doc["paths"][path][method]["responses"]
    response = responses.get(str(status))
    if response is None:
        return None
    response = _resolve(response, doc)
    content = response.get("content") or {}
    if not content:
        return ("", "null")
    # Several media types (the console's files): each with its schema, the first one the default.
    return (" ".join(content), json.dumps({media: spec.get("schema", {}) for media, spec in content.items()}))


def _error_schema() -> dict:
    doc = document()
    return _resolve(doc["components"]["schemas"]["Error"], doc)


@lru_cache(maxsize=1)
def _routes() -> list[tuple[re.Pattern, str]]:
    routes = []
    for template in document()["paths"]:
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        routes.append((re.compile(pattern), template))
    return routes


def route(path: str) -> str | None:
    for pattern, template in _routes():
        if pattern.match(path):
            return template
    return None


def _order_problems(value, schema: dict, where: str) -> list[str]:
    """Fields out of the order of `properties`, anywhere inside `value`."""
    problems = []
    if isinstance(value, dict):
        for alternative in schema.get("oneOf", []) + schema.get("anyOf", []):
            if _validates(value, alternative):
                problems += _order_problems(value, alternative, where)
        properties = schema.get("properties")
        if properties:
            order = [key for key in properties if key in value]
            seen = [key for key in value if key in properties]
            if seen != order:
                problems.append(f"{where or 'body'}: fields in the order {seen}, documented {order}")
            for key in order:
                problems += _order_problems(value[key], properties[key], f"{where}.{key}" if where else key)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            problems += _order_problems(item, schema["items"], f"{where}[{i}]")
    return problems


def _validates(value, schema: dict) -> bool:
    return _validator(json.dumps(schema, sort_keys=True)).is_valid(value)


@lru_cache(maxsize=None)
def _validator(schema_text: str) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(json.loads(schema_text), format_checker=FORMATS)


def _body_problems(body: bytes, content_type: str, media: str, schema: dict) -> list[str]:
    if media == "*/*":  # any type (an attachment's own): the bytes are not described further
        return [] if content_type else ["no Content-Type, documented any type"]
    if not content_type.split(";")[0].strip().lower() == media:
        return [f"Content-Type {content_type!r}, documented {media!r}"]
    if media != "application/json":
        return []
    try:
        value = json.loads(body)
    except ValueError as e:
        return [f"body is not JSON ({e}): {body[:200]!r}"]
    validator = _validator(json.dumps(schema, sort_keys=True))
    problems = [f"{'/'.join(map(str, e.absolute_path)) or 'body'}: {e.message}"
                for e in sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.absolute_path)))]
    return problems + _order_problems(value, schema, "")


def check(method: str, path: str, status: int, content_type: str, body: bytes) -> list[str]:
    """What is wrong with one response, as readable lines (empty when it matches the document)."""
    method = method.lower()
    if path.startswith(NOT_CHECKED) or path in ("/ws",) or method == "options":
        return []
    is_json = content_type.split(";")[0].strip().lower() == "application/json"
    template = route(path)
    operation = template and document()["paths"][template].get(method if method != "head" else "get")
    if method == "head":
        return [f"HEAD answered with a body of {len(body)} bytes"] if body else []
    error_code = None
    if is_json:
        try:
            error_code = json.loads(body).get("error", {}).get("code")
        except (ValueError, AttributeError):
            pass
    documented = operation and _schema(template, method, status)
    if documented is None or not operation:
        # Not an answer of the operation: a connection-layer refusal, a 405, or a path outside the document.
        # (Under /api/ and /auth/ such a 404 or 405 counts against RATE_LIMIT_API: 429 past it.)
        if status in CONNECTION_LAYER and error_code in CONNECTION_LAYER[status] or status == 405 and template \
                or not template and status == 404 \
                or status == 429 and error_code == "rate_limited" and path.startswith(("/api/", "/auth/")):
            return _body_problems(body, content_type, "application/json", _error_schema())
        where = f"{method.upper()} {template}" if operation else (f"{method.upper()} on {template}" if template else "a path outside openapi.yaml")
        return [f"status {status} is not documented for {where} (body {body[:200]!r})"]
    medias, schemas = documented
    if not medias:
        return [f"documented without a body, got {len(body)} bytes: {body[:200]!r}"] if body else []
    schemas = json.loads(schemas)
    media = content_type.split(";")[0].strip().lower()
    if media not in schemas:
        media = "*/*" if "*/*" in schemas else medias.split()[0]
    return _body_problems(body, content_type, media, schemas[media])
