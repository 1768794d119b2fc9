"""Validates the Kustomize base and overlays offline (CI: `make check-deploy`).

Every resource and every overlay's rendered Deployment is checked against the Kubernetes schemas
that `kubernetes-validate` bundles (strict: unknown fields fail); the ServiceMonitor, a Prometheus
Operator CRD with no bundled schema, is checked for the fields the operator needs. Overlays are
rendered here the way Kustomize renders these ones (images, strategic-merge patches of
containers and env by name), so a broken patch fails too; `kubectl kustomize` is not needed.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

HERE = Path(__file__).resolve().parent
VERSION = "1.30.0"  # the oldest Kubernetes these manifests promise to run on


def load(path: Path) -> dict[str, Any]:
    """One YAML document."""
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def merge(base: Any, patch: Any) -> Any:
    """A strategic merge as Kustomize does it for these manifests: lists of named items by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = merge(base[key], value) if key in base else value
        return merged
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(item, dict) and "name" in item for item in base + patch)
    ):
        by_name = {item["name"]: item for item in base}
        for item in patch:
            by_name[item["name"]] = merge(by_name.get(item["name"], {}), item)
        return list(by_name.values())
    return patch


def render(folder: Path) -> list[dict[str, Any]]:
    """The resources of the kustomization in `folder`, with its images and patches applied."""
    kustomization = load(folder / "kustomization.yaml")
    resources: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = folder / entry
        resources += render(path) if path.is_dir() else [load(path)]
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        matches = [
            r
            for r in resources
            if r["kind"] == target["kind"] and r["metadata"]["name"] == target["name"]
        ]
        assert matches, f"{folder}: patch {patch['path']} matches no resource"
        for resource in matches:
            resource.update(merge(resource, load(folder / patch["path"])))
    for image in kustomization.get("images", []):
        for resource in resources:
            for container in (
                resource.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
            ):
                if container["image"].split(":")[0] == image["name"]:
                    container["image"] = f"{image['newName']}:{image['newTag']}"
    return copy.deepcopy(resources)


def check_service_monitor(resource: dict[str, Any]) -> None:
    """The fields the Prometheus Operator reads, since no schema is bundled for its CRD."""
    assert resource["apiVersion"] == "monitoring.coreos.com/v1"
    spec = resource["spec"]
    assert spec["selector"]["matchLabels"], "a ServiceMonitor selects its Service by labels"
    for endpoint in spec["endpoints"]:
        assert endpoint["port"] and endpoint["path"] == "/metrics"


def main() -> int:
    """Validate every overlay's rendering; print one line each; non-zero on any failure."""
    failures = 0
    for overlay in sorted((HERE / "overlays").iterdir()):
        for resource in render(overlay):
            name = f"{overlay.name}: {resource['kind']}/{resource['metadata']['name']}"
            try:
                if resource["kind"] == "ServiceMonitor":
                    check_service_monitor(resource)
                else:
                    kubernetes_validate.validate(resource, VERSION, strict=True)
            except (kubernetes_validate.ValidationError, AssertionError, KeyError) as error:
                failures += 1
                print(f"{name}: INVALID: {error}")
            else:
                print(f"{name}: valid")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
