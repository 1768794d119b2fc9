"""Thresholds per (model, class) on SQLite and PostgreSQL, and the schema upgrade that added them.

A store written at schema 0002 (before classes) upgrades with its binary thresholds intact; a
multi-class model's classes each have their own threshold, history and cache entry, and another
process sees a class's change through the same version counter as a binary model's.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

from service.state.migrate import MIGRATIONS
from service.state.store import ThresholdStore

DIGEST = "d" * 64


def _url(location: Path | str) -> str:
    if isinstance(location, Path):
        location.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{location}"
    return location.replace("postgresql://", "postgresql+psycopg://", 1)


def test_a_schema_0002_store_upgrades_with_its_thresholds(store_location: Path | str) -> None:
    engine = create_engine(_url(store_location))
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0002")
        connection.execute(
            text(
                "INSERT INTO active_thresholds (model, digest, value, source, updated) "
                "VALUES ('unet-sigmoid', :d, 0.37, 'manual', '2026-12-01T00:00:00+00:00')"
            ),
            {"d": DIGEST},
        )
    engine.dispose()
    store = ThresholdStore(store_location)
    try:
        kept = store.active_threshold("unet-sigmoid", DIGEST)
        assert kept is not None and (kept.value, kept.source) == (0.37, "manual")
        # The upgraded key takes a class beside the binary row.
        store.set_manual("unet-sigmoid", DIGEST, 0.5, cls="other")
        assert store.current_threshold("unet-sigmoid", DIGEST).value == 0.37  # type: ignore[union-attr]
    finally:
        store.close()


def test_each_class_has_its_own_threshold_history_and_cache(store_location: Path | str) -> None:
    store = ThresholdStore(store_location, recheck_s=0.0)
    other = ThresholdStore(store_location, recheck_s=0.0)  # another process sharing the database
    try:
        assert other.active_threshold("m", DIGEST, "debris") is None  # cached as "none stored"
        store.set_manual("m", DIGEST, 0.7, actor="ann", cls="debris")
        store.set_manual("m", DIGEST, 0.4, cls="nucleus")
        seen = other.active_threshold("m", DIGEST, "debris")
        assert seen is not None and seen.value == 0.7
        assert other.active_threshold("m", DIGEST, "nucleus").value == 0.4  # type: ignore[union-attr]
        assert other.active_threshold("m", DIGEST) is None  # no binary threshold for it
        assert [(c.value, c.actor) for c in store.history("m", cls="debris")] == [(0.7, "ann")]
        assert store.history("m") == []
        assert store.reset_to_default("m", DIGEST, cls="debris")
        assert other.active_threshold("m", DIGEST, "debris") is None
        assert other.active_threshold("m", DIGEST, "nucleus").value == 0.4  # type: ignore[union-attr]
        assert [c.source for c in store.history("m", cls="debris")] == ["default", "manual"]
        # A new checkpoint of a multi-class model: its classes' thresholds stay with the old one.
        assert store.note_checkpoint("m", "e" * 64)
        assert not store.note_checkpoint("m", DIGEST)
    finally:
        store.close()
        other.close()
