"""Shared fixtures of the service tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from model import UNet, UNetConfig, save
from model.data.synth import generate_pair, pair_rng
from model.training.losses import head_loss
from tests import postgres
from tests.helpers import TINY_MODEL


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A model folder serving `tiny`: a small U-Net trained briefly, so its outputs mean something.

    The shipped checkpoints may not exist while they are being trained; this one takes seconds.
    """
    folder = tmp_path_factory.mktemp("tiny-model")
    threads = torch.get_num_threads()
    # One thread: on a small, busy machine intra-op threads spin against each other.
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        pairs = [generate_pair(pair_rng(0, i), 64) for i in range(6)]
        images = torch.from_numpy(np.stack([image for image, _ in pairs])[:, None] / 255.0)
        masks = torch.from_numpy(np.stack([mask for _, mask in pairs])[:, None])
        images, masks = images.float(), masks.float()
        network = UNet(UNetConfig(depth=2, base_channels=8))
        optimiser = torch.optim.Adam(network.parameters(), lr=1e-2)
        for _ in range(30):
            loss = head_loss("sigmoid", network.logits(images), masks)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        save(network.eval(), folder / f"{TINY_MODEL}.safetensors")
    finally:
        torch.set_num_threads(threads)
    yield folder


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server started for this test session (skips without one)."""
    if postgres.binaries() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    with postgres.server() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A fresh, empty PostgreSQL database for one test."""
    return postgres.new_database(postgres_server)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where a store lives, once per database: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "state" / "thresholds.sqlite3"
    return str(request.getfixturevalue("postgres_url"))
