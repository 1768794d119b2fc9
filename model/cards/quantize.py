"""Static INT8 quantisation of an ONNX network with ONNX Runtime's own tools, behind a gate.

`quantize_onnx` runs `onnxruntime.quantization.quantize_static` (QDQ format, per-channel int8
weights, uint8 activations, MinMax calibration) on representative images read from a data folder
and normalised exactly as the card says. `quantize_card` is `unet quantize`: it exports a native
checkpoint with the project's ONNX exporter (an ONNX card is used as it is), quantises, runs the
accuracy gate (`model.cards.gate`) on held-out images of the same folder and writes the INT8
model and its card only when the gate passes (or `accept_loss`); a refusal writes nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.cards.card import load_card
from model.cards.gate import GateReport, evaluate_gate
from model.cards.sources import Predictor, load_predictor
from model.data.datasets import find_pairs, load_pair
from model.errors import DatasetError, ExportError, QuantizationError

CALIBRATION_IMAGES = 16  # the quantiser's images; the rest of the folder is held out
MIN_HELD_OUT = 4  # fewer held-out images than this cannot judge the quantised model


@dataclass(frozen=True)
class QuantSettings:
    """How `quantize_static` is called; recorded in the INT8 card and the serving cache."""

    method: str = "onnxruntime.quantization.quantize_static"
    quant_format: str = "QDQ"
    weight_type: str = "QInt8"
    activation_type: str = "QUInt8"
    per_channel: bool = True
    calibrate_method: str = "MinMax"
    # 7-bit weights: without VNNI, x86 runs u8 x s8 products through VPMADDUBSW, whose 16-bit
    # sums can saturate; ONNX Runtime's guide advises reduce_range there (docs/benchmarks.md).
    reduce_range: bool = True
    calibration_images: int = CALIBRATION_IMAGES

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values."""
        return asdict(self)


@dataclass
class Split:
    """A data folder's images, normalised as the card says: the quantiser's and the held-out."""

    calibration: list[np.ndarray]
    held_out: list[tuple[np.ndarray, np.ndarray]]  # (image (C, H, W), mask (H, W) bool)


def split_folder(folder: Path, predictor: Predictor, calibration_images: int) -> Split:
    """The first `calibration_images` images for the quantiser, the rest held out for the gate.

    Raises DatasetError for a missing, empty or unreadable folder, or too few images.
    """
    pairs = find_pairs(folder)
    needed = calibration_images + MIN_HELD_OUT
    if len(pairs) < needed:
        raise DatasetError(
            f"{folder}: {len(pairs)} image(s), but quantising needs at least {needed} "
            f"({calibration_images} to calibrate, {MIN_HELD_OUT} held out for the gate); add images"
        )
    loaded = [load_pair(image, mask, predictor.input) for image, mask in pairs]
    return Split([image for image, _ in loaded[:calibration_images]], loaded[calibration_images:])


class _Images:
    """A `CalibrationDataReader`: one padded, normalised image at a time under the graph's input.

    Defined as a plain class (duck-typed by ONNX Runtime) so that importing this module does not
    import onnxruntime.quantization.
    """

    def __init__(self, input_name: str, images: Sequence[np.ndarray], predictor: Predictor):
        self._batches: Iterator[np.ndarray] = (
            predictor.pad_to_grid(torch.from_numpy(np.ascontiguousarray(image))[None])[0].numpy()
            for image in images
        )
        self.input_name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next image as the graph's input, or None when all were given."""
        batch = next(self._batches, None)
        return None if batch is None else {self.input_name: batch}


