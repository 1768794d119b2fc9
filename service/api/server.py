"""The HTTP server: uvicorn with bounded request heads, head timeouts and a connection cap.

uvicorn's httptools protocol has no limit of its own on header size or count, and no deadline
for a request head: a client could send a 16 MiB header, 100,000 headers or one byte every few
seconds and be held forever. `guarded_protocol` adds those bounds; body stalls are bounded by
the body-limit middleware, which sees each chunk arrive.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.api.problems import MEDIA_TYPE, TYPE_BASE
from service.api.stopping import CutOffAnswers, WorkerConfig, supervise
from service.settings import Settings


@dataclass(frozen=True)
class ConnectionLimits:
    """What one connection may hold: head size and header count, head deadline, open count."""

    max_header_bytes: int
    max_header_count: int
    head_timeout_s: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        """The limits the settings ask for."""
        return cls(
            settings.max_header_bytes,
            settings.max_header_count,
            settings.head_timeout_s,
            settings.max_connections,
        )


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing a request that is being refused."""


def problem_bytes(status: int, slug: str, detail: str, retry_after: int | None = None) -> bytes:
    """A complete HTTP/1.1 problem response that closes the connection, as raw bytes."""
    phrase = HTTPStatus(status).phrase
    body = json.dumps(
        {"type": TYPE_BASE + slug, "title": phrase, "status": status, "detail": detail}
    ).encode()
    head = [
        f"HTTP/1.1 {status} {phrase}",
        f"content-type: {MEDIA_TYPE}",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if retry_after is not None:
        head.append(f"retry-after: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def guarded_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with `limits` enforced on every connection."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        """Refuses oversized heads (431), slow heads (408) and connections over the cap (503)."""

        _head_bytes = 0
        _header_count = 0
        _awaiting_head = True
        _head_timer: asyncio.TimerHandle | None = None
        _refusal: bytes | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            """Accept the connection, or answer 503 and close it when the cap is reached."""
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                self._refuse(
                    problem_bytes(
                        503,
                        "too-many-connections",
                        f"the server holds its limit of {limits.max_connections} connections "
                        "(UNET_MAX_CONNECTIONS); retry shortly",
                        retry_after=1,
                    )
                )
                return
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            """Forget the head deadline with the connection."""
            self._cancel_head_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            """Feed the parser, refusing a head that grows past the byte limit."""
            if self._refusal is not None:
                return  # the refusal is on its way; nothing more is read
            if self._awaiting_head:
                self._head_bytes += len(data)
                self._arm_head_timer()
            super().data_received(data)
            # httptools buffers a header until it is complete, so count the raw bytes too.
            if self._awaiting_head and self._head_bytes > limits.max_header_bytes:
                self._refuse(self._too_large())

        def on_message_begin(self) -> None:
            """A new request: its head is counted from here."""
            self._header_count = 0
            super().on_message_begin()

        def on_header(self, name: bytes, value: bytes) -> None:
            """Count headers; past the limit, stop parsing with a 431."""
            self._header_count += 1
            if self._header_count > limits.max_header_count:
                self._refusal = problem_bytes(
                    431,
                    "too-many-headers",
                    f"the request has more than {limits.max_header_count} headers "
                    "(UNET_MAX_HEADER_COUNT); send fewer",
                )
                raise _Refused  # httptools turns it into a parser error: parsing stops
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            """The head is in: its deadline and byte count no longer apply."""
            self._awaiting_head = False
            self._cancel_head_timer()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            """The body is in: whatever comes next is the next request's head."""
            self._awaiting_head = True
            self._head_bytes = 0
            super().on_message_complete()

        def send_400_response(self, msg: str) -> None:
            """Send the refusal a callback prepared, else uvicorn's own 400."""
            if self._refusal is not None:
                self._refuse(self._refusal)
            else:
                super().send_400_response(msg)

        def _too_large(self) -> bytes:
            return problem_bytes(
                431,
                "request-head-too-large",
                f"the request line and headers are larger than {limits.max_header_bytes} bytes "
                "(UNET_MAX_HEADER_BYTES); send fewer or shorter headers",
            )

        def _arm_head_timer(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(limits.head_timeout_s, self._head_late)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            self._head_timer = None
            if not self._awaiting_head or self.transport.is_closing():
                return
            if self._head_bytes == 0 and self.cycle is not None:
                self.transport.close()  # an idle keep-alive connection: nothing to answer
                return
            self._refuse(
                problem_bytes(
                    408,
                    "request-head-timeout",
                    f"the request head did not arrive within {limits.head_timeout_s} s "
                    "(UNET_HEAD_TIMEOUT_S); send it in one go",
                )
            )

        def _refuse(self, response: bytes) -> None:
            self._refusal = response
            self._cancel_head_timer()
            if not self.transport.is_closing():
                self.transport.write(response)
                self.transport.close()

    return GuardedHttpToolsProtocol


def __getattr__(name: str) -> Any:
    """`GuardedFromEnvironment`: the guarded protocol under the UNET_* limits, by import path.

    uvicorn's worker processes are spawned, so they receive the protocol as a name to import,
    and each builds it from the same environment as the parent.
    """
    if name == "GuardedFromEnvironment":
        return guarded_protocol(ConnectionLimits.from_settings(Settings()))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run(app: FastAPI, settings: Settings, host: str, port: int) -> None:
    """Serve `app` with uvicorn under the connection limits of `settings`."""
    uvicorn.run(
        CutOffAnswers(app),
        host=host,
        port=port,
        http=guarded_protocol(ConnectionLimits.from_settings(settings)),
        timeout_keep_alive=settings.keep_alive_timeout_s,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
        log_level=settings.log_level,
        access_log=False,  # requests are logged by the service's own structured middleware
    )


def run_workers(factory: str, settings: Settings, host: str, port: int) -> None:
    """Serve the app `factory` (an import path) in `settings.workers` processes on one port.

    Each worker builds its own app, settings and store from the environment, which it shares
    with this process; the limits of `settings` come from the same environment. Workers stop
    when this process stops or dies (service.api.stopping).
    """
    config = WorkerConfig(
        factory,
        factory=True,
        workers=settings.workers,
        host=host,
        port=port,
        http=f"{__name__}:GuardedFromEnvironment",
        timeout_keep_alive=settings.keep_alive_timeout_s,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
        log_level=settings.log_level,
        access_log=False,
    )
    supervise(config)
