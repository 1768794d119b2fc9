"""The network: each activation x head builds, trains, round-trips and keeps its range."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

import model
from model.errors import CheckpointError
from model.network.activations import ACTIVATIONS
from model.network.heads import HEADS, head_range
from model.network.unet import UNet, UNetConfig
from model.training.losses import head_loss

COMBINATIONS = list(itertools.product(ACTIVATIONS, HEADS))


def small_config(activation: str, head: str) -> UNetConfig:
    return UNetConfig(
        depth=2,
        base_channels=4,
        activation=activation,
        head=head,
        out_channels=2 if head == "softmax" else 1,
    )


@pytest.mark.slow
@pytest.mark.parametrize(("activation", "head"), COMBINATIONS)
def test_every_combination_trains_saves_loads_and_keeps_its_range(
    activation: str, head: str, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    network = UNet(small_config(activation, head))
    images = torch.rand(2, 1, 16, 16)
    masks = (images > 0.5).float()
    optimiser = torch.optim.SGD(network.parameters(), lr=0.1)
    before = [p.detach().clone() for p in network.parameters()]

    loss = head_loss(head, network.logits(images), masks, dice_weight=0.5)
    loss.backward()
    optimiser.step()

    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, network.parameters(), strict=True))
    model.save(network.eval(), tmp_path / "net")
    loaded = model.load(tmp_path / "net.json")
    assert not loaded.training
    # Scale the input far outside the training range so unbounded heads show unbounded values.
    probe = torch.rand(3, 1, 21, 13) * 50 - 25
    with torch.inference_mode():
        output = loaded(probe)
        assert torch.equal(output, network(probe))
    low, high = head_range(head)
    assert output.shape == (3, network.config.out_channels, 21, 13)
    assert output.min() >= low and output.max() <= high
    if head == "softmax":
        assert torch.allclose(output.sum(dim=1), torch.ones(3, 21, 13))


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (7, 9), (16, 16), (33, 65)])
def test_any_input_size_comes_back_the_same_size(size: tuple[int, int]) -> None:
    network = UNet(UNetConfig(depth=3, base_channels=4)).eval()
    with torch.inference_mode():
        assert network(torch.rand(1, 1, *size)).shape == (1, 1, *size)


def test_padding_does_not_shift_the_output() -> None:
    """Cropping back after padding must return the pixels that correspond to the input."""
    torch.manual_seed(0)
    network = UNet(UNetConfig(depth=2, base_channels=4, norm="none")).eval()
    image = torch.rand(1, 1, 32, 32)
    with torch.inference_mode():
        whole = network(image)
        padded_view = network(image[..., :30, :30])
    # Away from the border the receptive field sees the same pixels either way.
    assert torch.allclose(whole[..., 8:20, 8:20], padded_view[..., 8:20, 8:20], atol=1e-2)


@pytest.mark.parametrize("size", [(32, 32), (30, 27), (3, 5)])
def test_pad_to_grid_is_the_padding_logits_uses(size: tuple[int, int]) -> None:
    """The public padding puts the input at the returned offset of a grid-sized tensor."""
    torch.manual_seed(0)
    network = UNet(UNetConfig(depth=2, base_channels=4, norm="none")).eval()
    image = torch.rand(1, 1, *size)
    padded, (top, left) = network.pad_to_grid(image)
    height, width = size
    assert padded.shape[-2] % network.multiple == 0 and padded.shape[-1] % network.multiple == 0
    assert torch.equal(padded[..., top : top + height, left : left + width], image)
    with torch.inference_mode():
        # `logits` of the image is `logits` of the padded tensor cropped at the offset.
        cropped = network.logits(padded)[..., top : top + height, left : left + width]
        assert torch.equal(network.logits(image), cropped)


@pytest.mark.parametrize("norm", ["batch", "instance", "group", "none"])
def test_every_normalisation_builds(norm: str) -> None:
    network = UNet(UNetConfig(depth=2, base_channels=8, norm=norm)).eval()
    with torch.inference_mode():
        assert network(torch.rand(1, 1, 8, 8)).shape == (1, 1, 8, 8)


def test_wrong_channel_count_is_a_clear_error() -> None:
    network = UNet(UNetConfig(depth=1, base_channels=2))
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 1, H, W\)"):
        network(torch.rand(1, 3, 8, 8))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("activation", "tanh", "unknown activation"),
        ("head", "softplus", "unknown head"),
        ("norm", "layer", "unknown normalisation"),
        ("depth", 0, "depth must be at least 1"),
    ],
)
def test_bad_architecture_is_rejected(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        UNetConfig(**{field: value})  # type: ignore[arg-type]


def test_softmax_needs_two_channels() -> None:
    with pytest.raises(ValueError, match="softmax"):
        UNetConfig(head="softmax", out_channels=1)


def saved(tmp_path: Path) -> Path:
    return model.save(UNet(UNetConfig(depth=1, base_channels=2)), tmp_path / "ck")


def test_missing_json_names_the_file(tmp_path: Path) -> None:
    weights = saved(tmp_path)
    weights.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match=r"ck\.json: missing"):
        model.load(weights)


def test_missing_weights_names_the_file(tmp_path: Path) -> None:
    weights = saved(tmp_path)
    weights.unlink()
    with pytest.raises(CheckpointError, match=r"ck\.safetensors: missing"):
        model.load(weights.with_suffix(".json"))


def test_wrong_tensor_shapes_are_named(tmp_path: Path) -> None:
    weights = saved(tmp_path)
    meta_path = weights.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["architecture"]["base_channels"] = 3
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"tensor '.*' has shape .* needs"):
        model.load(weights)


def test_corrupt_weights_and_json_are_named(tmp_path: Path) -> None:
    weights = saved(tmp_path)
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        model.load(weights)
    weights.with_suffix(".json").write_text("{broken")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        model.load(weights)


def test_digest_changes_with_either_file(tmp_path: Path) -> None:
    weights = saved(tmp_path)
    before = model.checkpoint_digest(weights)
    meta_path = weights.with_suffix(".json")
    meta_path.write_text(meta_path.read_text().replace('"training": {}', '"training": {"x": 1}'))
    assert model.checkpoint_digest(weights) != before
