"""Drives the service on a real local Ray Serve; run only inside a loopback-only namespace.

    unshare -n -- sh -c 'ip link set lo up && exec python tests/service/ray_scenario.py SPEC'

SPEC is a JSON file: `env` (UNET_* settings for the replicas and the deployment), `image`,
`dataset` and `overload_image` (files), `model`, `overload_requests`, `shared_threshold`. Starts
Ray and deploys `service.ray_app:build` on its proxy at 127.0.0.1:8000, then: one inference, a
threshold set through one request and read back by many, a calibration to completion, and a
burst far past the queue bound. Prints one JSON object of what it saw on stdout; `test_ray_serve`
asserts it. Ray binds every interface, hence the namespace: nothing leaves loopback.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

PROXY = "http://127.0.0.1:8000"
BOUND_S = 120.0  # no request, calibration or burst may take longer


def log(message: str) -> None:
    """Progress on stderr; stdout carries only the JSON result."""
    print(message, file=sys.stderr, flush=True)


def post_image(client: httpx.Client, path: str, data: bytes, **params: Any) -> httpx.Response:
    """POST an image upload to `path`."""
    files = {"image": ("x.png", data, "application/octet-stream")}
    return client.post(path, files=files, params=params)


def inference(client: httpx.Client, base: str, image: bytes) -> dict[str, Any]:
    """The mask of `image` as the service answers it."""
    answer = post_image(client, f"{base}/mask", image)
    return {
        "status": answer.status_code,
        "sha256": hashlib.sha256(answer.content).hexdigest(),
        "threshold": answer.headers.get("x-threshold"),
    }


def shared_threshold(client: httpx.Client, base: str, image: bytes, value: float) -> dict:
    """Set the threshold through one request, then see which threshold each replica applies."""
    put = client.put(f"{base}/threshold", json={"value": value})
    time.sleep(1.5)  # the README promises coherence across processes within one second
    seen: dict[str, set[str]] = {}
    for _ in range(24):
        answer = post_image(client, f"{base}/mask", image, format="json")
        body = answer.json()
        applied = f"{body['threshold']}:{body['threshold_source']}"
        seen.setdefault(answer.headers.get("x-replica", "?"), set()).add(applied)
    return {"put_status": put.status_code, "by_replica": {k: sorted(v) for k, v in seen.items()}}


def calibration(client: httpx.Client, base: str, dataset: bytes) -> dict[str, Any]:
    """Run a calibration to its end through the proxy."""
    files = {"dataset": ("calibration.zip", dataset, "application/zip")}
    started = client.post(f"{base}/calibrations", files=files)
    if started.status_code != 202:
        return {"started": started.status_code, "body": started.text}
    deadline = time.monotonic() + BOUND_S
    while True:
        body = client.get(started.headers["location"]).json()
        if body["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    active = client.get(f"{base}/threshold").json()
    return {"started": 202, "status": body["status"], "error": body.get("error"), "active": active}


async def burst(base: str, image: bytes, requests: int) -> dict[str, Any]:
    """`requests` uploads at once, far past what the replicas take and queue."""
    async with httpx.AsyncClient(base_url=PROXY, timeout=BOUND_S) as client:

        async def one() -> dict[str, Any]:
            answer = await client.post(
                f"{base}/mask", files={"image": ("x.png", image, "application/octet-stream")}
            )
            refused = answer.status_code != 200
            return {
                "status": answer.status_code,
                "retry_after": answer.headers.get("retry-after"),
                "content_type": answer.headers.get("content-type"),
                "body": answer.json()
                if refused and "json" in answer.headers.get("content-type", "")
                else None,
            }

        began = time.monotonic()
        answers = await asyncio.gather(*(one() for _ in range(requests)))
        return {"answers": answers, "seconds": time.monotonic() - began}


def main() -> None:
    """Start Ray, deploy, drive, print, shut down."""
    spec = json.loads(Path(sys.argv[1]).read_text())
    os.environ.update(spec["env"])  # before Ray starts: its workers inherit this environment
    import ray
    from ray import serve

    from service.ray_app import build

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 * 1024)
    result: dict[str, Any] = {}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": 8000})
        began = time.monotonic()
        serve.run(build(), name="unet", route_prefix="/")
        result["deploy_s"] = time.monotonic() - began
        log(f"deployed in {result['deploy_s']:.1f} s")
        base = f"/v1/models/{spec['model']}"
        image = Path(spec["image"]).read_bytes()
        with httpx.Client(base_url=PROXY, timeout=BOUND_S) as client:
            result["readyz"] = client.get("/readyz").status_code
            result["inference"] = inference(client, base, image)
            result["unauthenticated_put"] = client.put(
                f"{base}/threshold", json={"value": 0.5}
            ).status_code
            auth = {"Authorization": f"Bearer {spec['env']['UNET_API_KEY']}"}
            client.headers.update(auth)
            if spec["shared_threshold"]:
                result["threshold"] = shared_threshold(client, base, image, 0.37)
            log("calibrating")
            result["calibration"] = calibration(client, base, Path(spec["dataset"]).read_bytes())
        log("overload")
        overload = Path(spec["overload_image"]).read_bytes()
        result["burst"] = asyncio.run(burst(base, overload, spec["overload_requests"]))
        with httpx.Client(base_url=PROXY, timeout=BOUND_S) as client:
            result["after_burst"] = inference(client, base, image)
    finally:
        serve.shutdown()
        ray.shutdown()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
