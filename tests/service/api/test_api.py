"""HTTP API v1 through the real app with the shipped checkpoints: models, inference, thresholds."""

from __future__ import annotations

import io
import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr

from model.data.synth import generate_pair, pair_rng
from service.app import create_app
from service.inference.encoding import rle_decode
from service.settings import Settings
from service.usecases import segment
from tests.helpers import PROBLEM, assert_problem, png

SIGMOID, RELU = "/v1/models/unet-sigmoid", "/v1/models/unet-relu"


@pytest.fixture(scope="module")
def nuclei() -> np.ndarray:
    """An unseen synthetic microscopy image (uint8, 128 x 128)."""
    return generate_pair(pair_rng(9001, 0), 128)[0]


def client_for(settings: Settings) -> TestClient:
    return TestClient(create_app(settings))


@pytest.fixture
def settings(shipped_weights: Path, tmp_path: Path) -> Settings:
    return Settings(model_dir=shipped_weights, state_dir=tmp_path / "state")


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with client_for(settings) as test_client:
        yield test_client


def post_image(client: TestClient, path: str, data: bytes, name: str = "x.png", **params: object):
    return client.post(
        path, files={"image": (name, data, "application/octet-stream")}, params=params
    )


def test_models_describe_heads_and_default_thresholds(client: TestClient, shipped_weights) -> None:
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    # unet-multiclass answers per class (tests/service/api/test_classes.py).
    assert set(models) == {"unet-sigmoid", "unet-relu", "unet-multiclass"}
    sigmoid, relu = models["unet-sigmoid"], models["unet-relu"]
    assert sigmoid["outputs_probabilities"] and sigmoid["output_range"] == [0.0, 1.0]
    assert not relu["outputs_probabilities"] and relu["output_range"] == [0.0, None]
    for name in ("unet-sigmoid", "unet-relu"):
        info = models[name]
        recorded = json.loads((shipped_weights / f"{name}.json").read_text())["default_threshold"]
        assert info["threshold"] == {
            "value": recorded["value"],
            "source": "default",
            "calibration_id": None,
            "updated": None,
        }
    assert client.get(SIGMOID).json() == sigmoid


def test_mask_is_the_probability_map_cut_at_the_reported_threshold(
    client: TestClient, nuclei: np.ndarray
) -> None:
    for path in (SIGMOID, RELU):
        mask_response = post_image(client, f"{path}/mask", png(nuclei))
        scores_response = post_image(client, f"{path}/probabilities", png(nuclei))
        assert mask_response.headers["content-type"] == "image/png"
        threshold = float(mask_response.headers["x-threshold"])
        mask = np.asarray(Image.open(io.BytesIO(mask_response.content)))
        scores = np.load(io.BytesIO(scores_response.content))
        assert scores.dtype == np.float32 and scores.shape == mask.shape == nuclei.shape
        assert set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask == 255, scores >= threshold)
        assert 0.05 < (mask == 255).mean() < 0.6  # it segments nuclei, not nothing or everything


def test_mask_json_is_column_major_coco_rle(client: TestClient, nuclei: np.ndarray) -> None:
    image = nuclei[:, :100]  # not square, so row- and column-major differ
    body = post_image(client, f"{SIGMOID}/mask", png(image), format="json").json()
    png_mask = np.asarray(
        Image.open(io.BytesIO(post_image(client, f"{SIGMOID}/mask", png(image)).content))
    )
    assert (body["width"], body["height"]) == (100, 128)
    assert body["threshold_source"] == "default"
    assert body["rle"]["size"] == [128, 100]
    np.testing.assert_array_equal(rle_decode(body["rle"]), png_mask == 255)
    assert math.isclose(body["foreground_fraction"], (png_mask == 255).mean())


