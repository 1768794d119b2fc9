"""The request a piece of work belongs to: its id, carried into the inference worker threads.

A context variable follows a request through its asyncio task, but not into the worker thread
that runs its batch: the batcher captures an `Origin` when a job is queued and binds the batch's
ids in the worker while it runs (`bound_request_ids`).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from service.ops import tracing

REQUEST_ID_HEADER = "x-request-id"
# A client's id is kept when it is short and plain; anything else is replaced, never echoed.
VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")

_request_id: ContextVar[str | None] = ContextVar("unet_request_id", default=None)


def accepted_request_id(header: bytes | None) -> str:
    """The client's `X-Request-ID` when it is valid (1-128 plain characters), else a new one."""
    if header is not None:
        text = header.decode("latin-1")
        if VALID_REQUEST_ID.fullmatch(text):
            return text
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    """The id of the request being served in this context, if any."""
    return _request_id.get()


@contextmanager
def bound_request_id(request_id: str | None) -> Iterator[None]:
    """Every log line written inside the block carries `request_id`."""
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)


@contextmanager
def bound_request_ids(ids: Iterable[str | None]) -> Iterator[None]:
    """In a worker thread: the ids of every request in a batch, comma-separated, for its logs."""
    unique = [i for i in dict.fromkeys(ids) if i is not None]
    with bound_request_id(",".join(unique) or None):
        yield


class Origin:
    """Who queued a job: the request id and the trace span current when it was queued."""

    __slots__ = ("request_id", "span")

    def __init__(self) -> None:
        self.request_id = _request_id.get()
        self.span = tracing.current_span()
