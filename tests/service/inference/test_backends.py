"""ONNX Runtime serving through the real app: torch's scores, a cached export, a fallback."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from model import load_checkpoint
from model.cards.checkpoint import checkpoint_digest
from model.cards.sources import load_predictor
from model.data.synth import generate_pair, pair_rng
from service.app import create_app
from service.inference import backends
from service.inference.units import needs_tiles
from service.settings import Settings
from tests.helpers import TINY_MODEL, png, until

MODELS = ("unet-sigmoid", "unet-relu")
TOLERANCE = 1e-4
# 301 x 257 is served whole; 400 x 333 passes the tile threshold and is served in tiles.
WHOLE, TILED = (301, 257), (400, 333)
TILES = {"tile_threshold_pixels": 100_000, "tile_size": 128}


class Lines(logging.Handler):
    """Keeps the engine's log records (the service's logger does not propagate to pytest's)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep `record`."""
        self.records.append(record)


@pytest.fixture
def engine_log() -> Iterator[Lines]:
    """The engine's log records while the test runs."""
    lines, logger = Lines(), logging.getLogger("service.inference.engine")
    logger.addHandler(lines)
    try:
        yield lines
    finally:
        logger.removeHandler(lines)


def serving(settings: Settings) -> TestClient:
    """A started client of the real app; use it as a context manager."""
    return TestClient(create_app(settings))


def wait_ready(client: TestClient) -> None:
    """Until the engine has chosen its backends and warmed up."""
    until(lambda: client.get("/readyz").status_code == 200, "service not ready")


@pytest.fixture(scope="module")
def clients(
    shipped_weights: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, TestClient]]:
    """backend name -> a ready client of the shipped models on that backend, tiles included."""
    with (
        serving(
            Settings(
                model_dir=shipped_weights,
                state_dir=tmp_path_factory.mktemp("torch-state"),
                backend="torch",
                **TILES,
            )
        ) as on_torch,
        serving(
            Settings(
                model_dir=shipped_weights,
                state_dir=tmp_path_factory.mktemp("ort-state"),
                backend="onnxruntime",
                **TILES,
            )
        ) as on_ort,
    ):
        wait_ready(on_torch)
        wait_ready(on_ort)
        yield {"torch": on_torch, "onnxruntime": on_ort}


def nuclei(height: int, width: int) -> bytes:
    """A synthetic microscopy image of `height` x `width`, PNG-encoded."""
    image = generate_pair(pair_rng(4242, 0), max(height, width))[0]
    return png(image[:height, :width])


def post(client: TestClient, model: str, route: str, data: bytes, **params: Any) -> Any:
    """POST an image to one of a model's inference routes; the 200 response."""
    response = client.post(
        f"/v1/models/{model}/{route}", files={"image": ("x.png", data, "image/png")}, params=params
    )
    assert response.status_code == 200, response.text
    return response


def test_every_model_reports_the_backend_that_runs_it(clients: dict[str, TestClient]) -> None:
    for backend, client in clients.items():
        models = client.get("/v1/models").json()["models"]
        reported = {m["name"]: m["backend"] for m in models}
        assert set(MODELS) <= set(reported)  # and the shipped multi-class model beside them
        assert reported == dict.fromkeys(reported, backend)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("size", [WHOLE, TILED], ids=["whole-301x257", "tiled-400x333"])
def test_onnxruntime_serves_torchs_scores_and_masks(
    clients: dict[str, TestClient], model: str, size: tuple[int, int]
) -> None:
    services = clients["onnxruntime"].app.state.services  # type: ignore[attr-defined]
    served = services.registry.get(model)
    assert needs_tiles(served, *size, services.settings) == (size == TILED)
    data = nuclei(*size)
    scores = {
        backend: np.load(io.BytesIO(post(client, model, "probabilities", data).content))
        for backend, client in clients.items()
    }
    assert scores["torch"].shape == size
    gap = np.abs(scores["onnxruntime"] - scores["torch"]).max()
    assert gap <= TOLERANCE, gap
    masks, cuts = {}, set()
    for backend, client in clients.items():
        response = post(client, model, "mask", data)
        masks[backend] = np.asarray(Image.open(io.BytesIO(response.content))) > 0
        cuts.add(float(response.headers["X-Threshold"]))
    [cut] = cuts
    differ = masks["onnxruntime"] != masks["torch"]
    # A pixel may flip only where its score is within the tolerance of the threshold.
    assert np.all(np.abs(scores["torch"][differ] - cut) <= TOLERANCE)
    assert masks["torch"].any() and not masks["torch"].all()  # the comparison means something


