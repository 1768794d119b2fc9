"""Every model source served through the real app: the served map is the library's own.

For each source a real model is built with its library (MONAI `UNet` and `BasicUNet`, a MONAI
UNet exported to ONNX as a foreign architecture, the shipped U-Net exported to TorchScript,
`.pt2` and ONNX), given a card, and served; the map the service returns must equal the library's
forward pass plus the card's head on the same normalised input, computed here by hand, at an odd
size and at a size the service tiles, and a calibration on each must succeed.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from fastapi.testclient import TestClient

from model.cards.export import export
from model.cards.sources import load_predictor
from model.cards.to_onnx import EXPORTING
from model.data.synth import generate_pair, pair_rng
from model.inference.tiling import predict_tiled
from service.app import create_app
from service.settings import Settings
from tests.helpers import dataset_files, make_zip, png, wait_for_calibration, write_card

nets = pytest.importorskip("monai.networks.nets")  # the optional extra `.[monai]`

TILE = 128
WHOLE = (301, 257)  # (height, width): odd, served whole
TILED = (330, 391)  # past the tile threshold below: served in tiles
Forward = Callable[[torch.Tensor], torch.Tensor]


def by_hand(image: np.ndarray, normalize: dict[str, Any]) -> np.ndarray:
    """The card's normalisation of an 8-bit image, written out independently of the service."""
    x = image.astype(np.float64)
    method = normalize.get("method", "dtype")
    if method == "dtype":
        x = x / 255.0
    elif method == "minmax":
        x = (x - x.min()) / (x.max() - x.min())
    elif method == "percentile":
        low, high = np.percentile(x, [normalize.get("low", 1.0), normalize.get("high", 99.8)])
        x = (x - low) / (high - low)
    elif method == "zscore":
        x = (x - x.mean()) / x.std()
    return x.astype(np.float32)[None]


def centred_pad(x: np.ndarray, multiple: int) -> tuple[np.ndarray, int, int]:
    """(C, H, W) reflected out to multiples, centred; and the offset of the image in it."""
    _, height, width = x.shape
    pad_h, pad_w = -height % multiple, -width % multiple
    top, left = pad_h // 2, pad_w // 2
    padded = np.pad(x, ((0, 0), (top, pad_h - top), (left, pad_w - left)), mode="reflect")
    return padded, top, left


def head(raw: np.ndarray, output: dict[str, Any]) -> np.ndarray:
    """The card's head on raw output (K, H, W), foreground channel only."""
    channel = output.get("channel", 0)
    if output.get("emits", "logits") != "logits":
        return raw[channel]
    name = output.get("head", "sigmoid")
    if name == "softmax":
        shifted = np.exp(raw - raw.max(axis=0))
        return (shifted / shifted.sum(axis=0))[channel]
    assert name == "sigmoid"
    return 1.0 / (1.0 + np.exp(-raw[channel]))


def train_briefly(network: torch.nn.Module, normalize: dict[str, Any], classes: int) -> None:
    """A few steps on synthetic images, so that scores mean something to a calibration."""
    torch.manual_seed(0)
    pairs = [generate_pair(pair_rng(0, i), 64) for i in range(6)]
    images = torch.from_numpy(np.stack([by_hand(image, normalize) for image, _ in pairs]))
    masks = torch.from_numpy(np.stack([mask for _, mask in pairs])[:, None]).float()
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-2)
    network.train()
    for _ in range(25):
        out = network(images)
        if classes == 1:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(out, masks)
        else:
            loss = torch.nn.functional.cross_entropy(out, masks[:, 0].long())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    network.eval()


