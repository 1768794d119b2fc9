"""The inference engine: runs models off the event loop.

This first version runs one image per forward pass in a worker thread; dynamic batching and tiling
of large images build on the same interface.
"""

from __future__ import annotations

import numpy as np
from anyio import to_thread

from model.predict import Prediction, predict
from service.registry import ModelRegistry, ServedModel


class InferenceEngine:
    """Turns decoded images into model outputs without blocking the event loop."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self.ready = False

    async def start(self) -> None:
        """Warm every model up so that the first request is not slow."""
        for served in self.registry:
            warmup = np.zeros((served.in_channels, 64, 64), dtype=np.float32)
            await to_thread.run_sync(predict, served.network, warmup)
        self.ready = True

    async def stop(self) -> None:
        """Stop accepting work."""
        self.ready = False

    async def predict(self, served: ServedModel, image: np.ndarray) -> Prediction:
        """The foreground output and logits of `served` for one (C, H, W) image in [0, 1]."""
        return await to_thread.run_sync(predict, served.network, image)
