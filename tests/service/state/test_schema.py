"""The migrations build exactly the tables the store's queries are written against."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from service.state.store import ThresholdStore
from service.state.tables import metadata


def test_migrated_schema_matches_the_table_definitions(store_location: Path | str) -> None:
    store = ThresholdStore(store_location)
    with store.engine.connect() as db:
        differences = compare_metadata(MigrationContext.configure(db), metadata)
    store.close()
    assert differences == []