def onnx_forward(path: Path) -> Forward:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, shipped_weights: Path
) -> Iterator[tuple[Path, dict[str, Forward]]]:
    """A model folder with one model per source, and each library's own forward pass."""
    folder = tmp_path_factory.mktemp("sources")
    from safetensors.torch import save_file

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    forwards: dict[str, Forward] = {}
    try:
        # MONAI UNet, state dict in safetensors, z-scored input.
        unet_args = {
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": 1,
            "channels": [4, 8, 16],
            "strides": [2, 2],
            "num_res_units": 1,
        }
        unet = nets.UNet(**unet_args)
        train_briefly(unet, {"method": "zscore"}, 1)
        state = {k: v.contiguous() for k, v in unet.state_dict().items()}
        save_file(state, str(folder / "monai-unet.safetensors"))
        write_card(
            folder,
            "monai-unet",
            {
                "source": {
                    "format": "monai",
                    "path": "monai-unet.safetensors",
                    "network": {"name": "UNet", "args": unet_args},
                },
                "input": {"channels": 1, "normalize": {"method": "zscore"}},
                "output": {"emits": "logits", "channel": 0, "head": "sigmoid"},
                "pad_multiple": 4,
            },
        )
        forwards["monai-unet"] = unet
        # MONAI BasicUNet, two classes through softmax, a .pt state dict, min-max input.
        basic_args = {
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": 2,
            "features": [4, 4, 8, 8, 16, 4],
        }
        basic = nets.BasicUNet(**basic_args)
        train_briefly(basic, {"method": "minmax"}, 2)
        torch.save(basic.state_dict(), folder / "weights-basic.pt")
        write_card(
            folder,
            "monai-basic",
            {
                "source": {
                    "format": "monai",
                    "path": "weights-basic.pt",
                    "network": {"name": "BasicUNet", "args": basic_args},
                },
                "input": {"channels": 1, "normalize": {"method": "minmax"}},
                "output": {"emits": "logits", "channel": 1, "head": "softmax"},
                "pad_multiple": 16,
            },
        )
        forwards["monai-basic"] = basic
        # The MONAI UNet as ONNX: an architecture this package knows nothing about.
        axes = {0: "batch", 2: "height", 3: "width"}
        with EXPORTING, torch.no_grad():  # not beside an app's export (see to_onnx)
            torch.onnx.export(
                unet,
                (torch.rand(1, 1, 64, 64),),
                str(folder / "foreign.onnx"),
                input_names=["x"],
                output_names=["y"],
                dynamic_axes={"x": axes, "y": axes},
                dynamo=False,
            )
        write_card(
            folder,
            "foreign-onnx",
            {
                "source": {"format": "onnx", "path": "foreign.onnx"},
                "input": {"channels": 1, "normalize": {"method": "percentile"}},
                "output": {"emits": "logits", "channel": 0, "head": "sigmoid"},
                "pad_multiple": 4,
            },
        )
        forwards["foreign-onnx"] = onnx_forward(folder / "foreign.onnx")
        # The shipped U-Net exported three ways, each with the card `unet export` writes.
        shipped = shipped_weights / "unet-sigmoid.json"
        export(shipped, "torchscript", folder / "shipped-ts.pt")
        export(shipped, "exported", folder / "shipped-pt2.pt2")
        export(shipped, "onnx", folder / "shipped-onnx.onnx")
        forwards["shipped-ts"] = torch.jit.load(str(folder / "shipped-ts.pt"))
        forwards["shipped-pt2"] = torch.export.load(str(folder / "shipped-pt2.pt2")).module()
        forwards["shipped-onnx"] = onnx_forward(folder / "shipped-onnx.onnx")
    finally:
        torch.set_num_threads(threads)
    yield folder, forwards


@pytest.fixture(scope="module")
def client(
    served: tuple[Path, dict[str, Forward]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    folder, _ = served
    settings = Settings(
        model_dir=folder,
        state_dir=tmp_path_factory.mktemp("state"),
        api_key=None,
        tile_size=TILE,
        tile_threshold_pixels=100_000,
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def served_map(client: TestClient, name: str, image: np.ndarray) -> np.ndarray:
    response = client.post(
        f"/v1/models/{name}/probabilities",
        files={"image": ("x.png", png(image), "application/octet-stream")},
        params={"format": "npy"},
    )
    assert response.status_code == 200, response.text
    return np.load(io.BytesIO(response.content))


def test_every_source_is_listed_with_its_card(client: TestClient) -> None:
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    expected = {"monai-unet", "monai-basic", "foreign-onnx", "shipped-ts", "shipped-pt2"}
    assert expected | {"shipped-onnx"} <= set(models)
    assert all(m["available"] for m in models.values())
    assert models["monai-basic"]["card"]["source"]["format"] == "monai"
    assert models["monai-basic"]["architecture"] is None
    assert models["shipped-onnx"]["card"]["input"]["normalize"]["method"] == "percentile"
    assert models["shipped-onnx"]["outputs_probabilities"] is True


@pytest.mark.parametrize(
    "name",
    ["monai-unet", "monai-basic", "foreign-onnx", "shipped-ts", "shipped-pt2", "shipped-onnx"],
)
def test_served_map_is_the_librarys_forward_plus_the_cards_head(
    client: TestClient, served: tuple[Path, dict[str, Forward]], name: str
) -> None:
    folder, forwards = served
    card = json.loads((folder / f"{name}.json").read_text())
    forward = forwards[name]
    multiple = card["pad_multiple"]
    for index, (height, width) in enumerate((WHOLE, TILED)):
        image = generate_pair(pair_rng(77, index), max(height, width))[0][:height, :width]
        got = served_map(client, name, image)
        x = by_hand(image, card["input"]["normalize"])
        padded, top, left = centred_pad(x, multiple)
        with torch.inference_mode():
            raw = forward(torch.from_numpy(padded)[None])[0].numpy()
        want = head(raw[:, top : top + height, left : left + width], card["output"])
        if (height, width) == TILED:  # the same tiles, each through the library's own forward
            whole = want
            predictor = load_predictor(folder / f"{name}.json")
            with torch.inference_mode():
                want = predict_tiled(predictor, x, TILE, 0.25, logits_fn=forward).output
            assert np.abs(want - whole).max() > 1e-4  # so the service did cut this one in tiles
        assert got.shape == (height, width)
        assert np.abs(got - want).max() <= 1e-4, (name, (height, width))


@pytest.mark.parametrize(
    "name",
    ["monai-unet", "monai-basic", "foreign-onnx", "shipped-ts", "shipped-pt2", "shipped-onnx"],
)
def test_a_calibration_succeeds_on_every_source(client: TestClient, name: str) -> None:
    files = {"dataset": ("set.zip", make_zip(dataset_files(3, 64)), "application/zip")}
    response = client.post(f"/v1/models/{name}/calibrations", files=files)
    assert response.status_code == 202, response.text
    body = wait_for_calibration(lambda: client.get(response.headers["location"]).json())
    assert body["status"] == "succeeded", body
    assert 0.0 <= body["report"]["auc"] <= 1.0
