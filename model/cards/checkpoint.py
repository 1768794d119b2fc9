"""Checkpoints: `NAME.safetensors` (weights, no pickle) beside `NAME.json` (everything else).

How an image becomes the network's input is the JSON's `input` (a model card's `input`: channels,
order, `normalize`), and nothing else says it. Earlier releases also wrote a `preprocessing`
object that described the `dtype` rule whatever `input` said; it is ignored when read and no
longer written. The shipped checkpoints' JSON changed with it, and so did their digests.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model.errors import CheckpointError
from model.network.unet import UNet, UNetConfig

FORMAT_VERSION = 1


@dataclass
class CheckpointMeta:
    """The JSON half of a checkpoint."""

    architecture: UNetConfig
    training: dict[str, Any] = field(default_factory=dict)
    # {"value": float, "source": str, ...evidence}; absent means the conventional 0.5. A
    # multi-class checkpoint has {"classes": {name: float}, ...} instead of "value".
    default_threshold: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION
    # The model card's `input` (channels, order, normalisation); None: the `dtype` rule.
    input: dict[str, Any] | None = None
    # A multi-class model's `{"mode": ..., "classes": [...]}` (the card's `output`); None: binary.
    output: dict[str, Any] | None = None

    @property
    def threshold(self) -> float:
        """The recorded default threshold, or the conventional 0.5 when there is none."""
        value = (self.default_threshold or {}).get("value")
        return float(value) if value is not None else 0.5

    @property
    def reference_auc(self) -> float | None:
        """The pixel AUC recorded with the default threshold's evidence, if any."""
        auc = (self.default_threshold or {}).get("auc")
        return float(auc) if isinstance(auc, int | float) else None

    def to_dict(self) -> dict[str, Any]:
        """The metadata as written to `NAME.json`."""
        written = {
            "format_version": self.format_version,
            "architecture": self.architecture.to_dict(),
            "training": self.training,
            "default_threshold": self.default_threshold,
        }
        written |= {"input": self.input} if self.input is not None else {}
        return written | ({"output": self.output} if self.output is not None else {})


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """The (`.safetensors`, `.json`) pair for a path to either file or to their common stem."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def save(model: UNet, path: str | Path, meta: CheckpointMeta | None = None) -> Path:
    """Write `model` as a checkpoint pair at `path`; returns the `.safetensors` path."""
    weights_path, json_path = checkpoint_paths(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    meta = meta or CheckpointMeta(model.config)
    meta.architecture = model.config
    state = {
        name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()
    }
    save_file(state, str(weights_path), metadata={"format_version": str(FORMAT_VERSION)})
    json_path.write_text(json.dumps(meta.to_dict(), indent=2) + "\n")
    return weights_path


def read_meta(path: str | Path) -> CheckpointMeta:
    """Read and validate the JSON half of a checkpoint."""
    _, json_path = checkpoint_paths(path)
    if not json_path.is_file():
        raise CheckpointError(
            f"{json_path}: missing; a checkpoint needs its .json beside the weights"
        )
    try:
        raw = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{json_path}: not valid JSON ({error})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("architecture"), dict):
        raise CheckpointError(f"{json_path}: needs an 'architecture' object")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{json_path}: format_version {version!r} is not supported (expected {FORMAT_VERSION})"
        )
    try:
        architecture = UNetConfig(**raw["architecture"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{json_path}: bad architecture: {error}") from None
    threshold = raw.get("default_threshold")
    if threshold is not None and not _threshold_ok(threshold):
        raise CheckpointError(
            f"{json_path}: default_threshold needs a numeric 'value' (or, multi-class, "
            "'classes': an object of numbers)"
        )
    output = raw.get("output")
    if output is not None and (not isinstance(output, dict) or set(output) != {"mode", "classes"}):
        raise CheckpointError(
            f"{json_path}: output must be an object with exactly 'mode' and 'classes' (a "
            "multi-class checkpoint), or be left out for a binary one"
        )
    return CheckpointMeta(
        architecture=architecture,
        output=output,
        training=raw.get("training") or {},
        default_threshold=threshold,
        input=raw.get("input") if isinstance(raw.get("input"), dict) else None,
    )


def _threshold_ok(threshold: Any) -> bool:
    """A numeric `value`, or a multi-class `classes` object of numbers."""
    if not isinstance(threshold, dict):
        return False
    if isinstance(threshold.get("value"), int | float):
        return True
    classes = threshold.get("classes")
    return (
        "value" not in threshold
        and isinstance(classes, dict)
        and bool(classes)
        and all(isinstance(v, int | float) for v in classes.values())
    )


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[UNet, CheckpointMeta]:
    """Load a checkpoint pair into an eval-mode UNet, with its metadata."""
    weights_path, json_path = checkpoint_paths(path)
    meta = read_meta(path)
    if not weights_path.is_file():
        raise CheckpointError(
            f"{weights_path}: missing; expected the weights beside {json_path.name}"
        )
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{weights_path}: not a safetensors file ({error})") from None
    model = UNet(meta.architecture)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{weights_path}: tensors do not match the architecture in {json_path.name} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            raise CheckpointError(
                f"{weights_path}: tensor {name!r} has shape {tuple(state[name].shape)}, "
                f"the architecture in {json_path.name} needs {tuple(tensor.shape)}"
            )
    model.load_state_dict(state)
    return model.to(device).eval(), meta


def load(path: str | Path) -> UNet:
    """Load a checkpoint (path to its `.safetensors` or `.json`) as an eval-mode module."""
    return load_checkpoint(path)[0]


def checkpoint_digest(path: str | Path) -> str:
    """SHA-256 over both files of a checkpoint: a threshold belongs to exactly these bytes."""
    digest = hashlib.sha256()
    for part in checkpoint_paths(path):
        with part.open("rb") as file:
            while chunk := file.read(1 << 20):  # streamed: the weights are never all in memory
                digest.update(chunk)
    return digest.hexdigest()
