"""UNET_PRECISION=int8 through the real app: a quantised model with its own digest and
thresholds, served like fp32 in every format, cached in the state folder, and fp32 when it
cannot be quantised."""

from __future__ import annotations

import io
import json
import logging
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from model.cards.checkpoint import checkpoint_digest
from model.data.synth import generate_pair, pair_rng
from service.app import create_app
from service.inference.precision import int8_digest
from service.settings import Settings
from tests.helpers import png, until

pytestmark = pytest.mark.slow  # each quantisation takes 20-60 s on two shared cores
MODEL = "unet-sigmoid"
# 301 x 257 is served whole; 400 x 333 passes the tile threshold and is served in tiles.
WHOLE, TILED = (301, 257), (400, 333)
TILES = {"tile_threshold_pixels": 100_000, "tile_size": 128}
MAX_GAP, MEAN_GAP = 0.3, 0.01  # per-pixel |p_int8 - p_fp32| (the gate measured 0.19, 0.002)


class Lines(logging.Handler):
    """Keeps the service's log records (its loggers do not propagate to pytest's)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep `record`'s message."""
        self.records.append(record.getMessage())


@pytest.fixture
def precision_log() -> Iterator[Lines]:
    """The precision module's log lines while the test runs."""
    lines, logger = Lines(), logging.getLogger("service.inference.precision")
    logger.addHandler(lines)
    try:
        yield lines
    finally:
        logger.removeHandler(lines)


def client(models: Path, state: Path, **settings: Any) -> TestClient:
    """A client of the real app; use it as a context manager, then `ready`."""
    return TestClient(create_app(Settings(model_dir=models, state_dir=state, **settings)))


def ready(client: TestClient) -> TestClient:
    until(lambda: client.get("/readyz").status_code == 200, "service not ready")
    return client


@pytest.fixture(scope="module")
def models(shipped_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """unet-sigmoid alone: one quantisation per test run."""
    folder = tmp_path_factory.mktemp("models")
    for suffix in (".json", ".safetensors"):
        shutil.copy(shipped_weights / f"{MODEL}{suffix}", folder / f"{MODEL}{suffix}")
    return folder


@pytest.fixture(scope="module")
def quantised(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state folder whose cache holds unet-sigmoid's INT8 model (quantised here, once)."""
    state = tmp_path_factory.mktemp("int8-state")
    with client(models, state, precision="int8") as started:
        ready(started)
    return state


@pytest.fixture(scope="module")
def pair(
    models: Path, quantised: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, TestClient]]:
    """precision -> a ready client of unet-sigmoid, tiles included; int8 from the cache."""
    int8_state = tmp_path_factory.mktemp("int8-copy")
    shutil.copytree(quantised, int8_state, dirs_exist_ok=True)
    with (
        client(models, tmp_path_factory.mktemp("fp32"), **TILES) as fp32,
        client(models, int8_state, precision="int8", **TILES) as int8,
    ):
        yield {"fp32": ready(fp32), "int8": ready(int8)}


def nuclei(height: int, width: int, index: int = 0) -> bytes:
    """A synthetic microscopy image of `height` x `width` (an unseen seed), PNG-encoded."""
    image = generate_pair(pair_rng(4242, index), max(height, width))[0]
    return png(image[:height, :width])


def post(client: TestClient, route: str, data: bytes, **params: Any) -> Any:
    """POST an image to one of unet-sigmoid's inference routes; the 200 response."""
    response = client.post(
        f"/v1/models/{MODEL}/{route}", files={"image": ("x.png", data, "image/png")}, params=params
    )
    assert response.status_code == 200, response.text
    return response


def scores(client: TestClient, data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(post(client, "probabilities", data).content))


def test_models_report_their_precision_and_the_int8_model_has_its_own_digest(
    pair: dict[str, TestClient], models: Path
) -> None:
    fp32_digest = checkpoint_digest(models / f"{MODEL}.safetensors")
    (fp32,) = pair["fp32"].get("/v1/models").json()["models"]
    (int8,) = pair["int8"].get("/v1/models").json()["models"]
    assert (fp32["precision"], fp32["digest"]) == ("fp32", fp32_digest)
    assert (int8["precision"], int8["backend"]) == ("int8", "onnxruntime")
    assert int8["digest"] == int8_digest(fp32_digest) != fp32_digest
    assert int8["card"] == fp32["card"]  # same normalisation, head and default threshold


@pytest.mark.parametrize("size", [WHOLE, TILED], ids=["whole-301x257", "tiled-400x333"])
def test_int8_serves_fp32s_scores_and_masks_whole_and_in_tiles(
    pair: dict[str, TestClient], size: tuple[int, int]
) -> None:
    data = nuclei(*size)
    got = {precision: scores(c, data) for precision, c in pair.items()}
    assert got["int8"].shape == got["fp32"].shape == size
    gap = np.abs(got["int8"] - got["fp32"])
    assert gap.max() <= MAX_GAP and gap.mean() <= MEAN_GAP, (gap.max(), gap.mean())
    masks = {
        p: np.asarray(Image.open(io.BytesIO(post(c, "mask", data).content))) > 0
        for p, c in pair.items()
    }
    overlap = np.logical_and(masks["int8"], masks["fp32"]).sum()
    dice = 2 * overlap / (masks["int8"].sum() + masks["fp32"].sum())
    assert masks["fp32"].any() and dice >= 0.97, dice


def test_every_output_format_answers_as_in_fp32(pair: dict[str, TestClient]) -> None:
    data = nuclei(97, 131, index=1)  # odd sides
    for precision, c in pair.items():
        coco = post(c, "mask", data, format="json").json()
        assert coco["rle"]["size"] == [97, 131] and coco["rle"]["counts"], precision
        sixteen = Image.open(io.BytesIO(post(c, "probabilities", data, format="png").content))
        assert sixteen.size == (131, 97) and sixteen.mode.startswith("I"), precision
        overlay = Image.open(io.BytesIO(post(c, "overlay", data).content))
        assert overlay.size == (131, 97), precision
        response = post(c, "mask", data)
        assert float(response.headers["X-Threshold"]) == pytest.approx(0.47906494140625)


def test_batched_requests_answer_as_lone_ones(pair: dict[str, TestClient]) -> None:
    images = [nuclei(120 + i, 100, index=10 + i) for i in range(8)]
    client = pair["int8"]
    alone = [scores(client, image) for image in images]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda image: scores(client, image), images))
    for one, other in zip(alone, together, strict=True):
        np.testing.assert_allclose(one, other, atol=1e-5)


