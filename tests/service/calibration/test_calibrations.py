"""Calibration jobs over HTTP: start, poll, report, ROC plot, activation, limits and restarts."""

from __future__ import annotations

import io
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from httpx import Response
from PIL import Image
from pydantic import SecretStr

from service.app import create_app
from service.settings import Settings
from service.state.records import JobParams
from service.state.store import ThresholdStore
from tests.helpers import (
    POINT_KEYS,
    REPORT_KEYS,
    TINY_MODEL,
    assert_problem,
    dataset_files,
    make_zip,
    patch_central_size,
    png,
    until,
    wait_for_calibration,
)

MiB = 1 << 20
BASE = f"/v1/models/{TINY_MODEL}"
POLL_S = 60.0


@pytest.fixture
def settings(tmp_path: Path, tiny_model_dir: Path) -> Settings:
    """Small limits so that tests reach them cheaply; a small tile keeps the warm-up short."""
    return Settings(
        model_dir=tiny_model_dir,
        state_dir=tmp_path / "state",
        api_key=None,
        tile_size=64,
        max_dataset_bytes=2 * MiB,
        max_zip_entries=50,
        max_zip_uncompressed_bytes=4 * MiB,
        max_image_pixels=128 * 128,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The app over HTTP, its lifespan running."""
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def dataset_zip(n: int = 3, seed: int = 1, prefix: str = "") -> bytes:
    """A valid calibration zip of `n` synthetic 64 x 64 images."""
    return make_zip(dataset_files(n, 64, prefix, seed))


def start(client: TestClient, data: bytes, **form: Any) -> Response:
    """POST a calibration of `data` with form fields `form`."""
    files = {"dataset": ("calibration.zip", data, "application/zip")}
    return client.post(f"{BASE}/calibrations", files=files, data=form)


def finished(client: TestClient, response: Response) -> dict[str, Any]:
    """The calibration a 202 `response` started, once it has succeeded or failed."""
    assert response.status_code == 202, response.text
    location = response.headers["location"]
    return wait_for_calibration(lambda: client.get(location).json())


def uploads_left(settings: Settings) -> list[Path]:
    """What is left in the uploads folder beyond empty per-process folders (host_pid_nonce)."""
    return [
        entry
        for entry in (settings.state_dir / "uploads").iterdir()
        if entry.name.count("_") != 2 or not entry.is_dir() or any(entry.iterdir())
    ]


def test_calibrate_activate_and_survive_a_restart(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        assert client.get(f"{BASE}/threshold").json()["source"] == "default"
        response = start(client, dataset_zip())
        assert response.status_code == 202
        started = response.json()
        assert started["status"] in ("queued", "running", "succeeded")
        assert 0 <= started["progress"] <= 1
        assert response.headers["location"] == f"{BASE}/calibrations/{started['id']}"

        done = finished(client, response)
        assert done["status"] == "succeeded", done["error"]
        assert done["progress"] == 1 and done["error"] is None and done["active"]
        report = done["report"]
        assert set(report) >= REPORT_KEYS
        # No strategy given: f1, pixel Dice.
        assert report["strategy"] == "f1" and report["n_images"] == 3
        assert set(report["roc"]) >= {"fpr", "tpr", "thresholds"}
        assert len(report["roc"]["fpr"]) <= 512
        assert set(report["operating_points"]["f1"]) >= POINT_KEYS
        assert set(report["operating_points"]["fixed_0.5"]) >= POINT_KEYS
        assert set(report["confusion"]) == {"tp", "fp", "tn", "fn"}
        assert 0.5 < report["auc"] <= 1

        threshold = client.get(f"{BASE}/threshold").json()
        assert threshold["source"] == "calibration"
        assert threshold["calibration_id"] == done["id"]
        assert threshold["value"] == pytest.approx(report["threshold"])
        metrics = client.get("/metrics").text
        assert f'unet_calibrations_succeeded_total{{model="{TINY_MODEL}"}} 1.0' in metrics
        assert f'unet_calibrations_started_total{{model="{TINY_MODEL}"}} 1.0' in metrics
        assert not uploads_left(settings)

    # A restart: the first process has exited (one process per state folder).
    with TestClient(create_app(settings)) as restarted:
        assert restarted.get(f"{BASE}/threshold").json() == threshold
        listed = restarted.get(f"{BASE}/calibrations").json()["calibrations"]
        assert [c["id"] for c in listed] == [done["id"]]
        again = restarted.get(f"{BASE}/calibrations/{done['id']}").json()
        assert again["report"] == report


def test_activate_later_list_and_roc_plot(client: TestClient) -> None:
    kept = finished(client, start(client, dataset_zip(), activate="false"))
    assert kept["status"] == "succeeded" and not kept["active"]
    assert client.get(f"{BASE}/threshold").json()["source"] == "default"
    second = finished(
        client, start(client, dataset_zip(seed=2), strategy="target_tpr", target="0.9")
    )
    assert second["report"]["target"] == 0.9
    assert client.get(f"{BASE}/threshold").json()["calibration_id"] == second["id"]

    listed = client.get(f"{BASE}/calibrations").json()["calibrations"]
    assert [c["id"] for c in listed] == [second["id"], kept["id"]]  # newest first
    assert [c["active"] for c in listed] == [True, False]
    assert listed[1]["strategy"] == "f1" and listed[1]["threshold"] == kept["threshold"]
    assert "report" not in listed[0]

    activated = client.post(f"{BASE}/calibrations/{kept['id']}/activate")
    assert activated.status_code == 200, activated.text
    assert activated.json()["calibration_id"] == kept["id"]
    assert activated.json()["value"] == pytest.approx(kept["threshold"])
    assert client.get(f"{BASE}/threshold").json()["calibration_id"] == kept["id"]

    plot = client.get(f"{BASE}/calibrations/{kept['id']}/roc.png")
    assert plot.status_code == 200
    assert plot.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(plot.content)) as image:
        assert image.format == "PNG" and image.width > 300


def test_jobs_of_a_model_run_one_at_a_time(client: TestClient) -> None:
    first = start(client, dataset_zip(2, prefix="set/"))  # under one top-level folder
    second = start(client, dataset_zip(2, seed=3), strategy="closest")
    done = [finished(client, first), finished(client, second)]
    assert [job["status"] for job in done] == ["succeeded", "succeeded"]
    assert done[1]["started"] >= done[0]["finished"]
    assert done[0]["params"]["n_images"] == 2
    assert done[0]["params"]["dataset"] == "calibration.zip"


def test_failed_job_names_the_file(client: TestClient, settings: Settings) -> None:
    files = dataset_files(2, 64)
    files["masks/0001.png"] = png(np.zeros((32, 48), bool))
    failed = finished(client, start(client, make_zip(files)))
    assert failed["status"] == "failed" and failed["report"] is None
    assert "images/0001.png is 64 x 64 px" in failed["error"]
    assert "masks/0001.png is 48 x 32 px" in failed["error"]
    assert str(settings.state_dir) not in failed["error"]
    assert assert_problem(client.get(f"{BASE}/calibrations/{failed['id']}/roc.png"), 409)
    assert_problem(client.post(f"{BASE}/calibrations/{failed['id']}/activate"), 409)
    assert client.get(f"{BASE}/threshold").json()["source"] == "default"
    metrics = client.get("/metrics").text
    assert f'unet_calibrations_failed_total{{model="{TINY_MODEL}"}} 1.0' in metrics
    assert not uploads_left(settings)


def test_masks_without_both_classes_fail_the_job(client: TestClient) -> None:
    files = dataset_files(1, 64)
    files["masks/0000.png"] = png(np.zeros((64, 64), bool))
    failed = finished(client, start(client, make_zip(files)))
    assert failed["status"] == "failed" and "no foreground" in failed["error"]


@pytest.mark.parametrize(
    ("form", "words"),
    [
        ({"strategy": "target_tpr"}, "needs a target"),
        ({"strategy": "median"}, "unknown strategy 'median'"),
        ({"strategy": "target_fpr", "target": "1.5"}, "strictly between 0 and 1"),
        ({"strategy": "youden", "target": "0.5"}, "takes no target"),
        ({"strategy": "cost", "cost_fp": "-1"}, "cost_fp and cost_fn"),
        ({"strategy": "cost", "cost_fn": "nan"}, "cost_fn must be a number"),
        ({"target": "abc"}, "form field 'target'"),
        ({"activate": "perhaps"}, "form field 'activate'"),
    ],
)
def test_bad_parameters(client: TestClient, form: dict[str, str], words: str) -> None:
    assert words in assert_problem(start(client, dataset_zip(1), **form), 422)["detail"]


def hostile_zips() -> dict[str, tuple[bytes, int]]:
    """Name -> (upload, expected status) of broken and hostile calibration zips."""
    valid = dataset_zip(2)
    link = zipfile.ZipInfo("images/0009.png")
    link.external_attr = (0o120777) << 16
    files = dataset_files(2, 64)
    del files["masks/0001.png"]
    big = png(np.zeros((200, 200), np.uint8))
    return {
        "traversal": (make_zip(dataset_files(1), [(zipfile.ZipInfo("../x.png"), b"x")]), 422),
        "absolute": (make_zip(dataset_files(1), [(zipfile.ZipInfo("/etc/x.png"), b"x")]), 422),
        "symlink": (make_zip(dataset_files(1), [(link, b"/etc/passwd")]), 422),
        "entries": (make_zip({f"images/{i}.txt": b"" for i in range(51)}), 413),
        "ratio bomb": (make_zip({**dataset_files(1), "images/z.tif": bytes(5 * MiB)}), 413),
        "declared bomb": (patch_central_size(valid, "images/0000.png", 1 << 31), 413),
        "not a zip": (b"GIF89a definitely not a zip", 422),
        "empty": (b"", 422),
        "truncated": (valid[: len(valid) // 2], 422),
        "no images": (make_zip({"data/readme.txt": b"hello"}), 422),
        "unmatched": (make_zip(files), 422),
        "too many pixels": (make_zip({"images/a.png": big, "masks/a.png": big}), 413),
    }


@pytest.mark.parametrize("name", list(hostile_zips()))
def test_broken_and_hostile_zips(client: TestClient, settings: Settings, name: str) -> None:
    data, status = hostile_zips()[name]
    assert_problem(start(client, data), status)
    assert client.get(f"{BASE}/calibrations").json() == {"calibrations": []}
    assert not uploads_left(settings)


def test_upload_limits_and_missing_parts(client: TestClient) -> None:
    too_big = assert_problem(start(client, bytes(2 * MiB + 1)), 413)
    assert "UNET_MAX_DATASET_BYTES" in too_big["detail"]
    missing = assert_problem(client.post(f"{BASE}/calibrations", data={"strategy": "f1"}), 422)
    assert "dataset" in missing["detail"]
    text = client.post(f"{BASE}/calibrations", data={"dataset": "not a file"})
    assert_problem(text, 422)
    assert_problem(client.post(f"{BASE}/calibrations", content=b"\x00garbage"), 422)


def test_unknown_model_and_calibration(client: TestClient) -> None:
    unknown = client.post("/v1/models/nope/calibrations", files={"dataset": ("a.zip", b"x")})
    assert assert_problem(unknown, 404)["title"] == "Unknown model"
    assert_problem(client.get("/v1/models/nope/calibrations"), 404)
    for path in ("", "/roc.png"):
        assert_problem(client.get(f"{BASE}/calibrations/0123abc{path}"), 404)
    assert_problem(client.post(f"{BASE}/calibrations/0123abc/activate"), 404)


def test_api_key(settings: Settings) -> None:
    locked = settings.model_copy(update={"api_key": SecretStr("s3cret")})
    with TestClient(create_app(locked)) as client:
        problem = assert_problem(start(client, dataset_zip(1)), 401)
        assert "Authorization" in problem["detail"]
        wrong = {"Authorization": "Bearer nope"}
        files = {"dataset": ("a.zip", dataset_zip(1))}
        assert_problem(client.post(f"{BASE}/calibrations", files=files, headers=wrong), 401)
        good = {"Authorization": "Bearer s3cret"}
        response = client.post(f"{BASE}/calibrations", files=files, headers=good)
        done = finished(client, response)  # reads need no key
        assert_problem(client.post(f"{BASE}/calibrations/{done['id']}/activate"), 401)
        activated = client.post(f"{BASE}/calibrations/{done['id']}/activate", headers=good)
        assert activated.status_code == 200


def test_interrupted_job_is_failed_at_restart(settings: Settings) -> None:
    store = ThresholdStore(settings.state_dir / "thresholds.sqlite3")
    left = store.jobs.new_calibration(TINY_MODEL, "digest", "youden", None, JobParams(), True).id
    store.jobs.mark_running(left)
    store.close()
    (settings.state_dir / "uploads" / "calibration-old").mkdir(parents=True)
    with TestClient(create_app(settings)) as client:
        body = client.get(f"{BASE}/calibrations/{left}").json()
        assert body["status"] == "failed" and "restarted" in body["error"]
        assert not uploads_left(settings)


def test_a_job_blocked_by_another_process_claims_its_run_once_per_lease_round(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A lease round every 1.5 s: a claim per round is told apart from a claim per second.
    app = create_app(settings.model_copy(update={"calibration_lease_s": 4.5}))
    with TestClient(app) as client:
        queue = app.state.services.store.jobs
        events: list[str] = []  # "round" (a lease renewal) or the outcome of a claim
        claim, renew = queue.mark_running, queue.renew_leases

        def counted_claim(calibration_id: str) -> bool:
            claimed = claim(calibration_id)
            events.append(f"claim {claimed}")
            return claimed

        def counted_renew(ids: list[str] | None = None) -> int:
            events.append("round")
            return renew(ids)

        monkeypatch.setattr(queue, "mark_running", counted_claim)
        monkeypatch.setattr(queue, "renew_leases", counted_renew)
        # Another process sharing the state folder runs a job of the model.
        other = ThresholdStore(settings.state_dir / "thresholds.sqlite3")
        params = JobParams()
        blocker = other.jobs.new_calibration(TINY_MODEL, "d", "f1", None, params, True).id
        assert other.jobs.mark_running(blocker)
        response = start(client, dataset_zip(2))
        until(lambda: events.count("claim False") >= 3, "the job did not try again")
        assert client.get(response.headers["location"]).json()["status"] == "queued"
        other.jobs.fail_calibration(blocker, "done elsewhere")
        done = finished(client, response)
        other.close()
    assert done["status"] == "succeeded", done["error"]
    claims = [event for event in events if event.startswith("claim")]
    assert claims[-1] == "claim True" and claims.count("claim True") == 1
    # After the first try, every claim waited for a lease round: no polling in between.
    first = events.index("claim False")
    tries = "".join("c" if e.startswith("claim") else "r" for e in events[first:])
    assert "cc" not in tries, events


def test_shutdown_finishes_every_job(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        ids = [start(client, dataset_zip(2, seed=i)).json()["id"] for i in range(3)]
    with TestClient(create_app(settings)) as client:
        jobs = [client.get(f"{BASE}/calibrations/{i}").json() for i in ids]
    for job in jobs:
        assert job["status"] in ("succeeded", "failed")
        if job["status"] == "failed":
            assert "the service stopped" in job["error"], job["error"]
    assert not uploads_left(settings)


def wait_ready(client: TestClient) -> None:
    """Until the engine's warm-up is done."""
    until(lambda: client.get("/readyz").status_code == 200, "service not ready")


def metric(client: TestClient, name: str) -> float:
    """A per-model sample of the tiny model from /metrics (0 when absent)."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f'{name}{{model="{TINY_MODEL}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_calibration_images_are_run_by_the_inference_engine(client: TestClient) -> None:
    wait_ready(client)  # the warm-up's passes are counted too
    images_before = metric(client, "unet_batch_size_sum")
    done = finished(client, start(client, dataset_zip(3)))
    assert done["status"] == "succeeded", done["error"]
    # The engine ran them: same device, precision, tiling and core sharing as served answers.
    assert metric(client, "unet_batch_size_sum") - images_before == 3


def test_a_calibration_waits_its_turn_when_the_engine_is_full(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = threading.Event()
    # Torch runs the passes, so that patching `network.logits` holds them.
    held_settings = settings.model_copy(update={"queue_size": 2, "backend": "torch"})
    with TestClient(create_app(held_settings)) as client:
        wait_ready(client)
        served = client.app.state.services.registry.get(TINY_MODEL)  # type: ignore[attr-defined]
        logits = served.network.logits
        entered: list[int] = []

        def slow(x: Any) -> Any:
            entered.append(1)
            held.wait(POLL_S)  # every pass waits: a busy device
            return logits(x)

        monkeypatch.setattr(served.network, "logits", slow)
        image = png(np.zeros((32, 32), np.uint8))
        answers: list[int] = []

        def client_request() -> None:
            files = {"image": ("x.png", image, "image/png")}
            answers.append(client.post(f"{BASE}/mask", files=files).status_code)

        try:
            # Both workers busy, then the queue full of live requests ...
            live = [threading.Thread(target=client_request) for _ in range(4)]
            for thread in live[:2]:
                thread.start()
            until(lambda: len(entered) == 2, "the workers never got busy")
            for thread in live[2:]:
                thread.start()
            until(lambda: metric(client, "unet_queue_depth") == 2, "the queue never filled")
            rejected = metric(client, "unet_rejected_requests_total")
            response = start(client, dataset_zip(2))
            # ... so the calibration's first image waits for room, and is not refused.
            until(
                lambda: metric(client, "unet_queue_waiting") == 1,
                "the calibration never met the full queue",
            )
            assert metric(client, "unet_rejected_requests_total") == rejected
            held.set()
            done = finished(client, response)
            for thread in live:
                thread.join(POLL_S)
            assert metric(client, "unet_queue_waiting") == 0
        finally:
            held.set()  # never leave a pass waiting, whatever failed
    assert done["status"] == "succeeded", done["error"]
    assert answers == [200] * 4  # the live requests were served


def test_a_stop_ends_a_job_waiting_on_the_engine_and_the_jobs_queued_behind_it(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = threading.Event()
    # Torch runs the passes, so that patching `network.logits` holds them.
    app = create_app(settings.model_copy(update={"backend": "torch"}))
    with TestClient(app) as client:
        wait_ready(client)
        services = app.state.services
        served = services.registry.get(TINY_MODEL)
        logits = served.network.logits
        entered: list[int] = []

        def stuck(x: Any) -> Any:
            entered.append(1)
            held.wait(POLL_S)  # a pass that does not end before the service stops
            return logits(x)

        monkeypatch.setattr(served.network, "logits", stuck)
        running = start(client, dataset_zip(2)).json()["id"]
        queued = start(client, dataset_zip(2, seed=2)).json()["id"]
        until(lambda: len(entered) == 1, "the first job's image never reached the model")

        def failed() -> float:
            name, labels = "unet_calibrations_failed_total", {"model": TINY_MODEL}
            return services.metrics.registry.get_sample_value(name, labels) or 0.0

        def free_the_pass_once_both_failed() -> None:
            until(lambda: failed() == 2, "the stop did not end the jobs")
            held.set()

        # Leaving the block stops the service, whose engine waits for the stuck pass: the jobs
        # must fail without waiting for that pass to end.
        opener = threading.Thread(target=free_the_pass_once_both_failed)
        opener.start()
    held.set()  # whatever happened, leave no pass waiting
    opener.join(POLL_S)
    assert failed() == 2
    with TestClient(create_app(settings)) as client:
        ran = client.get(f"{BASE}/calibrations/{running}").json()
        waited = client.get(f"{BASE}/calibrations/{queued}").json()
    assert ran["status"] == "failed" and "stopped while this calibration ran" in ran["error"]
    assert waited["status"] == "failed" and "stopped before this calibration" in waited["error"]
    assert not uploads_left(settings)
