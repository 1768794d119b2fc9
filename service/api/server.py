"""The HTTP server: uvicorn with bounded request heads, head and send timeouts, a connection
cap and each client's share of it.

uvicorn's httptools protocol has no limit of its own on header size or count, no deadline for a
request head and none for an answer nobody reads: a client could send a 16 MiB header, 100,000
headers or one byte every few seconds, or ask for a large answer and never read it, and be held
forever. `guarded_protocol` adds those bounds; how fast a body must arrive is up to the
body-limit middleware, which sees each chunk arrive while the app waits for it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.api.oip.errors import is_oip
from service.api.problems import MEDIA_TYPE, problem_json
from service.api.stopping import CutOffAnswers, WorkerConfig, supervise
from service.ops.logs import log_config
from service.settings import Settings

log = logging.getLogger(__name__)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or networks (`10.0.0.0/8`, `::1`) as network objects."""
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def _within(address: str | None, among: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False  # a Unix socket or a garbled forwarded entry: in no network
    return any(ip in network for network in among)


@dataclass(frozen=True)
class ConnectionLimits:
    """What connections may hold: head size and header count, head and send deadlines, the
    open count, and one client's share of it."""

    max_header_bytes: int
    max_header_count: int
    head_timeout_s: float
    max_connections: int
    send_timeout_s: float = 30.0
    max_per_client: int | None = None  # None: no share
    unlimited: tuple[Network, ...] = ()  # clients not held to the share
    trusted_proxies: tuple[Network, ...] = ()  # whose X-Forwarded-For names the client

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        """The limits the settings ask for."""
        return cls(
            settings.max_header_bytes,
            settings.max_header_count,
            settings.head_timeout_s,
            settings.max_connections,
            settings.send_timeout_s,
            settings.max_connections_per_client,
            networks(settings.unlimited_clients),
            networks(settings.trusted_proxies),
        )

    def forwarded_client(self, peer: str | None, forwarded_for: bytes | None) -> str | None:
        """The client a request comes from: behind a trusted proxy, the nearest address in
        `X-Forwarded-For` that is not itself a trusted proxy; else the peer."""
        if forwarded_for is None or not _within(peer, self.trusted_proxies):
            return peer
        hops = [hop.strip() for hop in forwarded_for.decode("latin-1").split(",")]
        for hop in reversed(hops):  # each proxy appends the address it was reached from
            if hop and not _within(hop, self.trusted_proxies):
                return hop
        return peer

    def shared(self, client: str | None) -> bool:
        """Whether `client` is held to the per-client share."""
        if self.max_per_client is None or client is None:
            return False
        return not _within(client, self.unlimited) and not _within(client, self.trusted_proxies)


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing a request that is being refused."""


def problem_bytes(
    status: int, slug: str, detail: str, retry_after: int | None = None, target: bytes = b""
) -> bytes:
    """A complete HTTP/1.1 problem response that closes the connection, as raw bytes.

    `target`: the request line's target, as far as it arrived; on the Open Inference Protocol's
    paths the answer is its `{"error": detail}` instead of a problem document.
    """
    phrase = HTTPStatus(status).phrase
    path = target.split(b"?", 1)[0].decode("latin-1")
    if is_oip(path):
        body, media_type = json.dumps({"error": detail}).encode(), "application/json"
    else:
        body, media_type = problem_json(status, phrase, detail, slug=slug), MEDIA_TYPE
    head = [
        f"HTTP/1.1 {status} {phrase}",
        f"content-type: {media_type}",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if retry_after is not None:
        head.append(f"retry-after: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def guarded_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with `limits` enforced on every connection."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        """Refuses oversized heads (431), slow heads (408), connections over the cap (503) or
        over one client's share (429), and drops connections whose answer is not read."""

        _head_bytes = 0
        _header_count = 0
        _awaiting_head = True
        _head_timer: asyncio.TimerHandle | None = None
        _send_timer: asyncio.TimerHandle | None = None
        _refusal: bytes | None = None
        _peer: str | None = None
        _client_ip: str | None = None  # whom this connection counts for in the share
        _forwarded_for: bytes | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            """Accept the connection, or refuse it over the cap (503) or its client's share."""
            super().connection_made(transport)
            self._peer = self._client_ip = self.client[0] if self.client else None
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
            if self._over_share():
                self._refuse(self._share_refusal())
                return
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            """Forget the deadlines with the connection."""
            self._cancel_head_timer()
            self._cancel_send_timer()
            super().connection_lost(exc)

        def pause_writing(self) -> None:
            """The client is not reading what is sent: it has `send_timeout_s` to start again."""
            super().pause_writing()
            if self._send_timer is None:
                self._send_timer = self.loop.call_later(limits.send_timeout_s, self._send_late)

        def resume_writing(self) -> None:
            """The client reads again: the send deadline is off."""
            self._cancel_send_timer()
            super().resume_writing()

        def on_response_complete(self) -> None:
            """The answer is out; a body it did not need is not waited for."""
            self._client_ip = self._peer  # a proxy's next request may be someone else's
            if not self._awaiting_head and not self.pipeline and not self.transport.is_closing():
                # The request's body is still arriving: reading the rest only to throw it
                # away would let a client hold the connection at one byte a minute.
                self.transport.close()
            super().on_response_complete()

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
            self._forwarded_for = None
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
                    target=self._target(),
                )
                raise _Refused  # httptools turns it into a parser error: parsing stops
            if name.lower() == b"x-forwarded-for":
                # Several headers are one comma-separated list (RFC 9110, 5.3).
                joined = (self._forwarded_for + b",") if self._forwarded_for else b""
                self._forwarded_for = joined + value
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            """The head is in: its deadline and byte count no longer apply; a request a trusted
            proxy forwards counts towards its client's share."""
            self._awaiting_head = False
            self._cancel_head_timer()
            client = limits.forwarded_client(self._peer, self._forwarded_for)
            if client != self._peer:
                self._client_ip = client
                if self._over_share():
                    self._refusal = self._share_refusal()
                    raise _Refused
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

        def _over_share(self) -> bool:
            if not limits.shared(self._client_ip) or limits.max_per_client is None:
                return False
            same = sum(
                1
                for connection in self.connections
                if getattr(connection, "_client_ip", None) == self._client_ip
            )
            return same > limits.max_per_client

        def _share_refusal(self) -> bytes:
            log.warning(
                "refused a connection from %s: it holds %d, its share (UNET_MAX_CONNECTIONS_PER_"
                "CLIENT)",
                self._client_ip,
                limits.max_per_client,
            )
            return problem_bytes(
                429,
                "too-many-connections-from-client",
                f"this client holds its share of {limits.max_per_client} connections "
                "(UNET_MAX_CONNECTIONS_PER_CLIENT); close some or retry shortly",
                retry_after=1,
            )

        def _cancel_send_timer(self) -> None:
            if self._send_timer is not None:
                self._send_timer.cancel()
                self._send_timer = None

        def _send_late(self) -> None:
            self._send_timer = None
            if self.transport.is_closing() and self.transport.get_write_buffer_size() == 0:
                return
            log.warning(
                "dropped the connection of %s: it read none of its answer for %s s "
                "(UNET_SEND_TIMEOUT_S)",
                self._client_ip,
                limits.send_timeout_s,
            )
            # abort, not close: close would keep the unsent answer until the client reads it.
            self.transport.abort()

        def _too_large(self) -> bytes:
            return problem_bytes(
                431,
                "request-head-too-large",
                f"the request line and headers are larger than {limits.max_header_bytes} bytes "
                "(UNET_MAX_HEADER_BYTES); send fewer or shorter headers",
                target=self._target(),
            )

        def _target(self) -> bytes:
            """The request target as far as it arrived (empty before the first request)."""
            return bytes(getattr(self, "url", b"") or b"")

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
                    target=self._target(),
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
        forwarded_allow_ips=list(settings.trusted_proxies),
        timeout_keep_alive=settings.keep_alive_timeout_s,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
        log_level=settings.log_level,
        log_config=log_config(settings),  # uvicorn's lines in the service's format
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
        forwarded_allow_ips=list(settings.trusted_proxies),
        timeout_keep_alive=settings.keep_alive_timeout_s,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
        log_level=settings.log_level,
        log_config=log_config(settings),
        access_log=False,
    )
    supervise(config)