def test_request_threshold_overrides_for_that_request_only(
    client: TestClient, nuclei: np.ndarray
) -> None:
    low = post_image(client, f"{SIGMOID}/mask", png(nuclei), format="json", threshold=0.05).json()
    high = post_image(client, f"{SIGMOID}/mask", png(nuclei), format="json", threshold=0.95).json()
    assert low["threshold_source"] == high["threshold_source"] == "request"
    assert low["foreground_fraction"] > high["foreground_fraction"]
    assert client.get(f"{SIGMOID}/threshold").json()["source"] == "default"


@pytest.mark.parametrize(("height", "width"), [(1, 1), (1, 7), (5, 3), (17, 129), (300, 41)])
def test_any_size_comes_back_at_that_size(client: TestClient, height: int, width: int) -> None:
    image = (np.random.default_rng(height * width).random((height, width)) * 255).astype(np.uint8)
    mask = np.asarray(
        Image.open(io.BytesIO(post_image(client, f"{SIGMOID}/mask", png(image)).content))
    )
    assert mask.shape == (height, width)
    overlay = Image.open(io.BytesIO(post_image(client, f"{SIGMOID}/overlay", png(image)).content))
    assert overlay.size == (width, height) and overlay.mode == "RGB"


def encodings(nuclei: np.ndarray) -> dict[str, bytes]:
    """The same picture as grey, RGB, RGBA, palette, 16-bit PNG and as TIFF, JPEG, BMP, GIF."""
    rgb = np.repeat(nuclei[..., None], 3, axis=2)
    out = {
        "grey.png": png(nuclei),
        "rgb.png": png(rgb),
        "rgba.png": png(np.dstack([rgb, np.full_like(nuclei, 255)])),
        "palette.png": png_of(Image.fromarray(nuclei).convert("P")),
        "grey16.png": png(nuclei.astype(np.uint16) * 257),
    }
    for name, fmt in (("x.jpg", "JPEG"), ("x.bmp", "BMP"), ("x.gif", "GIF")):
        buffer = io.BytesIO()
        Image.fromarray(nuclei).save(buffer, fmt)
        out[name] = buffer.getvalue()
    planar = io.BytesIO()
    tifffile.imwrite(  # an RGB image stored plane by plane, as microscopes write them
        planar,
        np.stack([nuclei.astype(np.uint16) * 257] * 3),
        photometric="rgb",
        planarconfig="separate",
    )
    out["planar16.tif"] = planar.getvalue()
    return out


