"""A Python client generated from a running service's /openapi.json drives the quick start."""

from __future__ import annotations

import importlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from PIL import Image

from model.data.synth import write_dataset
from tests.helpers import dataset_files, make_zip, wait_for_calibration
from tests.servers import running_service

API_KEY = "client-test-key"
PACKAGE = "u_net_segmentation_service_client"  # openapi-python-client's name for the title
MODEL = "unet-sigmoid"


def generate_client(url: str, out: Path) -> ModuleType:
    """Generate a client from `url` with openapi-python-client, fail on any warning, import it."""
    bin_dir = Path(sys.executable).parent  # the generator runs ruff on its output: same venv
    command = ["generate", "--url", url, "--meta", "none", "--fail-on-warning"]
    result = subprocess.run(
        [bin_dir / "openapi-python-client", *command],
        cwd=out,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    warnings = [line for line in output.splitlines() if "warning" in line.lower()]
    assert not warnings, output
    assert (out / PACKAGE / "api").is_dir(), output
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(out))


@pytest.fixture
def generated(tmp_path: Path) -> Iterator[Callable[[str], ModuleType]]:
    """Generates a client from a URL; forgets it afterwards, so no other test imports it."""
    out = tmp_path / "client"
    out.mkdir()
    yield lambda url: generate_client(url, out)
    for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
        del sys.modules[name]


def api(package: ModuleType, tag: str, operation: str) -> Any:
    """The generated module of `operation`, e.g. api(p, "inference", "inference_mask")."""
    return importlib.import_module(f"{package.__name__}.api.{tag}.{operation}")


@pytest.mark.slow
def test_a_generated_client_drives_the_quick_start(
    shipped_weights: Path, tmp_path: Path, generated: Callable[[str], ModuleType]
) -> None:
    with running_service(shipped_weights, tmp_path / "state", {"UNET_API_KEY": API_KEY}) as service:
        base = service.base
        package = generated(f"{base}/openapi.json")
        models = importlib.import_module(f"{package.__name__}.models")
        types = importlib.import_module(f"{package.__name__}.types")
        client = package.Client(base_url=base, raise_on_unexpected_status=True)
        admin = package.AuthenticatedClient(base_url=base, token=API_KEY)

        listed = api(package, "models", "models_list").sync(client=client)
        assert isinstance(listed, models.ModelList)
        assert {info.name for info in listed.models} >= {MODEL, "unet-relu"}

        write_dataset(tmp_path / "one", n=1, seed=9, size=96)
        image = (tmp_path / "one" / "images" / "0000.png").read_bytes()

        def upload() -> Any:
            return types.File(
                payload=io.BytesIO(image), file_name="cells.png", mime_type="image/png"
            )

        mask = api(package, "inference", "inference_mask")
        png = mask.sync_detailed(MODEL, client=client, body=models.BodyInferenceMask(upload()))
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        pixels = np.asarray(Image.open(png.parsed.payload))
        assert pixels.shape == (96, 96) and set(np.unique(pixels)) <= {0, 255}
        rle = mask.sync(
            MODEL,
            client=client,
            body=models.BodyInferenceMask(upload()),
            format_=models.InferenceMaskFormat.JSON,
        )
        as_json = models.MaskJson.from_dict(json.loads(rle.payload.read()))
        assert (as_json.width, as_json.height) == (96, 96)
        assert as_json.foreground_fraction == pytest.approx((pixels == 255).mean())

        npy = api(package, "inference", "inference_probabilities").sync(
            MODEL, client=client, body=models.BodyInferenceProbabilities(upload())
        )
        probabilities = np.load(npy.payload)
        assert probabilities.shape == (96, 96) and probabilities.dtype == np.float32

        start = api(package, "calibrations", "calibrations_start")
        dataset = types.File(
            payload=io.BytesIO(make_zip(dataset_files(n=4, seed=77))),
            file_name="calibration.zip",
            mime_type="application/zip",
        )
        body = models.BodyCalibrationsStart(dataset=dataset, strategy="f1")
        refused = start.sync(MODEL, client=client, body=body)
        assert isinstance(refused, models.Problem) and refused.status == 401
        dataset.payload.seek(0)
        started = start.sync_detailed(MODEL, client=admin, body=body)
        assert started.status_code == 202, started.content
        assert started.headers["location"].endswith(started.parsed.id)

        get = api(package, "calibrations", "calibrations_get")
        wait_for_calibration(lambda: get.sync(MODEL, started.parsed.id, client=client).to_dict())
        job = get.sync(MODEL, started.parsed.id, client=client)
        assert job.status == models.CalibrationStatus.SUCCEEDED, job.error
        report = job.report.to_dict()
        assert report["strategy"] == "f1" and report["n_images"] == 4
        assert job.threshold == pytest.approx(report["threshold"]) and 0.5 < job.auc <= 1

        roc = api(package, "calibrations", "calibrations_roc").sync(MODEL, job.id, client=client)
        assert roc.payload.read().startswith(b"\x89PNG")
        activated = api(package, "calibrations", "calibrations_activate").sync(
            MODEL, job.id, client=admin
        )
        assert activated.source == models.ThresholdSource.CALIBRATION
        assert activated.calibration_id == job.id

        manual = api(package, "thresholds", "thresholds_set").sync(
            MODEL, client=admin, body=models.ThresholdUpdate(value=0.35)
        )
        assert (manual.value, manual.source) == (0.35, models.ThresholdSource.MANUAL)
        current = api(package, "thresholds", "thresholds_get").sync(MODEL, client=client)
        assert (current.value, current.source) == (0.35, models.ThresholdSource.MANUAL)

        bad = mask.sync(
            MODEL,
            client=client,
            body=models.BodyInferenceMask(
                types.File(payload=io.BytesIO(b"not an image"), file_name="notes.txt")
            ),
        )
        assert isinstance(bad, models.Problem)
        assert bad.status == 422 and bad.type_.endswith("/unreadable-image")
        assert "notes.txt" in bad.detail
