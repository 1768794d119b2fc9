"""Fixtures of the state tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import postgres


@pytest.fixture
def database() -> Iterator[tuple[str, postgres.Control]]:
    """A PostgreSQL database of its own server, with the control to stop and restart it."""
    if postgres.binaries() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    with postgres.controlled_server() as (url, control):
        yield postgres.new_database(url), control
