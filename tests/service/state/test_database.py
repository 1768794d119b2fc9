"""Choosing the database: a path is SQLite, a URL is PostgreSQL, a missing driver says so."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from service.app import store_location
from service.settings import Settings
from service.state.database import MissingDriver, database_url, open_engine


def test_urls_name_the_driver(tmp_path: Path) -> None:
    assert database_url(tmp_path / "t.sqlite3") == f"sqlite:///{tmp_path}/t.sqlite3"
    for given in ("postgresql://u:p@db/unet", "postgres://u:p@db/unet"):
        assert database_url(given) == "postgresql+psycopg://u:p@db/unet"


def test_the_setting_chooses_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert store_location(Settings(state_dir=tmp_path)) == tmp_path / "thresholds.sqlite3"
    monkeypatch.setenv("UNET_DATABASE_URL", "postgresql://u@db/unet")
    assert store_location(Settings(state_dir=tmp_path)) == "postgresql://u@db/unet"
    monkeypatch.setenv("UNET_DATABASE_URL", " ")  # blank: SQLite, as unset
    assert store_location(Settings(state_dir=tmp_path)) == tmp_path / "thresholds.sqlite3"


def test_postgresql_without_its_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "psycopg" else find_spec(name)
    )
    with pytest.raises(MissingDriver, match=r"unet-service\[postgres\]"):
        open_engine(database_url("postgresql://u@db/unet"))
