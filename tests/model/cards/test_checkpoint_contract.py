"""A checkpoint JSON says how images become its input in `input` alone; nothing contradicts it.

Its digest (what a stored threshold belongs to) covers both files' bytes, so the shipped
checkpoints' digests are pinned here: a change to either file resets the thresholds every
deployment stored for that model (README, "The shipped models").
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from model.cards.card import load_card
from model.cards.checkpoint import checkpoint_digest, read_meta, save
from model.data.normalize import ImageInput
from model.network.unet import UNet, UNetConfig
from tests.helpers import SHIPPED_DIGESTS, STAMPED_DIGESTS

SHIPPED = tuple(SHIPPED_DIGESTS)
# What prose about a normalisation rule looks like (model/data/normalize.py's words for each rule).
RULE_WORDS = re.compile(
    r"normali[sz]|preprocess|percentile|divided by|type's maximum|min-?max|z-?score|"
    r"standard deviation|\[0(?:\.0)?, 1(?:\.0)?\]|\brange\b",
    re.IGNORECASE,
)
# The stamp earlier releases wrote, whatever `input` said.
STAMP = {
    "channels": 1,
    "range": [0.0, 1.0],
    "conversion": "integers divided by their type's maximum; grey from RGB by ITU-R 601 luma",
}


def outside_input(value: Any, where: str = "") -> list[tuple[str, str]]:
    """(path, text) of every key and string in a checkpoint JSON except under `input`."""
    if isinstance(value, dict):
        found = []
        for key, inner in value.items():
            if where == "" and key == "input":
                continue
            found.append((f"{where}/{key}", str(key)))
            found += outside_input(inner, f"{where}/{key}")
        return found
    if isinstance(value, list):
        return [
            item for i, inner in enumerate(value) for item in outside_input(inner, f"{where}/{i}")
        ]
    return [(where, value)] if isinstance(value, str) else []


@pytest.mark.parametrize("name", SHIPPED)
def test_only_input_says_how_a_shipped_checkpoint_reads_images(
    shipped_weights: Path, name: str
) -> None:
    raw = json.loads((shipped_weights / f"{name}.json").read_text())
    said = ImageInput.model_validate(raw["input"])
    claims = [(path, text) for path, text in outside_input(raw) if RULE_WORDS.search(text)]
    assert claims == [], f"{name}.json describes its input outside `input`: {claims}"
    # What the service reads from the JSON is what the JSON says.
    assert load_card(shipped_weights / f"{name}.json").input == said
    assert said.normalize.method == "percentile"  # as the README says of the shipped models


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoints_keep_their_digests(shipped_weights: Path, name: str) -> None:
    digest = checkpoint_digest(shipped_weights / f"{name}.safetensors")
    assert digest != STAMPED_DIGESTS[name]  # the stamp went: thresholds of earlier releases reset
    assert digest == SHIPPED_DIGESTS[name], (
        f"{name}'s bytes changed: every threshold stored for it stops applying; if that is "
        "meant, pin the new digest and say so in the README"
    )


def test_an_earlier_checkpoint_with_the_stamp_still_loads_and_keeps_its_digest(
    tmp_path: Path,
) -> None:
    path = save(UNet(UNetConfig(depth=2, base_channels=4)), tmp_path / "old.safetensors")
    json_path = path.with_suffix(".json")
    written = json.loads(json_path.read_text())
    assert "preprocessing" not in written  # nothing beside `input` describes the input
    written["preprocessing"] = STAMP  # as an earlier release wrote it
    json_path.write_text(json.dumps(written, indent=2) + "\n")
    before = checkpoint_digest(path)
    meta = read_meta(path)
    assert meta.architecture.depth == 2 and meta.input is None
    assert load_card(json_path).input.normalize.method == "dtype"  # no `input`: the dtype rule
    assert checkpoint_digest(path) == before  # reading never rewrites: its thresholds stay