def test_thresholds_belong_to_the_precision_they_were_set_for(
    models: Path, quantised: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    shutil.copytree(quantised, state)
    with client(models, state, precision="int8") as int8:
        ready(int8)
        put = int8.put(f"/v1/models/{MODEL}/threshold", json={"value": 0.3})
        assert put.status_code == 200, put.text
    with client(models, state) as fp32:
        ready(fp32)
        threshold = fp32.get(f"/v1/models/{MODEL}/threshold").json()
        assert threshold["source"] == "default" and threshold["value"] != 0.3
    with client(models, state, precision="int8") as int8:
        ready(int8)
        threshold = int8.get(f"/v1/models/{MODEL}/threshold").json()
        assert (threshold["source"], threshold["value"]) == ("manual", 0.3)


def test_a_restart_reads_the_cache_and_is_ready_as_fast_as_fp32(
    models: Path, quantised: Path, tmp_path: Path, precision_log: Lines, monkeypatch: Any
) -> None:
    import onnxruntime.quantization

    def no_second_quantisation(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("quantised again although the cache holds this checkpoint")

    monkeypatch.setattr(onnxruntime.quantization, "quantize_static", no_second_quantisation)
    shutil.copytree(quantised, tmp_path / "int8")
    shutil.copytree(quantised / "onnx", tmp_path / "fp32" / "onnx")
    seconds = {}
    for precision in ("fp32", "int8", "fp32", "int8"):  # interleaved: the machine is shared
        start = time.perf_counter()
        with client(models, tmp_path / precision, precision=precision) as started:
            ready(started)
        seconds[precision] = min(seconds.get(precision, 1e9), time.perf_counter() - start)
    assert seconds["int8"] <= 2 * seconds["fp32"] + 2, seconds
    assert [line for line in precision_log.records if "precision int8 (cached at" in line]


def test_a_model_that_names_no_data_serves_in_fp32_with_one_line_saying_why(
    models: Path, tmp_path: Path, precision_log: Lines
) -> None:
    folder = tmp_path / "models"
    shutil.copytree(models, folder)
    meta = json.loads((folder / f"{MODEL}.json").read_text())
    meta["default_threshold"]["source"] = "chosen by hand"
    meta["training"].pop("val_data")
    (folder / f"{MODEL}.json").write_text(json.dumps(meta))
    with client(folder, tmp_path / "state", precision="int8") as started:
        ready(started)
        (info,) = started.get("/v1/models").json()["models"]
        assert info["precision"] == "fp32"
        assert info["digest"] == checkpoint_digest(folder / f"{MODEL}.safetensors")
    why = [line for line in precision_log.records if "not int8" in line]
    assert len(why) == 1 and "names no calibration data" in why[0], why


def test_a_quantised_card_served_from_the_model_folder_reports_int8(
    models: Path, quantised: Path, tmp_path: Path
) -> None:
    digest = checkpoint_digest(models / f"{MODEL}.safetensors")
    folder = tmp_path / "models"
    folder.mkdir()
    card = json.loads((quantised / "int8" / f"{digest}.json").read_text())
    assert card["quantization"]["gate"]["passed"] is True
    card["source"]["path"] = "int8-sigmoid.onnx"
    (folder / "int8-sigmoid.json").write_text(json.dumps(card))
    shutil.copy(quantised / "int8" / f"{digest}.onnx", folder / "int8-sigmoid.onnx")
    with client(folder, tmp_path / "state") as started:
        ready(started)
        (info,) = started.get("/v1/models").json()["models"]
        assert (info["name"], info["precision"]) == ("int8-sigmoid", "int8")
        response = started.post(
            "/v1/models/int8-sigmoid/mask",
            files={"image": ("x.png", nuclei(64, 80), "image/png")},
        )
        assert response.status_code == 200, response.text
        assert float(response.headers["X-Threshold"]) == pytest.approx(card["threshold"])


def test_a_model_the_gate_refuses_serves_in_fp32_and_is_not_quantised_again(
    models: Path, tmp_path: Path, precision_log: Lines, monkeypatch: Any
) -> None:
    from model.data.synth import write_dataset

    folder = tmp_path / "models"
    shutil.copytree(models, folder)
    # The data its JSON names: the quantiser's 16 images are blank, so real ones saturate.
    write_dataset(folder / "val", n=22, seed=2)
    for index in range(16):
        Image.fromarray(np.zeros((128, 128), np.uint8)).save(
            folder / "val" / "images" / f"{index:04d}.png"
        )
    meta = json.loads((folder / f"{MODEL}.json").read_text())
    meta["training"]["val_data"] = "val"
    (folder / f"{MODEL}.json").write_text(json.dumps(meta))
    digest = checkpoint_digest(folder / f"{MODEL}.safetensors")
    for attempt in range(2):
        with client(folder, tmp_path / "state", precision="int8") as started:
            ready(started)
            (info,) = started.get("/v1/models").json()["models"]
            assert (info["precision"], info["digest"]) == ("fp32", digest)
        if attempt == 0:  # the refusal is cached with its figures: a restart does not redo it
            import onnxruntime.quantization

            def no_second_quantisation(*args: Any, **kwargs: Any) -> None:
                raise AssertionError("quantised again although the gate's verdict is cached")

            monkeypatch.setattr(onnxruntime.quantization, "quantize_static", no_second_quantisation)
    why = [line for line in precision_log.records if "not int8" in line]
    assert len(why) == 2 and all("fell by" in line for line in why), why
    assert not (tmp_path / "state" / "int8" / f"{digest}.onnx").exists()


def test_a_cached_int8_file_that_no_longer_loads_is_quantised_again(
    models: Path, quantised: Path, tmp_path: Path, precision_log: Lines
) -> None:
    state = tmp_path / "state"
    shutil.copytree(quantised, state)
    digest = checkpoint_digest(models / f"{MODEL}.safetensors")
    (state / "int8" / f"{digest}.onnx").write_bytes(b"truncated")
    with client(models, state, precision="int8") as started:
        ready(started)
        (info,) = started.get("/v1/models").json()["models"]
        assert info["precision"] == "int8"
    assert (state / "int8" / f"{digest}.onnx").stat().st_size > 1000
    assert [line for line in precision_log.records if "precision int8 (quantised to" in line]
