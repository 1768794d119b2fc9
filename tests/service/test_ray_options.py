"""Ray Serve's deployment options come from the UNET_RAY_* settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import Settings

pytest.importorskip("ray.serve", reason="Ray Serve is the optional extra `.[ray]`")

from service.ray_app import deployment_options

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_one_replica_on_one_cpu_with_a_bounded_queue() -> None:
    options = deployment_options(Settings())
    assert options["num_replicas"] == 1 and "autoscaling_config" not in options
    assert options["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 0}
    assert (options["max_ongoing_requests"], options["max_queued_requests"]) == (16, 64)
    assert options["backpressure_config"].status_code == 503
    assert options["backpressure_config"].retry_after_s == 1


def test_a_max_replica_count_turns_on_autoscaling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNET_RAY_REPLICAS", "2")
    monkeypatch.setenv("UNET_RAY_MAX_REPLICAS", "8")
    monkeypatch.setenv("UNET_RAY_NUM_GPUS", "0.25")
    options = deployment_options(Settings())
    scaling = options["autoscaling_config"]
    assert "num_replicas" not in options
    assert (scaling.min_replicas, scaling.max_replicas) == (2, 8)
    assert scaling.target_ongoing_requests == 4
    assert options["ray_actor_options"]["num_gpus"] == 0.25


def test_the_serve_config_deploys_the_builder_on_loopback() -> None:
    import yaml
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(
        yaml.safe_load((ROOT / "deploy" / "ray" / "serve.yaml").read_text())
    )
    assert (config.http_options.host, config.http_options.port) == ("127.0.0.1", 8000)
    (app,) = config.applications
    assert app.import_path == "service.ray_app:build" and app.route_prefix == "/"
