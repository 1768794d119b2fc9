"""UNET_PRECISION=int8: native checkpoints served as static INT8 ONNX models, behind the gate.

Each checkpoint is quantised once per digest (`model.cards.quantize`, on the data its JSON names:
`training.val_data` where that folder exists, else the synthetic validation set its threshold was
chosen on, regenerated from its seed) and the result is cached in the state folder beside the
ONNX export: `int8/DIGEST.onnx`, its card `int8/DIGEST.json` and the gate's verdict
`int8/DIGEST.gate.json`. A restart reads the cache; a refused model is not quantised again.

The INT8 model is a different model: it gets its own digest, so thresholds and calibrations
belong to the precision they were chosen for. A model the gate refuses, or one that cannot be
quantised, serves in fp32 with one log line saying why.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from model.cards.gate import GateReport, evaluate_gate
from model.cards.quantize import QuantSettings, quantize_onnx, split_folder
from model.cards.sources import load_predictor
from model.cards.sources.native import NativePredictor
from model.cards.sources.onnx import ort_session
from model.cards.to_onnx import cached_export
from model.data.synth import write_dataset
from model.errors import QuantizationError
from service.inference.registry import ModelRegistry, ServedModel

log = logging.getLogger(__name__)
SETTINGS = QuantSettings()
_SYNTHETIC = re.compile(r"synthetic, seed (\d+)")
DEFAULT_VAL_IMAGES = 64


def int8_digest(digest: str, settings: QuantSettings = SETTINGS) -> str:
    """The INT8 model's digest: the checkpoint's and the quantisation's settings, hashed."""
    recipe = json.dumps({"fp32": digest, "int8": settings.to_dict()}, sort_keys=True)
    return hashlib.sha256(recipe.encode()).hexdigest()


def apply_precision(
    registry: ModelRegistry, precision: str, backend: str, device: str, state_dir: Path
) -> None:
    """Serve every native model of `registry` in `precision` where the backend allows it."""
    if precision != "int8":
        return
    if device != "cpu" or backend == "torch":
        log.warning(
            "UNET_PRECISION=int8 needs ONNX Runtime on the CPU (UNET_BACKEND=%s on %s): every "
            "model serves in fp32",
            backend,
            device,
        )
        return
    for served in registry:
        registry.replace(serve_in_int8(served, state_dir))


def serve_in_int8(served: ServedModel, state_dir: Path) -> ServedModel:
    """`served` in INT8 (its own digest) where it quantises and passes the gate, else as it is.

    Never raises for a model that cannot be quantised: it serves in fp32 with one log line.
    """
    if not isinstance(served.network, NativePredictor):
        log.info(
            "model %s: precision %s (as its card says; only native checkpoints are quantised)",
            served.name,
            served.precision,
        )
        return served
    try:
        path, report, fresh = _cached(served, state_dir / "int8")
    except Exception as error:  # whatever stops quantising, fp32 still serves
        log.warning(
            "model %s: precision fp32, not int8: %s", served.name, " ".join(str(error).split())
        )
        return served
    if not report.passed:
        log.warning("model %s: precision fp32, not int8: %s", served.name, report.refusal())
        return served
    log.info(
        "model %s: precision int8 (%s %s; held-out AUC %.4f -> %.4f, Dice %.4f -> %.4f)",
        served.name,
        "quantised to" if fresh else "cached at",
        path,
        report.fp32.auc,
        report.int8.auc,
        report.fp32.dice,
        report.int8.dice,
    )
    return dataclasses.replace(
        served, digest=int8_digest(served.digest), precision="int8", quantized=path
    )


def _cached(served: ServedModel, folder: Path) -> tuple[Path, GateReport, bool]:
    """(the INT8 file, the gate's report, whether it was made now) for `served`'s digest."""
    path, verdict = folder / f"{served.digest}.onnx", folder / f"{served.digest}.gate.json"
    recorded = _read(verdict)
    if recorded is not None and recorded.get("settings") == SETTINGS.to_dict():
        report = _report(recorded["gate"])
        if not report.passed or _loads(path):
            return path, report, False
    assert isinstance(served.network, NativePredictor)  # checked by the caller
    network = served.network.network
    data = calibration_data(served, folder)
    split = split_folder(data, served.network, SETTINGS.calibration_images)
    fp32, _ = cached_export(network, served.digest, folder.parent / "onnx")
    quantize_onnx(fp32, path, split.calibration, served.network, SETTINGS)
    card = served.card.model_dump(mode="json", exclude_none=True)
    card["source"] = {"format": "onnx", "path": path.name}
    card_path = path.with_suffix(".json")
    _write(card_path, card)
    report = evaluate_gate(served.network, load_predictor(card_path), split.held_out)
    # The card records what `unet quantize` records: serving it from a model folder says int8.
    card["quantization"] = SETTINGS.to_dict() | {
        "data": str(data),
        "held_out_images": len(split.held_out),
        "gate": report.to_dict(),
    }
    _write(card_path, card)
    _write(verdict, {"settings": SETTINGS.to_dict(), "data": str(data), "gate": report.to_dict()})
    if not report.passed:
        path.unlink(missing_ok=True)
    return path, report, True


def calibration_data(served: ServedModel, folder: Path) -> Path:
    """The folder the checkpoint's JSON names: its validation data, else its synthetic seed's."""
    raw = json.loads(served.path.read_text())
    training = raw.get("training") or {}
    named = training.get("val_data")
    if named:
        for base in (served.path.parent, Path.cwd()):
            if (base / named).is_dir():
                return base / named
    source = str((raw.get("default_threshold") or {}).get("source", ""))
    seed = _SYNTHETIC.search(source)
    if seed is None:
        raise QuantizationError(
            f"{served.path}: names no calibration data (training.val_data is not a folder here "
            "and the threshold's source is not a synthetic seed); quantise it with `unet "
            "quantize` and serve the INT8 card instead"
        )
    n = int(training.get("n_val") or DEFAULT_VAL_IMAGES)
    out = folder / f"synthetic-seed{seed.group(1)}-n{n}"
    if not (out / "masks" / f"{n - 1:04d}.png").is_file():
        write_dataset(out, n=n, seed=int(seed.group(1)))
    return out


def _loads(path: Path) -> bool:
    """Whether ONNX Runtime loads the cached file (a truncated one is quantised again)."""
    try:
        ort_session(path, 1)
    except Exception:  # missing, truncated, or from an ONNX Runtime that cannot read it
        path.unlink(missing_ok=True)
        return False
    return True


def _report(figures: dict[str, Any]) -> GateReport:
    """A GateReport read back from its JSON."""
    from model.cards.gate import Figures

    fields = {f.name for f in dataclasses.fields(GateReport)}
    values = {k: v for k, v in figures.items() if k in fields}
    values["fp32"], values["int8"] = Figures(**values["fp32"]), Figures(**values["int8"])
    return GateReport(**values)


def _read(path: Path) -> dict[str, Any] | None:
    """A cached JSON record, or None when it is missing or unreadable."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write(path: Path, value: dict[str, Any]) -> None:
    """`value` as JSON at `path`, atomically (several worker processes may start at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".json", dir=path.parent)
    with os.fdopen(handle, "w") as file:
        json.dump(value, file, indent=2)
    os.replace(tmp, path)
