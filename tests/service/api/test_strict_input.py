"""Request values are taken as sent or refused: no bool as a number, no blank as a default."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.helpers import TINY_MODEL, assert_problem
from tests.hostile.make_corpus import dataset_zip, png

BASE = f"/v1/models/{TINY_MODEL}"


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One app for the module; the test that sets a threshold runs last."""
    state = tmp_path_factory.mktemp("state")
    settings = Settings(model_dir=tiny_model_dir, state_dir=state, tile_size=64)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.mark.parametrize(
    "body",
    [
        {"value": True},
        {"value": False},
        {"value": " 0.5"},
        {"value": "0.5"},
        {"value": None},
        {"value": [0.5]},
        {"value": 0.5, "source": "manual"},
        {},
    ],
)
def test_threshold_updates_take_numbers_only(client: TestClient, body: dict[str, object]) -> None:
    problem = assert_problem(client.put(f"{BASE}/threshold", json=body), 422)
    assert problem["errors"]
    assert client.get(f"{BASE}/threshold").json()["source"] == "default"


@pytest.mark.parametrize("field", ["strategy", "target", "cost_fp", "cost_fn", "activate"])
@pytest.mark.parametrize("blank", ["", "   "])
def test_blank_calibration_fields_are_refused_not_defaulted(
    client: TestClient, field: str, blank: str
) -> None:
    image = png(np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8))
    response = client.post(
        f"{BASE}/calibrations",
        files={"dataset": ("d.zip", dataset_zip("x.png", image), "application/zip")},
        data={field: blank},
    )
    problem = assert_problem(response, 422)
    assert field in str(problem["detail"]) or field in str(problem.get("errors"))
    if field == "strategy":
        assert "youden" in str(problem["detail"]) and "target_tpr" in str(problem["detail"])
    assert client.get(f"{BASE}/calibrations").json()["calibrations"] == []


def test_an_unknown_strategy_lists_the_choices(client: TestClient) -> None:
    response = client.post(
        f"{BASE}/calibrations",
        files={"dataset": ("d.zip", b"PK", "application/zip")},
        data={"strategy": "median"},
    )
    problem = assert_problem(response, 422)
    assert "youden" in str(problem["detail"])


def test_a_plain_number_still_sets_the_threshold(client: TestClient) -> None:
    for value in (0.25, 1):
        response = client.put(f"{BASE}/threshold", json={"value": value})
        assert response.status_code == 200, response.text
        assert response.json()["value"] == value