def tiny_settings(folder: Path, state: Path, **overrides: Any) -> Settings:
    """Settings serving the tiny model with the state in `state`."""
    return Settings(model_dir=folder, state_dir=state, tile_size=64, **overrides)


def test_a_model_that_does_not_export_still_serves_on_torch_with_one_line_saying_why(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine_log: Lines
) -> None:
    def unsupported(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("Exporting the operator 'aten::made_up' is not supported")

    monkeypatch.setattr(torch.onnx, "export", unsupported)
    settings = tiny_settings(tiny_model_dir, tmp_path, backend="onnxruntime")
    with serving(settings) as client:
        wait_ready(client)
        assert client.get(f"/v1/models/{TINY_MODEL}").json()["backend"] == "torch"
        post(client, TINY_MODEL, "mask", png(np.zeros((40, 50), np.uint8)))
    why = [r.getMessage() for r in engine_log.records if "not onnxruntime" in r.getMessage()]
    assert len(why) == 1 and "aten::made_up" in why[0], why
    assert not list((tmp_path / "onnx").glob("*")), "a failed export left a file behind"


def test_a_model_whose_onnx_scores_differ_from_torchs_serves_on_torch(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine_log: Lines
) -> None:
    # No gap passes a bar of -1: the start-up check fails as it would for a wrong graph.
    monkeypatch.setattr(backends, "CHECK_TOLERANCE", -1.0)
    with serving(tiny_settings(tiny_model_dir, tmp_path)) as client:
        wait_ready(client)
        assert client.get(f"/v1/models/{TINY_MODEL}").json()["backend"] == "torch"
    why = [r.getMessage() for r in engine_log.records if "not onnxruntime" in r.getMessage()]
    assert len(why) == 1 and "differs from torch's" in why[0], why


def test_the_export_is_cached_by_digest_and_reused_on_restart(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine_log: Lines
) -> None:
    settings = tiny_settings(tiny_model_dir, tmp_path)  # UNET_BACKEND=auto
    cached = tmp_path / "onnx" / f"{checkpoint_digest(tiny_model_dir / 'tiny.safetensors')}.onnx"
    with serving(settings) as client:
        wait_ready(client)
        assert client.get(f"/v1/models/{TINY_MODEL}").json()["backend"] == "onnxruntime"
    assert cached.is_file()
    made = cached.stat().st_mtime_ns

    def no_second_export(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("exported again although the cache holds this checkpoint")

    monkeypatch.setattr(torch.onnx, "export", no_second_export)
    with serving(settings) as client:
        wait_ready(client)
        assert client.get(f"/v1/models/{TINY_MODEL}").json()["backend"] == "onnxruntime"
        post(client, TINY_MODEL, "mask", png(np.zeros((40, 50), np.uint8)))
    assert cached.stat().st_mtime_ns == made
    lines = [r.getMessage() for r in engine_log.records if "backend onnxruntime" in r.getMessage()]
    assert len(lines) == 2 and "exported to" in lines[0] and "cached at" in lines[1], lines


def test_a_cached_file_that_no_longer_loads_is_exported_again(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    cached = tmp_path / "onnx" / f"{checkpoint_digest(tiny_model_dir / 'tiny.safetensors')}.onnx"
    cached.parent.mkdir()
    cached.write_bytes(b"truncated")
    with serving(tiny_settings(tiny_model_dir, tmp_path)) as client:
        wait_ready(client)
        assert client.get(f"/v1/models/{TINY_MODEL}").json()["backend"] == "onnxruntime"
    assert cached.stat().st_size > 1000


def test_a_request_during_start_up_waits_for_the_backend_instead_of_failing(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    with serving(tiny_settings(tiny_model_dir, tmp_path)) as client:
        # Sent at once, while the export is still running: the request waits for it.
        response = client.post(
            f"/v1/models/{TINY_MODEL}/mask",
            files={"image": ("x.png", png(np.zeros((40, 50), np.uint8)), "image/png")},
        )
        assert response.status_code == 200, response.text


def test_a_lone_pass_takes_the_wide_session_only_while_nothing_waits(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    weights = tiny_model_dir / "tiny.safetensors"
    network, _ = load_checkpoint(weights, torch.device("cpu"))
    waiting = [False]
    share = backends.CoreShare(2, crowded=lambda: waiting[0])
    backend, _ = backends.onnx_backend(network, checkpoint_digest(weights), tmp_path, 1, share)
    with backend._session() as session:  # alone, nothing queued: every core
        assert session is backend._wide
    waiting[0] = True
    with backend._session() as session:  # the next pass starts at once: keep to one core
        assert session is not backend._wide
    x = np.random.default_rng(0).random((1, 1, 40, 50), dtype=np.float32)
    assert backend.logits(x).shape == (1, 1, 40, 50)


def test_an_imported_onnx_card_runs_on_a_session_tuned_like_the_backends(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """One session factory: no spinning threads, one inter-op thread, the shared CPU arena."""
    weights = tiny_model_dir / "tiny.safetensors"
    network, _ = load_checkpoint(weights, torch.device("cpu"))
    backend, _ = backends.onnx_backend(network, checkpoint_digest(weights), tmp_path, 1)
    card = tmp_path / "imported.json"
    source = {"format": "onnx", "path": f"{checkpoint_digest(weights)}.onnx"}
    card.write_text(
        json.dumps(
            {
                "source": source,
                "output": {"emits": "logits", "head": "sigmoid"},
                "pad_multiple": 2**network.config.depth,
            }
        )
    )
    imported = load_predictor(card, torch.device("cpu"))
    with backend._session() as session:
        sessions = (session, imported.session)
    for session in sessions:
        options = session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert options.get_session_config_entry("session.use_env_allocators") == "1"
        assert options.inter_op_num_threads == 1
    x = torch.from_numpy(np.random.default_rng(0).random((1, 1, 32, 32), dtype=np.float32))
    np.testing.assert_allclose(
        imported.run_padded(x).numpy(), backend.logits(x.numpy()).numpy(), atol=1e-5
    )


RELEASE_SCRIPT = """
import json, sys
from pathlib import Path
import numpy as np, torch
from model import load_checkpoint
from model.cards.checkpoint import checkpoint_digest
from service.inference import backends

def rss_mb():
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20

weights, folder = Path(sys.argv[1]), Path(sys.argv[2])
network, _ = load_checkpoint(weights, torch.device("cpu"))
backend, _ = backends.onnx_backend(network, checkpoint_digest(weights), folder, 1)
x = np.random.default_rng(0).random((1, 1, 512, 512), dtype=np.float32)
idle = rss_mb()
before = backend.logits(x).numpy()
after_pass = rss_mb()
backend.release()
released = rss_mb()
again = backend.logits(x).numpy()
print(json.dumps({"grown": after_pass - idle, "freed": after_pass - released,
                  "same": bool(np.array_equal(before, again))}))
"""


def test_release_gives_back_the_arena_a_large_pass_grew_and_passes_stay_the_same(
    tmp_path: Path,
) -> None:
    """What the engine does after a large image's last tile, in a process of its own (the arena
    is per process): the memory its passes kept goes back, and the next pass is unchanged."""
    import subprocess
    import sys

    weights = Path(__file__).resolve().parents[3] / "model" / "weights" / "unet-sigmoid.safetensors"
    done = subprocess.run(
        [sys.executable, "-c", RELEASE_SCRIPT, str(weights), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["same"]
    # A 512 px pass of the shipped network keeps ~200 MB of activations in the arena.
    assert figures["grown"] > 50
    assert figures["freed"] > 0.5 * figures["grown"], figures