def png_of(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_every_image_kind_segments_like_the_grey_png(
    client: TestClient, nuclei: np.ndarray
) -> None:
    kinds = encodings(nuclei)
    reference = np.load(
        io.BytesIO(post_image(client, f"{SIGMOID}/probabilities", kinds["grey.png"]).content)
    )
    for name, data in kinds.items():
        response = post_image(client, f"{SIGMOID}/probabilities", data, name=name)
        assert response.status_code == 200, (name, response.text)
        scores = np.load(io.BytesIO(response.content))
        assert scores.shape == nuclei.shape, name
        tolerance = 0.2 if name.endswith(".jpg") else 0.02  # JPEG is lossy
        assert np.mean(np.abs(scores - reference)) < tolerance, name


def test_probability_png_is_16_bit_and_only_for_probability_heads(
    client: TestClient, nuclei: np.ndarray
) -> None:
    response = post_image(client, f"{SIGMOID}/probabilities", png(nuclei), format="png")
    scores = np.load(
        io.BytesIO(post_image(client, f"{SIGMOID}/probabilities", png(nuclei)).content)
    )
    pixels = np.asarray(Image.open(io.BytesIO(response.content)))
    assert pixels.dtype == np.uint16
    # Two requests, two passes: a pass that shares the cores runs on fewer threads, which may
    # move a score by a float32 rounding step, so one 16-bit level of slack.
    expected = np.round(scores.astype(np.float64) * 65535)
    assert np.abs(pixels.astype(np.int64) - expected).max() <= 1
    body = assert_problem(
        post_image(client, f"{RELU}/probabilities", png(nuclei), format="png"), 422
    )
    assert "npy" in body["detail"]


def test_manual_threshold_survives_a_restart(settings: Settings, nuclei: np.ndarray) -> None:
    with client_for(settings) as client:
        answer = client.put(f"{RELU}/threshold", json={"value": 0.37})
        assert answer.status_code == 200 and answer.json()["source"] == "manual"
    with client_for(settings) as client:
        assert client.get(f"{RELU}/threshold").json()["value"] == 0.37
        response = post_image(client, f"{RELU}/mask", png(nuclei))
        assert response.headers["x-threshold"] == "0.37"
        assert response.headers["x-threshold-source"] == "manual"
        assert 'unet_active_threshold{model="unet-relu"} 0.37' in client.get("/metrics").text


@pytest.mark.parametrize("value", [-0.1, 1.5, "nan", "inf"])
def test_threshold_outside_the_head_range_is_refused(client: TestClient, nuclei, value) -> None:
    assert_problem(post_image(client, f"{SIGMOID}/mask", png(nuclei), threshold=value), 422)
    before = client.get(f"{SIGMOID}/threshold").json()
    body = f'{{"value": {value if value not in ("nan", "inf") else "1e999"}}}'
    response = client.put(
        f"{SIGMOID}/threshold", content=body, headers={"content-type": "application/json"}
    )
    assert_problem(response, 422)
    assert client.get(f"{SIGMOID}/threshold").json() == before


def test_relu_head_accepts_thresholds_above_one(client: TestClient) -> None:
    assert client.put(f"{RELU}/threshold", json={"value": 2.5}).json()["value"] == 2.5


def test_api_key_guards_mutations_only(settings: Settings, nuclei: np.ndarray) -> None:
    settings = settings.model_copy(update={"api_key": SecretStr("s3cret")})
    with client_for(settings) as client:
        assert_problem(client.put(f"{SIGMOID}/threshold", json={"value": 0.4}), 401)
        wrong = {"Authorization": "Bearer nope"}
        assert_problem(client.put(f"{SIGMOID}/threshold", json={"value": 0.4}, headers=wrong), 401)
        right = {"Authorization": "Bearer s3cret"}
        assert (
            client.put(f"{SIGMOID}/threshold", json={"value": 0.4}, headers=right).status_code
            == 200
        )
        assert post_image(client, f"{SIGMOID}/mask", png(nuclei)).status_code == 200


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"", 422),
        (b"definitely not an image", 422),
        (None, 422),  # truncated PNG, filled in below
    ],
)
def test_bad_uploads_are_problems(client: TestClient, nuclei, data, status) -> None:
    data = png(nuclei)[:200] if data is None else data
    body = assert_problem(post_image(client, f"{SIGMOID}/mask", data), status)
    assert "x.png" in body["detail"]


def test_request_mistakes_are_problems(client: TestClient, nuclei: np.ndarray) -> None:
    assert_problem(client.post(f"{SIGMOID}/mask"), 422)  # no image field
    assert_problem(post_image(client, f"{SIGMOID}/mask", png(nuclei), format="jpeg"), 422)
    assert_problem(post_image(client, f"{SIGMOID}/mask", png(nuclei), threshold="half"), 422)
    body = assert_problem(post_image(client, "/v1/models/nope/mask", png(nuclei)), 404)
    assert "unet-sigmoid" in body["detail"]
    assert_problem(client.get("/v1/models/nope"), 404)
    assert_problem(client.get("/v3/nothing"), 404)
    assert_problem(client.delete(SIGMOID), 405)
    assert_problem(client.put(f"{SIGMOID}/threshold", json={"val": 1}), 422)
    assert_problem(
        client.put(
            f"{SIGMOID}/threshold", content=b"{", headers={"content-type": "application/json"}
        ),
        422,
    )


def test_size_limits_are_413(settings: Settings) -> None:
    limited = settings.model_copy(update={"max_upload_bytes": 10_000, "max_image_pixels": 64 * 64})
    with client_for(limited) as client:
        noisy = (np.random.default_rng(0).random((200, 200)) * 255).astype(np.uint8)
        assert (
            "limit"
            in assert_problem(post_image(client, f"{SIGMOID}/mask", png(noisy)), 413)["detail"]
        )
        flat = np.zeros((100, 100), np.uint8)  # compresses small, but has too many pixels
        assert (
            "pixels"
            in assert_problem(post_image(client, f"{SIGMOID}/mask", png(flat)), 413)["detail"]
        )


