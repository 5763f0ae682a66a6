"""One limit on request bodies for every route of the app (the API, the canvas, Gradio's, the sign-in
form, extensions'): `--max-body-mb`. A body that declares more is refused before it is read; one sent
in chunks is cut off as soon as it passes the limit. Either way: 413 with a JSON reason."""
from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class TooLarge(Exception):
    pass


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def refusal(self) -> JSONResponse:
        limit = f"{self.max_bytes / 2**20:g} MiB"
        return JSONResponse({"error": "PayloadTooLarge", "message": f"body: larger than {limit} (--max-body-mb)",
                             "detail": [{"loc": ["body"], "field": "body", "msg": f"larger than {limit}",
                                         "type": "too_large"}]}, status_code=413)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self.refusal()(scope, receive, send)
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise TooLarge
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except TooLarge:
            if not started:
                await self.refusal()(scope, receive, send)