def quantize_onnx(
    fp32: Path,
    out: Path,
    images: Sequence[np.ndarray],
    predictor: Predictor,
    settings: QuantSettings = QuantSettings(),
) -> Path:
    """Write `fp32` quantised by `settings`, calibrated on `images`, to `out` (atomically)."""
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as error:
        raise QuantizationError(
            f"quantising needs onnxruntime and onnx ({error}); pip install 'unet-service[onnx]'"
        ) from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    input_name = ort.InferenceSession(str(fp32), options).get_inputs()[0].name
    reader = _Images(input_name, images, predictor)
    CalibrationDataReader.register(_Images)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=out.parent) as work:
        prepared, written = Path(work) / "prepared.onnx", Path(work) / "int8.onnx"
        # Shape inference and constant folding first, as ONNX Runtime's guide asks.
        try:
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared),
                str(written),
                reader,
                quant_format=getattr(QuantFormat, settings.quant_format),
                per_channel=settings.per_channel,
                reduce_range=settings.reduce_range,
                weight_type=getattr(QuantType, settings.weight_type),
                activation_type=getattr(QuantType, settings.activation_type),
                calibrate_method=getattr(CalibrationMethod, settings.calibrate_method),
            )
        except Exception as error:  # ONNX Runtime raises its own types for a graph it rejects
            text = " ".join(str(error).split())[:200] or type(error).__name__
            raise QuantizationError(
                f"{fp32.name}: ONNX Runtime could not quantise it ({text})"
            ) from None
        written.replace(out)
    return out


def _format(source: Path) -> str:
    """The source's format, if it is one this module quantises: `native` or `onnx`."""
    fmt = load_card(source).source.format
    if fmt not in ("native", "onnx"):
        raise QuantizationError(
            f"{source}: a {fmt} model cannot be quantised; give a native checkpoint or an ONNX card"
        )
    return fmt


@contextlib.contextmanager
def _fp32_card(source: Path, work: Path) -> Iterator[Path]:
    """The fp32 ONNX card of `source`: an ONNX card as it is, a native checkpoint exported."""
    if _format(source) == "onnx":
        yield source.with_suffix(".json") if source.suffix == ".safetensors" else source
        return
    from model.cards.export import export

    try:
        yield export(source, "onnx", work / f"{source.stem}.onnx")
    except ExportError as error:
        raise QuantizationError(f"{source}: cannot be exported to ONNX ({error})") from None


def quantize_card(
    source: Path,
    data: Path,
    out: Path | None = None,
    *,
    accept_loss: bool = False,
    settings: QuantSettings = QuantSettings(),
) -> tuple[Path | None, GateReport]:
    """`unet quantize`: (the INT8 card written, or None when refused, and the gate's figures).

    `out` is the INT8 ONNX file (default `NAME-int8.onnx` beside the source); its card is the
    same path with `.json`. Nothing is written when the gate refuses, unless `accept_loss`.
    """
    source = Path(source)
    out = out or source.with_name(f"{source.stem}-int8.onnx")
    _format(source)
    reference = load_predictor(source)
    split = split_folder(data, reference, settings.calibration_images)
    with tempfile.TemporaryDirectory(prefix="unet-quantize-") as tmp:
        work = Path(tmp)
        with _fp32_card(source, work) as fp32_card:
            fp32_path = load_card(fp32_card).source_path(fp32_card)
            card = json.loads(fp32_card.read_text())
            int8_file = work / out.name
            quantize_onnx(fp32_path, int8_file, split.calibration, reference, settings)
        card["source"] = {"format": "onnx", "path": out.name}
        staged = work / f"{out.stem}.card.json"
        staged.write_text(json.dumps(card, indent=2) + "\n")
        int8_card = int8_file.with_suffix(".json")
        staged.replace(int8_card)
        quantized = load_predictor(int8_card)
        report = evaluate_gate(reference, quantized, split.held_out)
        card["quantization"] = settings.to_dict() | {
            "data": str(data),
            "held_out_images": len(split.held_out),
            "gate": report.to_dict(),
            "accepted_loss": accept_loss and not report.passed,
        }
        if not report.passed and not accept_loss:
            return None, report
        int8_card.write_text(json.dumps(card, indent=2) + "\n")
        out.parent.mkdir(parents=True, exist_ok=True)
        _move(int8_file, out)
        card_path = out.with_suffix(".json")
        _move(int8_card, card_path)
    return card_path, report


def _move(src: Path, dst: Path) -> None:
    """Move `src` to `dst`, atomically where both lie on one file system."""
    try:
        os.replace(src, dst)
    except OSError:
        shutil.move(str(src), str(dst))
