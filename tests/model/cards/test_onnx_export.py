"""The ONNX export of a native U-Net: torch's logits at any grid-aligned size, atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model import UNet, UNetConfig
from model.cards.to_onnx import INPUT_NAME, cached_export, export_onnx
from model.errors import ExportError


def network(**config: Any) -> UNet:
    """A random-weight U-Net; the export must not depend on the weights' values."""
    torch.manual_seed(0)
    return UNet(UNetConfig(depth=2, base_channels=8, **config)).eval()


@pytest.mark.parametrize(
    "config",
    [{}, {"in_channels": 3, "out_channels": 2, "head": "softmax", "norm": "group"}],
    ids=["grey-sigmoid", "rgb-softmax"],
)
def test_the_exported_graph_gives_torchs_logits_for_any_batch_and_grid_size(
    tmp_path: Path, config: dict[str, Any]
) -> None:
    net = network(**config)
    session = ort.InferenceSession(str(export_onnx(net, tmp_path / "m.onnx")))
    for batch, height, width in [(1, 64, 64), (3, 24, 40), (2, 8, 136)]:  # multiples of 4
        x = torch.rand(batch, net.config.in_channels, height, width)
        (got,) = session.run(None, {INPUT_NAME: x.numpy()})
        with torch.inference_mode():
            expected = net.body(x).numpy()
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-4


def test_a_failed_export_raises_export_error_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(torch.onnx, "export", unsupported)
    with pytest.raises(ExportError, match="unsupported operator"):
        cached_export(network(), "abc", tmp_path / "onnx")
    assert not list((tmp_path / "onnx").iterdir())


def test_the_cache_exports_a_digest_once(tmp_path: Path) -> None:
    first, made = cached_export(network(), "abc", tmp_path)
    again, made_again = cached_export(network(), "abc", tmp_path)
    assert (made, made_again) == (True, False) and first == again == tmp_path / "abc.onnx"
    assert [p.name for p in tmp_path.iterdir()] == ["abc.onnx"]  # no temporary file left