def test_operations_endpoints(client: TestClient, nuclei: np.ndarray) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    post_image(client, f"{SIGMOID}/mask", png(nuclei))
    client.get("/docs")
    client.get("/no/such/page")
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    # Labelled by route template; a fixed path without one by itself; anything else "unmatched".
    for series in (
        'unet_http_requests_total{method="POST",route="/v1/models/{model}/mask",status="200"}',
        'unet_http_requests_total{method="GET",route="/docs",status="200"}',
        'unet_http_requests_total{method="GET",route="unmatched",status="404"}',
    ):
        assert series in metrics.text
    assert "unet_http_request_duration_seconds_bucket" in metrics.text


def test_openapi_documents_every_endpoint_and_binary_response(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    expected = {
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/v1/models"),
        ("get", "/v1/models/{model}"),
        ("post", "/v1/models/{model}/mask"),
        ("post", "/v1/models/{model}/probabilities"),
        ("post", "/v1/models/{model}/overlay"),
        ("post", "/v1/models/{model}/calibrations"),
        ("get", "/v1/models/{model}/calibrations"),
        ("get", "/v1/models/{model}/calibrations/{calibration_id}"),
        ("get", "/v1/models/{model}/calibrations/{calibration_id}/roc.png"),
        ("post", "/v1/models/{model}/calibrations/{calibration_id}/activate"),
        ("get", "/v1/models/{model}/threshold"),
        ("put", "/v1/models/{model}/threshold"),
    }
    documented = {(method, path) for path, ops in spec["paths"].items() for method in ops}
    assert expected <= documented
    mask_200 = spec["paths"]["/v1/models/{model}/mask"]["post"]["responses"]["200"]["content"]
    assert {"image/png", "application/json"} <= set(mask_200)
    probabilities = spec["paths"]["/v1/models/{model}/probabilities"]["post"]["responses"]
    assert "application/x-npy" in probabilities["200"]["content"]
    assert PROBLEM in probabilities["422"]["content"]
    assert client.get("/docs").status_code == 200


def test_bodies_over_the_limit_are_refused_while_streaming(settings: Settings) -> None:
    limited = settings.model_copy(update={"max_upload_bytes": 10_000})
    with client_for(limited) as client:
        declared = post_image(client, f"{SIGMOID}/mask", bytes(300_000))
        assert "UNET_MAX_UPLOAD_BYTES" in assert_problem(declared, 413)["detail"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit counts as it streams
            for _ in range(40):
                yield bytes(10_000)

        streamed = client.post(
            f"{SIGMOID}/mask",
            content=chunks(),
            headers={"content-type": "multipart/form-data; boundary=xyz"},
        )
        assert_problem(streamed, 413)


def test_small_images_decode_on_the_event_loop_and_large_ones_off_it(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread: list[int] = []
    decoded_in: dict[int, int] = {}
    real = segment.image_from_bytes

    def watched(data: bytes, *args: object) -> np.ndarray:
        pixels = real(data, *args)
        decoded_in[pixels.shape[-1]] = threading.get_ident()
        return pixels

    async def on_loop() -> None:
        loop_thread.append(threading.get_ident())

    monkeypatch.setattr(segment, "image_from_bytes", watched)
    client.portal.call(on_loop)
    side = math.isqrt(segment.INLINE_PIXELS)
    for width in (side, side + 1):
        image = np.zeros((side, width), np.uint8)
        assert post_image(client, f"{SIGMOID}/mask", png(image)).status_code == 200
    assert decoded_in[side] == loop_thread[0]  # under a millisecond: no hand-off
    assert decoded_in[side + 1] != loop_thread[0]  # larger: a worker thread, the loop answers
