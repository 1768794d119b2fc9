"""Dropping the work of clients that left: a request is cancelled when its client disconnects.

Neither uvicorn nor Starlette cancels a handler whose client has gone, so a request queued for
the model would still run, taking a worker and a queue slot from a client who is waiting. Once
a request's body is in, nothing but `http.disconnect` can arrive on `receive`; this middleware
listens for it and cancels the request, whose queued inference job the engine then drops.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.ops.metrics import Metrics

log = logging.getLogger(__name__)

DISCONNECT: Message = {"type": "http.disconnect"}


class CancelOnDisconnect:
    """ASGI middleware: cancel a request whose client disconnects before its answer is sent."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request, cancelling it if its client leaves before the answer is complete."""
        task = asyncio.current_task()
        if scope["type"] != "http" or task is None:
            await self.app(scope, receive, send)
            return
        gone = asyncio.Event()
        watcher: asyncio.Task[None] | None = None
        answered = cancelled = False

        async def watch() -> None:
            nonlocal cancelled
            while (await receive())["type"] != "http.disconnect":
                pass  # after a complete body only a disconnect is defined; ignore the rest
            gone.set()
            if not answered:  # after the answer, a disconnect is just the end of the exchange
                cancelled = True
                task.cancel()

        async def watched_receive() -> Message:
            nonlocal watcher
            if watcher is not None:  # the body is in: the watcher owns `receive` now
                await gone.wait()
                return DISCONNECT
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                watcher = asyncio.create_task(watch())
            return message

        async def noting_send(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = True
            await send(message)

        try:
            await self.app(scope, watched_receive, noting_send)
        except asyncio.CancelledError:
            # Swallow only our own cancellation; a server shutting down cancels for real.
            if not cancelled or task.uncancel() > 0:
                raise
            self.metrics.abandoned.inc()
            log.info("%s %s: the client left; request dropped", scope["method"], scope["path"])
        finally:
            if watcher is not None:
                watcher.cancel()
