"""Settings: defaults, environment overrides, validation, the README table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.ops.environment import unknown_settings
from service.settings import Settings, settings_table_markdown


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see only the UNET_ variables they set themselves."""
    for name in list(os.environ):
        if name.startswith("UNET_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = Settings()
    assert settings.model_dir.name == "weights" and settings.model_dir.parent.name == "model"
    assert settings.state_dir == Path("state")
    assert (settings.device, settings.api_key, settings.port) == ("auto", None, 8000)
    assert settings.max_upload_bytes == 32 * 2**20 and settings.max_image_pixels == 4096**2
    assert settings.max_batch is None and settings.batch_wait_ms is None
    assert (settings.autocast, settings.log_level, settings.log_json) == ("off", "info", False)


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("UNET_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("UNET_DEVICE", "CUDA:1")
    monkeypatch.setenv("UNET_API_KEY", "s3cret")
    monkeypatch.setenv("UNET_MAX_BATCH", "8")
    monkeypatch.setenv("UNET_TILE_OVERLAP", "0.5")
    monkeypatch.setenv("UNET_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("UNET_LOG_JSON", "true")
    settings = Settings()
    assert settings.model_dir == tmp_path and settings.device == "cuda:1"
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)
    assert (settings.max_batch, settings.tile_overlap) == (8, 0.5)
    assert (settings.log_level, settings.log_json) == ("debug", True)


def test_empty_api_key_means_no_authentication(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNET_API_KEY", "  ")
    assert Settings().api_key is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("UNET_DEVICE", "tpu"),
        ("UNET_DEVICE", "cuda:x"),
        ("UNET_PORT", "70000"),
        ("UNET_MAX_UPLOAD_BYTES", "0"),
        ("UNET_MAX_BATCH", "0"),
        ("UNET_TILE_OVERLAP", "1"),
        ("UNET_AUTOCAST", "fp8"),
        ("UNET_LOG_LEVEL", "chatty"),
        ("UNET_QUEUE_SIZE", "many"),
    ],
)
def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as error:
        Settings()
    assert name.removeprefix("UNET_").lower() in str(error.value)


def test_table_lists_every_setting_once() -> None:
    table = settings_table_markdown()
    lines = table.splitlines()
    assert lines[0] == "| variable | default | description |"
    assert len(lines) == 2 + len(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        assert f"`UNET_{name.upper()}`" in table
        assert field.description, f"{name} needs a description"
    assert "| `UNET_PORT` | `8000` |" in table
    assert "| `UNET_API_KEY` | unset |" in table


def test_an_unknown_variable_is_named_with_the_closest_setting() -> None:
    said = unknown_settings({"UNET_WORKRS": "2", "UNET_WORKERS": "2", "UNET_DB_PASSWORD": "x"})
    assert said == ["UNET_WORKRS is not a setting and is ignored; did you mean UNET_WORKERS?"]
    (far,) = unknown_settings({"UNET_ZZZ": "1", "PATH": "/bin"})
    assert far.startswith("UNET_ZZZ is not a setting") and "README" in far


def test_strict_settings_refuse_to_start_on_a_typo(tmp_path: Path) -> None:
    env = {**os.environ, "UNET_STRICT_SETTINGS": "true", "UNET_WORKRS": "2"}
    env["UNET_STATE_DIR"] = str(tmp_path / "state")
    ran = subprocess.run(
        [sys.executable, "-m", "service"], env=env, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 2
    assert "UNET_WORKRS" in ran.stderr and "did you mean UNET_WORKERS?" in ran.stderr
