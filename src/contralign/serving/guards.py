"""What stands between a request and the model: errors in one JSON shape, the body-size limit,
the bearer token, and the request metrics.

Every error is ``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}``
(OpenAI's shape, so OpenAI clients raise their usual exceptions with our message):

=====  =========================  ==========================================================
400    ``invalid_request_error``  malformed JSON, a bad ``Content-Length``
401    ``authentication_error``   missing or wrong bearer token (with ``WWW-Authenticate``)
404    ``not_found_error``        unknown path, ``/search`` on a server without an index
405    ``invalid_request_error``  wrong method
413    ``invalid_request_error``  body larger than ``max_body_bytes``
422    ``invalid_request_error``  wrong types or values, a limit passed (``param`` names it)
500    ``server_error``           a bug (the traceback goes to the server's log)
=====  =========================  ==========================================================
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from contralign.serving.metrics import ServerMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("contralign.serving")

_TYPES = {400: "invalid_request_error", 401: "authentication_error",
          404: "not_found_error", 413: "invalid_request_error", 422: "invalid_request_error"}


class ApiError(Exception):
    """A client's mistake, answered as ``status`` with the one error shape.

    Args:
        status: the HTTP status code (4xx).
        message: one line saying what is wrong and what to do.
        param: the request field at fault, if one is.
    """

    def __init__(self, status: int, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def error_response(status: int, message: str, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error, ours and the framework's, in the one JSON shape."""

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.message, exc.param, exc.headers)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        message = {404: f"no such endpoint: {request.method} {request.url.path}",
                   405: f"method {request.method} not allowed on {request.url.path}"
                   }.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = list(exc.errors())
        first: dict[str, Any] = dict(errors[0]) if errors else {"msg": "invalid request"}
        if first.get("type") == "json_invalid":
            reason = dict(first.get("ctx") or {}).get("error", "")
            return error_response(400, f"body: not valid JSON ({reason})")
        param = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or None
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return error_response(422, f"{param or 'body'}: {first.get('msg')}{more}", param)

    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("error answering %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal server error (see the server's log)")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, server_error)


def bearer_check(token: str | None) -> Callable[[Request], None]:
    """A dependency that refuses requests without ``Authorization: Bearer <token>`` (a no-op
    when ``token`` is None). Tokens are compared in constant time."""
    expected = None if token is None else token.encode()

    def check(request: Request) -> None:
        if expected is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 expected):
            raise ApiError(401, "missing or wrong bearer token (send Authorization: Bearer "
                                "<token>)",
                           headers={"WWW-Authenticate": 'Bearer realm="contralign"'})

    return check


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Refuse request bodies above ``max_bytes`` with 413: at once when ``Content-Length`` says
    so, else as soon as the streamed body passes the limit (chunked uploads, lying headers).

    Pure ASGI (no response buffering, no ``BaseHTTPMiddleware``): whatever the app does with the
    exception from its ``receive``, the response it would send is replaced by the 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _send_json(send, 400, error_body(400, "Content-Length: not a number"))
                return
            if int(declared) > self.max_bytes:
                await _send_json(send, 413, self._too_large())
                return
        state = {"received": 0, "over": False, "started": False}

        async def limited_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_bytes:
                    state["over"] = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            if state["over"]:  # the app's answer to the exception: ours instead
                if message["type"] == "http.response.start" and not state["started"]:
                    state["started"] = True
                    await _send_json(send, 413, self._too_large())
                return
            state["started"] = state["started"] or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            if not state["started"]:
                state["started"] = True
                await _send_json(send, 413, self._too_large())

    def _too_large(self) -> dict[str, Any]:
        return error_body(413, f"body: larger than the server's limit of {self.max_bytes} bytes")


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})


class RequestMetrics:
    """Count requests by route and status and time them (``contralign_requests_total``,
    ``contralign_request_seconds``); unknown paths are counted as ``other`` so that scanners
    cannot grow the label set."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "other"
            self.metrics.observe_request(endpoint, status["code"], time.perf_counter() - start)
