"""Request ids: a client's plain id is kept, anything else replaced by a new one."""

from __future__ import annotations

import logging

import pytest

from service.ops.context import accepted_request_id, bound_request_ids, current_request_id
from service.ops.logs import RequestIdFilter


@pytest.mark.parametrize("sent", [b"abc-123", b"trace:4bf92f35/7", b"x" * 128])
def test_a_plain_id_is_kept(sent: bytes) -> None:
    assert accepted_request_id(sent) == sent.decode()


@pytest.mark.parametrize("sent", [None, b"", b"x" * 129, b"a b", b"a\r\nX-Evil: 1", b"\xff\xfe"])
def test_anything_else_gets_a_new_id(sent: bytes | None) -> None:
    made = accepted_request_id(sent)
    assert len(made) == 32 and made != (sent or b"").decode("latin-1")
    assert accepted_request_id(sent) != made  # a new one each time


def test_a_batchs_log_lines_carry_every_request_id() -> None:
    record = logging.makeLogRecord({"msg": "batch"})
    with bound_request_ids(["a", None, "b", "a"]):
        assert current_request_id() == "a,b"
        RequestIdFilter().filter(record)
    assert record.request_id == "a,b" and current_request_id() is None
