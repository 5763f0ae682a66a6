"""How the API says no: every refusal is a 4xx JSON body whose `detail` names the field.

FastAPI's own 422 shape (`{"detail": [{"loc", "msg", "type"}]}`) is kept so existing A1111 clients
read it, with a `field` per problem and one `message` line for people. `EaselRoute` applies it to
Easel's routes only (Gradio's routes keep their own handlers), and never echoes the input: a
multi-megabyte base64 image does not come back in an error.
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable, Coroutine, Iterable

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from webui.errors import FieldError, TooManyJobs


class ApiError(Exception):
    """A refusal with its HTTP status and the field at fault (None when no one field is)."""

    def __init__(self, status: int, message: str, field: str | None = None, error: str | None = None,
                 location: str = "body"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.location = location
        self.error = error or {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
                               409: "Conflict", 422: "ValidationError"}.get(status, "Error")

    def response(self) -> JSONResponse:
        field, message = (printable(self.field) if self.field else None), printable(self.message)
        text = f"{field}: {message}" if field else message
        detail = [{"loc": [self.location, *field.split(".")] if field else [], "field": field,
                   "msg": message, "type": self.error}]
        return JSONResponse({"error": self.error, "message": text, "detail": detail}, status_code=self.status)


def field_error(field: str, message: str) -> ApiError:
    return ApiError(422, message, field)


def printable(text: Any) -> str:
    """Text that is safe to put in a JSON response (lone surrogates escaped)."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def _field_of(loc: Iterable[Any], msg: str) -> str:
    parts = [printable(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    if parts:
        return ".".join(parts)
    head = msg.split(":", 1)[0]  # model-level validators start their message with the field name
    return head if ":" in msg and head.replace("_", "").isalnum() else "body"


def validation_response(errors: Iterable[dict]) -> JSONResponse:
    detail, lines = [], []
    for e in errors:
        msg = printable(e.get("msg", "invalid")).removeprefix("Value error, ")
        if e.get("type") == "json_invalid":  # loc is ("body", character offset)
            field, msg = "body", f"is not valid JSON ({msg} at character {e.get('loc', ('', '?'))[-1]})"
        else:
            field = _field_of(e.get("loc", ()), msg)
        if msg.startswith(f"{field}: "):
            msg = msg[len(field) + 2:]
        detail.append({"loc": [printable(p) for p in e.get("loc", ())], "field": field, "msg": msg,
                       "type": str(e.get("type", "value_error"))})
        lines.append(f"{field}: {msg}")
    return JSONResponse({"error": "ValidationError", "message": "; ".join(lines), "detail": detail}, status_code=422)


class InvalidFields(ApiError):
    """Pydantic errors found after FastAPI's own validation (option merges, nested settings), with
    `prefix` put before each location so the field is named as the client sent it."""

    def __init__(self, errors: Iterable[dict], prefix: tuple[str, ...] = ()):
        self.errors = [{**e, "loc": (*prefix, *e.get("loc", ()))} for e in errors]
        super().__init__(422, "invalid request")

    def response(self) -> JSONResponse:
        return validation_response(self.errors)


MAX_JSON_VALUES = 1_000_000


def parse_json_body(body: bytes) -> Any:
    """A request body parsed, and refused (FieldError naming where) if it holds what cannot be echoed back
    as JSON or written into a PNG: NaN or ±Infinity (Python's parser accepts them) or a lone surrogate.
    Run off the event loop: a multi-megabyte body must not stall everyone else's requests. A body with
    more than MAX_JSON_VALUES values is refused before parsing (counted in C: every `,`, `[` and `{`,
    inside strings too, is an upper bound): 40 MB of `0,0,0,…` would be 21 million Python objects,
    while a picture is one string however large."""
    values = body.count(b",") + body.count(b"[") + body.count(b"{")
    if values > MAX_JSON_VALUES:
        raise FieldError("body", f"holds more than {MAX_JSON_VALUES:,} JSON values (commas and brackets); "
                                 "Easel's requests hold a few hundred")
    parsed = json.loads(body)
    if (problem := json_problem(parsed)) is not None:
        field, _, message = problem.partition(": ")
        raise FieldError(field, message)
    return parsed


def _parsed_or_none(body: bytes) -> Any:
    try:
        return parse_json_body(body)
    except FieldError:
        raise
    except (ValueError, UnicodeDecodeError):
        return None


def json_problem(value: Any) -> str | None:
    """Where parsed JSON holds NaN, ±Infinity or a lone surrogate ("field.path: what"), else None.
    Paths are built only for the value at fault (a node is (parent node, key, value))."""
    stack: list[tuple[Any, Any, Any]] = [(None, None, value)]
    while stack:
        node = stack.pop()
        item = node[2]
        if isinstance(item, float) and not math.isfinite(item):
            return f"{_path(node)}: NaN and Infinity are not JSON numbers"
        if isinstance(item, str) and not _utf8_ok(item):
            return f"{_path(node)}: contains invalid Unicode (a lone surrogate)"
        if isinstance(item, dict):
            for k, v in item.items():
                if not _utf8_ok(str(k)):
                    return f"{_path(node)}: a key contains invalid Unicode (a lone surrogate)"
                stack.append((node, k, v))
        elif isinstance(item, list):
            stack.extend((node, i, v) for i, v in enumerate(item))
    return None


def _path(node: tuple) -> str:
    keys = []
    while node is not None and node[0] is not None:
        keys.append(printable(node[1]))
        node = node[0]
    return ".".join(reversed(keys)) or "body"


def _utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


class EaselRoute(APIRoute):
    """An APIRoute whose validation errors, ApiErrors and HTTPExceptions become the JSON above, and whose
    JSON body is parsed (and checked) in a worker thread rather than on the event loop."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                if request.method in ("POST", "PUT", "PATCH") and "json" in request.headers.get("content-type", ""):
                    body = await request.body()
                    if body:
                        parsed = await run_in_threadpool(_parsed_or_none, body)
                        if parsed is not None:
                            request._json = parsed  # FastAPI reuses it; not JSON at all: FastAPI's 422 says so
                return await handler(request)
            except (RequestValidationError, ValidationError) as e:
                return validation_response(e.errors())
            except ApiError as e:
                return e.response()
            except FieldError as e:  # admission's and the requests' own refusals
                return ApiError(422, e.message, e.field).response()
            except TooManyJobs as e:  # the caller's own queue is full: come back when a job has finished
                response = ApiError(429, str(e)).response()
                response.headers["Retry-After"] = "10"
                return response
            except HTTPException as e:  # FastAPI's own, e.g. a body that is not UTF-8
                field = "body" if e.status_code == 400 else None
                message = "could not be read as UTF-8 JSON" if e.status_code == 400 else str(e.detail)
                response = ApiError(e.status_code, message, field).response()
                response.headers.update(e.headers or {})
                return response

        return handle
