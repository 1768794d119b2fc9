"""The segment use case, called directly: shipped checkpoints, synthetic images, a SQLite store."""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from model.data.synth import generate_pair, pair_rng
from service.container import Services
from service.inference import encoding
from service.usecases.segment import (
    Cut,
    ImageBytes,
    ImageTooLarge,
    Segmentation,
    UnreadableImage,
    segment,
    segment_encoded,
)
from service.usecases.thresholds import ThresholdOutOfRange, reset_threshold, set_threshold
from tests.helpers import dataset_files, make_zip, png, until

SIGMOID, RELU = "unet-sigmoid", "unet-relu"


def nuclei(index: int = 0, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """An unseen synthetic microscopy image (uint8) and its true mask."""
    return generate_pair(pair_rng(9002, index), size)


def run(client: TestClient, services: Services, model: str, data: bytes, **kw: object) -> object:
    """`segment` on the app's event loop, as a route awaits it."""
    served = services.registry.get(model)
    assert served is not None
    return client.portal.call(lambda: segment(services, served, ImageBytes(data, "x.png"), **kw))


def test_segments_with_the_threshold_in_force(client: TestClient, services: Services) -> None:
    image, truth = nuclei()
    for model in (SIGMOID, RELU):
        served = services.registry.get(model)
        assert served is not None
        result = run(client, services, model, png(image))
        assert isinstance(result, Segmentation)
        assert (result.model, result.digest) == (model, served.digest)
        assert result.cut == Cut(served.default_threshold, "default")
        assert result.image.shape == (1, *image.shape) and result.image.dtype == np.float32
        assert result.scores.shape == image.shape and result.scores.dtype == np.float32
        np.testing.assert_array_equal(result.mask, result.scores >= served.default_threshold)
        # It segments the nuclei: most of the true foreground, little of the background.
        assert (result.mask & truth).sum() / truth.sum() > 0.7
        assert (result.mask & ~truth).sum() / (~truth).sum() < 0.1
        assert result.foreground_fraction == pytest.approx(result.mask.mean())


def test_the_route_answers_what_the_use_case_segments(
    client: TestClient, services: Services
) -> None:
    image, _ = nuclei(1)
    result = run(client, services, SIGMOID, png(image))
    assert isinstance(result, Segmentation)
    answer = client.post(
        f"/v1/models/{SIGMOID}/mask", files={"image": ("x.png", png(image), "image/png")}
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-threshold"] == repr(result.cut.value)
    assert answer.headers["x-threshold-source"] == "default"
    assert answer.content == encoding.mask_png(result.mask)
    scores = client.post(
        f"/v1/models/{SIGMOID}/probabilities", files={"image": ("x.png", png(image), "image/png")}
    )
    np.testing.assert_array_equal(np.load(io.BytesIO(scores.content)), result.scores)


def test_a_request_threshold_is_used_for_that_image_only(
    client: TestClient, services: Services
) -> None:
    image, _ = nuclei(2)
    low = run(client, services, SIGMOID, png(image), threshold=0.05)
    high = run(client, services, SIGMOID, png(image), threshold=0.95)
    assert isinstance(low, Segmentation) and isinstance(high, Segmentation)
    assert low.cut == Cut(0.05, "request") and high.cut == Cut(0.95, "request")
    assert low.foreground_fraction > high.foreground_fraction
    np.testing.assert_array_equal(low.scores, high.scores)
    after = run(client, services, SIGMOID, png(image))
    assert isinstance(after, Segmentation) and after.cut.source == "default"


def test_stored_thresholds_apply_to_the_next_image(client: TestClient, services: Services) -> None:
    served = services.registry.get(SIGMOID)
    assert served is not None
    image, _ = nuclei(3)
    set_threshold(services, served, 0.8, actor="test")
    manual = run(client, services, SIGMOID, png(image))
    assert isinstance(manual, Segmentation) and manual.cut == Cut(0.8, "manual")
    reset_threshold(services, served)
    default = run(client, services, SIGMOID, png(image))
    assert isinstance(default, Segmentation)
    assert default.cut == Cut(served.default_threshold, "default")


@dataclass
class CountedReads:
    """An image source that counts how often it was read."""

    data: bytes
    name: str = "counted.png"
    reads: int = 0

    async def read(self) -> bytes:
        """The bytes, counted."""
        self.reads += 1
        return self.data


@pytest.mark.parametrize("threshold", [1.5, -0.1, float("nan"), float("inf")])
def test_an_out_of_range_threshold_is_refused_before_the_image_is_read(
    client: TestClient, services: Services, threshold: float
) -> None:
    served = services.registry.get(SIGMOID)
    assert served is not None
    source = CountedReads(png(nuclei()[0]))
    with pytest.raises(ThresholdOutOfRange, match="outside the sigmoid head's output range"):
        client.portal.call(lambda: segment(services, served, source, threshold))
    assert source.reads == 0


def test_a_relu_head_takes_any_finite_threshold(client: TestClient, services: Services) -> None:
    result = run(client, services, RELU, png(nuclei()[0]), threshold=1e6)
    assert isinstance(result, Segmentation) and not result.mask.any()


def test_images_that_cannot_be_segmented_are_typed_errors(
    client: TestClient, services: Services
) -> None:
    with pytest.raises(UnreadableImage, match=r"x\.png"):
        run(client, services, SIGMOID, b"not an image")
    with pytest.raises(ImageTooLarge, match=r"x\.png"):  # max_image_pixels is 300 x 300 here
        run(client, services, SIGMOID, png(np.zeros((301, 300), np.uint8)))


def test_the_encode_stage_runs_in_the_inference_worker(
    client: TestClient, services: Services
) -> None:
    served = services.registry.get(SIGMOID)
    assert served is not None
    image, _ = nuclei(4)
    threads: list[str] = []

    def encode(result: Segmentation) -> bytes:
        threads.append(threading.current_thread().name)
        return encoding.mask_png(result.mask)

    encoded = client.portal.call(
        lambda: segment_encoded(services, served, ImageBytes(png(image)), encode)
    )
    assert threads and threads[0].startswith("inference")
    decoded = np.asarray(Image.open(io.BytesIO(encoded.body))) == 255
    np.testing.assert_array_equal(decoded, encoded.segmentation.mask)


def test_every_segmented_image_joins_the_drift_window_of_the_active_calibration(
    client: TestClient, services: Services
) -> None:
    served = services.registry.get(SIGMOID)
    assert served is not None
    files = {"dataset": ("set.zip", make_zip(dataset_files(8, 64, seed=7)), "application/zip")}
    started = client.post(f"/v1/models/{SIGMOID}/calibrations", files=files)
    assert started.status_code == 202, started.text
    location = started.headers["location"]
    until(lambda: client.get(location).json()["status"] not in ("queued", "running"))
    calibration = client.get(location).json()
    assert calibration["status"] == "succeeded", calibration
    for index in range(3):
        result = run(client, services, SIGMOID, png(nuclei(index, 64)[0]))
        assert isinstance(result, Segmentation)
        assert result.cut.source == "calibration"
        assert result.cut.value == pytest.approx(calibration["threshold"])
    report = services.drift.report(SIGMOID, calibration["id"])
    assert report.calibration_id == calibration["id"] and report.n_images == 3
