"""What v1 answers for an image, to hold v2's answers against, and the images both are given."""

from __future__ import annotations

import io

import httpx
import numpy as np
from PIL import Image

from model.data.synth import generate_pair, pair_rng


def cells(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A synthetic microscopy image, uint8 (height, width)."""
    side = max(height, width)
    return np.ascontiguousarray(generate_pair(pair_rng(4242, seed), side)[0][:height, :width])


def v1(service: str, model: str, data: bytes, name: str = "x.png") -> tuple[np.ndarray, ...]:
    """v1's probabilities (npy), mask (PNG, as 0/1) and threshold for one uploaded file."""
    base = f"http://{service}/v1/models/{model}"
    with httpx.Client(timeout=300) as http:
        scores = http.post(f"{base}/probabilities", files={"image": (name, data)})
        mask = http.post(f"{base}/mask", files={"image": (name, data)})
    assert scores.status_code == mask.status_code == 200, scores.text + mask.text
    threshold = float(mask.headers["x-threshold"])
    plane = np.asarray(Image.open(io.BytesIO(mask.content)))
    return np.load(io.BytesIO(scores.content)), (plane // 255).astype(np.uint8), threshold
