"""ONNX networks run with onnxruntime (extra `[onnx]`): smp and other exports land here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from model.cards.card import ModelCard
from model.cards.sources.base import Predictor
from model.cards.sources.extras import require
from model.errors import CardError


class OnnxPredictor(Predictor):
    """An onnxruntime session on the CPU; tensors cross as float32 numpy arrays."""

    def __init__(self, card: ModelCard, card_path: Path, device: torch.device) -> None:
        super().__init__(card, card_path, torch.device("cpu"))
        ort = require("onnxruntime", "onnx", card_path, "onnx")
        path = card.source_path(card_path)
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        # Failures surface as this package's one-line errors; onnxruntime's own log would
        # print a second, lower-level account of the same failure on stderr.
        options.log_severity_level = 4
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # onnxruntime raises its own types for files it cannot read
            raise CardError(
                f"{card_path}: {path.name} is not a loadable ONNX model ({str(error)[:200]}); "
                "export it with torch.onnx.export"
            ) from None
        self.input_name = self.session.get_inputs()[0].name

    def run_padded(self, batch: torch.Tensor) -> torch.Tensor:
        """One session run; the session is thread-safe, so workers may share it."""
        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        (out, *_) = self.session.run(None, {self.input_name: array})
        out = np.asarray(out)
        if out.dtype.kind != "f":  # integers or booleans are not scores: the probe refuses them
            return torch.from_numpy(out)
        return torch.from_numpy(out.astype(np.float32, copy=False))
