"""Multi-class models the user brings, served through cards: a MONAI UNet with three softmax
channels and a two-channel sigmoid (multilabel) network, each card written by `unet import
--mode/--classes`; the service's maps equal the library's own forward pass within 1e-5."""

from __future__ import annotations

import importlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from torch import nn

from service.app import create_app
from service.cli import main
from service.settings import Settings
from tests.helpers import png, scripted

SIDE = 48


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    """A uint8 grey image; the cards' `dtype` normalisation makes it x / 255."""
    return np.random.default_rng(5).integers(0, 256, (SIDE, SIDE), dtype=np.uint8)


def imported(path: Path, *flags: str) -> None:
    assert main(["import", str(path), *flags, "--normalize", "dtype", "--json"]) == 0


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, nn.Module]]]:
    root = tmp_path_factory.mktemp("class-cards")
    torch.manual_seed(3)
    two = nn.Conv2d(1, 2, 3, padding=1).eval()
    scripted(root, two, "two")
    imported(
        root / "two.pt",
        "--out",
        str(root / "two.json"),
        "--format",
        "torchscript",
        "--mode",
        "multilabel",
        "--classes",
        "cell,edge",
    )
    networks: dict[str, nn.Module] = {"two": two}
    try:
        nets = importlib.import_module("monai.networks.nets")
    except ImportError:
        nets = None
    if nets is not None:
        from safetensors.torch import save_file

        args = {
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": 3,
            "channels": [4, 8],
            "strides": [2],
        }
        monai = nets.UNet(**args).eval()
        weights = root / "monai3.safetensors"
        save_file({k: v.contiguous() for k, v in monai.state_dict().items()}, weights)
        imported(
            weights,
            "--out",
            str(root / "monai3.json"),
            "--format",
            "monai",
            "--network",
            "UNet",
            "--args",
            json.dumps(args),
            "--head",
            "softmax",
            "--pad-multiple",
            "2",
            "--mode",
            "multiclass",
            "--classes",
            "nucleus,debris",
        )
        networks["monai3"] = monai
    yield root, networks


@pytest.fixture
def client(folder, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(model_dir=folder[0], state_dir=tmp_path / "state")
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def maps(client: TestClient, name: str, picture: np.ndarray, **params: object) -> np.ndarray:
    response = client.post(
        f"/v1/models/{name}/probabilities",
        files={"image": ("x.png", png(picture), "image/png")},
        params=params,
    )
    assert response.status_code == 200, response.text
    return np.load(io.BytesIO(response.content))


def forward(network: nn.Module, picture: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return network(torch.from_numpy(picture.astype(np.float32) / 255)[None, None])


def test_a_two_channel_sigmoid_network_serves_as_multilabel(client, folder, picture) -> None:
    info = client.get("/v1/models/two").json()
    assert info["mode"] == "multilabel" and info["classes"] == ["cell", "edge"]
    expected = torch.sigmoid(forward(folder[1]["two"], picture))[0].numpy()
    served = maps(client, "two", picture)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    # Its label image is a bit field: bit k-1 where class k passes its own threshold.
    response = client.post(
        "/v1/models/two/mask",
        files={"image": ("x.png", png(picture), "image/png")},
        params={"format": "labels"},
    )
    labels = np.asarray(Image.open(io.BytesIO(response.content)))
    thresholds = [float(p.split("=")[1]) for p in response.headers["x-threshold"].split(";")]
    bits = (served[0] >= thresholds[0]) * 1 + (served[1] >= thresholds[1]) * 2
    np.testing.assert_array_equal(labels, bits)


def test_a_monai_unet_with_three_softmax_channels_serves_its_classes(
    client, folder, picture
) -> None:
    if "monai3" not in folder[1]:
        pytest.skip("MONAI is not installed (pip install 'unet-service[monai]')")
    info = client.get("/v1/models/monai3").json()
    assert info["mode"] == "multiclass" and info["classes"] == ["nucleus", "debris"]
    expected = torch.softmax(forward(folder[1]["monai3"], picture), dim=1)[0, 1:].numpy()
    np.testing.assert_allclose(maps(client, "monai3", picture), expected, atol=1e-5)
    one = maps(client, "monai3", picture, **{"class": "debris"})
    np.testing.assert_allclose(one, expected[1], atol=1e-5)
