"""The README keeps its promises: every setting listed, the test command the one CI runs."""

from __future__ import annotations

from pathlib import Path

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_lists_every_setting_with_its_variable() -> None:
    for name in Settings.model_fields:
        assert f"`UNET_{name.upper()}`" in README, f"README misses UNET_{name.upper()}"


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in README and "make serve" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()
