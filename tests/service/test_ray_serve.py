"""The service on a real local Ray Serve, through Ray's HTTP proxy, in a loopback-only namespace.

Ray binds every interface, so the Ray instance and its clients run in a child process inside a
private network namespace that has only loopback (`unshare -n`): no test traffic leaves the
machine. The child (`ray_scenario.py`) prints what it saw; this test compares it with the plain
service. Two replicas share thresholds only through the PostgreSQL store (`UNET_DATABASE_URL`);
without that store the test runs one replica and skips the shared-threshold check.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from model.data.synth import generate_pair, pair_rng
from service.app import create_app
from service.settings import Settings
from tests import postgres
from tests.helpers import PROBLEM, dataset_files, make_zip, png

pytest.importorskip("ray.serve", reason="Ray Serve is the optional extra `.[ray]`")
pytestmark = pytest.mark.slow

SCENARIO = Path(__file__).with_name("ray_scenario.py")
MODEL = "unet-sigmoid"
KEY = "ray-test-key"
CHILD_TIMEOUT_S = 600


def in_namespace(*command: str) -> list[str]:
    """`command` inside a new network namespace whose only interface, loopback, is up."""
    return ["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command]


def namespace_refused() -> str | None:
    """Why no private network namespace can be made here, or None."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip (iproute2) is missing"
    probe = subprocess.run(in_namespace("true"), capture_output=True, text=True)
    return None if probe.returncode == 0 else f"unshare -n is not permitted: {probe.stderr}"


def shared_store() -> bool:
    """Whether this service has a shared (PostgreSQL) threshold store."""
    return "database_url" in Settings.model_fields


def plain_mask(settings: Settings, image: bytes) -> tuple[str, str]:
    """(sha256 of the mask, X-Threshold) from the plain service, in-process."""
    with TestClient(create_app(settings)) as client:
        answer = client.post(
            f"/v1/models/{MODEL}/mask", files={"image": ("x.png", image, "image/png")}
        )
    assert answer.status_code == 200, answer.text
    return hashlib.sha256(answer.content).hexdigest(), answer.headers["x-threshold"]


def run_scenario(spec: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Run the Ray scenario in its namespace; what it printed."""
    spec_file = folder / "spec.json"
    spec_file.write_text(json.dumps(spec))
    done = subprocess.run(
        in_namespace(sys.executable, str(SCENARIO), str(spec_file)),
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-6000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_service_on_ray_serve_answers_like_the_plain_one(
    shipped_weights: Path, tmp_path: Path
) -> None:
    refused = namespace_refused()
    if refused:
        pytest.skip(refused)
    image = png(generate_pair(pair_rng(9001, 0), 128)[0])
    (tmp_path / "image.png").write_bytes(image)
    (tmp_path / "big.png").write_bytes(png(generate_pair(pair_rng(9001, 1), 384)[0]))
    (tmp_path / "dataset.zip").write_bytes(make_zip(dataset_files(3, 64)))
    shared = shared_store()
    env = {
        "UNET_MODEL_DIR": str(shipped_weights),
        "UNET_STATE_DIR": str(tmp_path / "ray-state"),
        "UNET_DEVICE": "cpu",
        "UNET_TORCH_THREADS": "1",
        "UNET_API_KEY": KEY,
        "UNET_RAY_REPLICAS": "2" if shared else "1",
        "UNET_RAY_NUM_CPUS": "0.5",
        # One request at a time per replica and one waiting: a small burst overloads it.
        "UNET_RAY_MAX_ONGOING_REQUESTS": "1",
        "UNET_RAY_MAX_QUEUED_REQUESTS": "1",
        "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "service.api.ray_proxy:middlewares",
    }
    with ExitStack() as stack:
        if shared:
            if postgres.binaries() is None:
                pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
            server_url = stack.enter_context(postgres.server(socket_only=True))
            env["UNET_DATABASE_URL"] = postgres.new_database(server_url)
        spec = {
            "env": env,
            "model": MODEL,
            "image": str(tmp_path / "image.png"),
            "dataset": str(tmp_path / "dataset.zip"),
            "overload_image": str(tmp_path / "big.png"),
            "overload_requests": 16,
            "shared_threshold": shared,
        }
        seen = run_scenario(spec, tmp_path)

    plain = Settings(model_dir=shipped_weights, state_dir=tmp_path / "plain", torch_threads=1)
    sha, threshold = plain_mask(plain, image)
    assert seen["readyz"] == 200
    assert seen["inference"] == {"status": 200, "sha256": sha, "threshold": threshold}
    assert seen["unauthenticated_put"] == 401  # the service's auth, through Ray's proxy

    if shared:
        by_replica = seen["threshold"]["by_replica"]
        assert seen["threshold"]["put_status"] == 200
        assert len(by_replica) == 2, f"answers came from {sorted(by_replica)}"
        assert all(applied == ["0.37:manual"] for applied in by_replica.values()), by_replica

    calibration = seen["calibration"]
    assert calibration["status"] == "succeeded", calibration
    assert calibration["active"]["source"] == "calibration"

    answers = seen["burst"]["answers"]
    refusals = [a for a in answers if a["status"] == 503]
    assert {a["status"] for a in answers} <= {200, 503}, answers
    assert refusals and any(a["status"] == 200 for a in answers), answers
    for refusal in refusals:
        assert refusal["retry_after"] is not None and int(refusal["retry_after"]) >= 1
        assert refusal["content_type"] == PROBLEM
        assert refusal["body"]["status"] == 503 and refusal["body"]["type"].endswith("overloaded")
    assert seen["after_burst"]["status"] == 200
    skip_note = "" if shared else " (one replica: no shared store yet)"
    print(f"Ray Serve scenario{skip_note}: {json.dumps(seen)[:400]}")
