"""The deployment files: the Kubernetes manifests validate, the alert rules pass promtool, and
compose refuses to publish beyond loopback without a key."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = ROOT / "deploy" / "kubernetes"
PROMETHEUS = ROOT / "deploy" / "prometheus"
SERIES = re.compile(r"\b(?:unet|process|python)_[a-z_]+")


def test_the_kubernetes_overlays_validate() -> None:
    pytest.importorskip("kubernetes_validate", reason="needs kubernetes-validate (the dev extra)")
    ran = subprocess.run(
        [sys.executable, str(KUBERNETES / "validate.py")], capture_output=True, text=True
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    for overlay in ("cpu", "gpu"):
        for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
            assert f"{overlay}: {kind}/unet-service: valid" in ran.stdout


def test_a_broken_manifest_fails_validation() -> None:
    validator = pytest.importorskip("kubernetes_validate")
    sys.path.insert(0, str(KUBERNETES))
    try:
        import validate  # deploy/kubernetes/validate.py
    finally:
        sys.path.remove(str(KUBERNETES))
    (deployment,) = [
        r for r in validate.render(KUBERNETES / "overlays" / "gpu") if r["kind"] == "Deployment"
    ]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1  # the patch applied
    assert {"name": "UNET_DEVICE", "value": "cuda"} in container["env"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    container["livenessProbe"]["httpGet"]["pth"] = "/healthz"
    with pytest.raises(validator.ValidationError):
        validator.validate(deployment, validate.VERSION, strict=True)


@pytest.mark.parametrize("command", ["check rules alerts.yml", "test rules alerts.test.yml"])
def test_the_alert_rules_pass_promtool(command: str) -> None:
    if shutil.which("promtool") is None:
        pytest.skip("needs promtool (Debian's prometheus package; .ci/run installs it)")
    ran = subprocess.run(
        ["promtool", *command.split()], cwd=PROMETHEUS, capture_output=True, text=True
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "SUCCESS" in ran.stdout + ran.stderr


def _compose_start(publish: str, key: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The compose service's start-up command, as the container's shell runs it."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    shell, flag, script = compose["services"]["unet"]["command"]
    # Compose turns `$$` into `$`; the service binary is replaced by one that says it ran.
    script = script.replace("$$", "$").replace("/app/.venv/bin/unet serve", "echo serving")
    env = {"PATH": os.environ["PATH"], "UNET_PUBLISH": publish, "UNET_API_KEY": key}
    return subprocess.run([shell, flag, script], env=env, capture_output=True, text=True)


def test_compose_publishes_on_loopback_unless_a_key_is_set(tmp_path: Path) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["x-common"]["ports"] == ["${UNET_PUBLISH:-127.0.0.1}:8000:8000"]
    assert _compose_start("127.0.0.1", "", tmp_path).stdout.strip() == "serving"
    refused = _compose_start("0.0.0.0", "", tmp_path)
    assert refused.returncode == 1 and "without UNET_API_KEY" in refused.stderr
    assert _compose_start("0.0.0.0", "s3cret", tmp_path).stdout.strip() == "serving"


def test_the_dashboard_and_alerts_read_only_series_the_service_exports() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from service.ops.metrics import Metrics

    metrics = Metrics()
    metrics.prepare(["m"], lambda: {"m": True})
    metrics.set_drift("m", "ok", 0.0, 0.5, 0.5)
    metrics.set_threshold("m", 0.5)
    # Labelled by route, the HTTP families appear with the first request.
    metrics.latency.labels("POST", "/v1/models/{model}/mask").observe(0.01)
    exported = {
        sample.name
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
    } | {"ALERTS"}
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "unet-service.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [q["query"] for q in dashboard["templating"]["list"] if "label_values" in q["query"]]
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    exprs += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    used = {name for expr in exprs for name in SERIES.findall(expr)}
    assert used and not used - exported, f"not exported: {sorted(used - exported)}"
    assert {"unet_queue_wait_seconds_bucket", "unet_drift_score_distance"} <= used
