"""An operator's view of a real server: a real Prometheus scrapes it and evaluates the shipped
alert rules, and its JSON logs are read line by line.

One `python -m service` serves the tiny model and a card that fails warm-up, with JSON logs at
debug level and a mistyped setting; Debian's `prometheus` scrapes it every second. The tests run
in file order: the first looks before any request.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from tests.bad_models import write_card, zero_over_zero
from tests.helpers import TINY_MODEL, png, until
from tests.servers import ServiceProcess, free_port

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
BROKEN = "zero-over-zero"
IMAGE = {"image": ("x.png", png(np.full((40, 48), 90, dtype=np.uint8)), "image/png")}
REQUESTS = 3
# Every family an SRE's dashboards and alerts read, as Prometheus names its series.
FAMILIES = (
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_start_time_seconds",
    "python_info",
    "python_gc_objects_collected_total",
    "unet_build_info",
    "unet_model_available",
    "unet_model_requests_total",
    "unet_queue_wait_seconds_count",
    "unet_compute_seconds_count",
    "unet_in_flight_requests",
    "unet_calibration_duration_seconds_count",
    "unet_store_errors_total",
    "unet_threshold_changes_total",
    "unet_http_requests_total",
    "unet_rejected_requests_total",
    "unet_calibrations_failed_total",
    "unet_drift_status",
)


@dataclass
class Deployment:
    """The service, the Prometheus scraping it, and the service's log file."""

    service: ServiceProcess
    prometheus: str
    log: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Prometheus's instant vector for `expr`."""
        answer = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": expr}, timeout=10)
        assert answer.status_code == 200, answer.text
        result: list[dict[str, Any]] = answer.json()["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The single sample of `expr`, or None while there is none."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if len(result) == 1 else None


def _rules_for_a_test(folder: Path) -> Path:
    """The shipped rules with every `for:` cut to nothing, so an alert fires in seconds."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("for", None)
    path = folder / "alerts.yml"
    path.write_text(yaml.safe_dump(rules))
    return path


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[Deployment]:
    """The service and a Prometheus on 127.0.0.1, both stopped after the module."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("needs Debian's `prometheus` package (apt install prometheus; .ci/run does)")
    folder = tmp_path_factory.mktemp("operations")
    models = folder / "models"
    shutil.copytree(tiny_model_dir, models)
    write_card(models, BROKEN, {"source": {"format": "onnx", "path": zero_over_zero(models)}})
    log = folder / "service.log"
    env = {"UNET_LOG_JSON": "true", "UNET_LOG_LEVEL": "debug", "UNET_WORKRS": "2"}
    with log.open("w") as stderr:
        service = ServiceProcess(
            models, folder / "state", env=env, stderr=stderr, ready_within_s=180
        )
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(_rules_for_a_test(folder))],
        "scrape_configs": [
            {"job_name": "unet", "static_configs": [{"targets": [f"127.0.0.1:{service.port}"]}]}
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    prometheus = subprocess.Popen(
        [
            binary,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deployed = Deployment(service, f"http://127.0.0.1:{port}", log)
    try:
        until(lambda: _answers(f"{deployed.prometheus}/-/ready"), "Prometheus never got ready")
        until(lambda: deployed.value('up{job="unet"}') == 1.0, "Prometheus never scraped")
        yield deployed
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
        service.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _log_lines(log: Path) -> list[dict[str, Any]]:
    """Every line the service wrote; each must be one JSON object."""
    lines = log.read_text().splitlines()
    assert lines, "the service wrote nothing"
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
    return parsed


def test_every_family_is_present_before_any_request(deployment: Deployment) -> None:
    names = {series["metric"]["__name__"] for series in deployment.query('{job="unet"}')}
    assert not set(FAMILIES) - names, f"missing: {sorted(set(FAMILIES) - names)}"
    assert deployment.value(f'unet_model_available{{model="{TINY_MODEL}"}}') == 1.0
    assert deployment.value(f'unet_model_available{{model="{BROKEN}"}}') == 0.0
    # Warm-up passes are not traffic; every outcome is there at zero for increase() to see.
    assert deployment.value(f'unet_queue_wait_seconds_count{{model="{TINY_MODEL}"}}') == 0.0
    assert deployment.value(f'unet_compute_seconds_count{{model="{TINY_MODEL}"}}') == 0.0
    outcomes = deployment.query(f'unet_model_requests_total{{model="{TINY_MODEL}"}}')
    assert {series["metric"]["outcome"] for series in outcomes} == {
        "ok",
        "client_error",
        "overloaded",
        "error",
    }
    assert deployment.value(f'sum(unet_model_requests_total{{model="{TINY_MODEL}"}})') == 0.0
    assert deployment.value('sum(unet_store_errors_total{operation="write"})') == 0.0


def test_the_model_unavailable_alert_fires_for_the_broken_card(deployment: Deployment) -> None:
    firing = 'ALERTS{alertname="UnetModelUnavailable", alertstate="firing"}'
    until(lambda: bool(deployment.query(firing)), "UnetModelUnavailable never fired")
    assert {series["metric"]["model"] for series in deployment.query(firing)} == {BROKEN}


def test_queue_wait_and_compute_count_one_observation_per_request(
    deployment: Deployment,
) -> None:
    base = deployment.service.base
    for i in range(REQUESTS):
        answer = httpx.post(
            f"{base}/v1/models/{TINY_MODEL}/mask",
            files=IMAGE,
            headers={"X-Request-ID": f"ops-test-{i}"},
            timeout=30,
        )
        assert answer.status_code == 200
        assert answer.headers["x-request-id"] == f"ops-test-{i}"
    refused = httpx.post(f"{base}/v1/models/{TINY_MODEL}/mask", files={"image": ("x", b"no")})
    assert refused.status_code == 422

    def counted(family: str) -> float | None:
        return deployment.value(f'{family}{{model="{TINY_MODEL}"}}')

    until(lambda: counted("unet_compute_seconds_count") == REQUESTS, "compute not counted")
    assert counted("unet_queue_wait_seconds_count") == REQUESTS
    ok = f'unet_model_requests_total{{model="{TINY_MODEL}", outcome="ok"}}'
    until(lambda: deployment.value(ok) == REQUESTS, "requests not counted")
    client_error = f'unet_model_requests_total{{model="{TINY_MODEL}", outcome="client_error"}}'
    until(lambda: deployment.value(client_error) == 1.0, "the 422 not counted")
    assert deployment.value(f'unet_in_flight_requests{{model="{TINY_MODEL}"}}') == 0.0


def test_every_log_line_is_json_and_a_request_id_reaches_the_worker(
    deployment: Deployment,
) -> None:
    request_id = "ops-test-0"  # sent by the test before

    def mine() -> list[dict[str, Any]]:
        return [
            line
            for line in _log_lines(deployment.log)
            if request_id in str(line.get("request_id", "")).split(",")
        ]

    until(lambda: any(line["logger"] == "service.access" for line in mine()), "no access line")
    access = next(line for line in mine() if line["logger"] == "service.access")
    assert access["route"] == "/v1/models/{model}/mask" and access["status"] == 200
    assert access["model"] == TINY_MODEL and access["client"] == "127.0.0.1"
    assert access["threshold_source"] == "default" and 0 < access["threshold"] < 1
    assert access["bytes_in"] > 0 and access["bytes_out"] > 0
    assert any(line["logger"].startswith("service.inference") for line in mine())
    lines = _log_lines(deployment.log)
    # uvicorn's own lines are JSON too.
    assert any(line["logger"].startswith("uvicorn") for line in lines)
    refused = [line for line in lines if line.get("status") == 422]
    assert refused and refused[0]["problem_type"].endswith("unreadable-image")
    assert refused[0]["problem_detail"]


def test_a_mistyped_setting_is_named_with_the_closest_one(deployment: Deployment) -> None:
    warnings = [line["message"] for line in _log_lines(deployment.log)]
    assert any("UNET_WORKRS" in text and "UNET_WORKERS" in text for text in warnings)
