"""The one predictor interface every model source runs behind.

Batching, tiling, calibration and every endpoint see only this: `logits(batch)` returns the
network's output map (N, K, H, W) at the batch's own size (pre-head values for a network that
emits logits, its own map otherwise), and `foreground` turns it into the served map and the
order-keeping scores the calibration bins; `class_maps` does the same for every class of a
multilabel or multiclass model, in class order. A source only says how to run its network on a batch
whose sides are multiples of `pad_multiple` (`run_padded`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch

from model.cards.card import ModelCard
from model.data.normalize import ImageInput
from model.errors import CardError
from model.network.heads import head_range, make_head
from model.network.padding import pad_to_multiple


class Predictor(ABC):
    """A network from any source, with its card's input, output and head."""

    def __init__(self, card: ModelCard, card_path: Path, device: torch.device) -> None:
        self.card = card
        self.card_path = card_path
        self.device = device
        self.out_channels = 0  # known after `probe`
        self._head = make_head(card.output.head, 2) if card.output.emits == "logits" else None

    @property
    def head(self) -> str:
        """The served head: sigmoid, relu, ... for logits; `probabilities` or `scores` else."""
        return self.card.output.served_head

    @property
    def channel(self) -> int:
        """The foreground channel of the network's output (multi-class: the first class's)."""
        return self.card.output.first_channel

    @property
    def mode(self) -> str:
        """`binary`, `multilabel` or `multiclass` (the card's `output.mode`)."""
        return self.card.output.mode

    @property
    def classes(self) -> tuple[str, ...]:
        """The K foreground class names in channel order; empty for a binary model."""
        return self.card.output.class_names

    @property
    def in_channels(self) -> int:
        """Channels the network takes."""
        return self.card.input.channels

    @property
    def input(self) -> ImageInput:
        """How a decoded image becomes the network's input (channels, order, normalisation)."""
        return self.card.input

    @property
    def multiple(self) -> int:
        """Input sides the network needs are multiples of this; `logits` pads and crops back."""
        return self.card.pad_multiple

    @abstractmethod
    def run_padded(self, batch: torch.Tensor) -> torch.Tensor:
        """The network's raw output (N, K, H, W) for `batch` whose sides are multiples."""

    def channels_last(self) -> None:  # noqa: B027 (a hook: most sources have no layout to set)
        """Prefer the channels-last memory layout where the source can use it."""

    def pad_to_grid(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """`x` padded to the network's multiple, and the (top, left) offset to crop back at."""
        return pad_to_multiple(x, self.multiple)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """The network's output map (N, K, H, W) for `batch` (N, C, H, W) of any H and W."""
        height, width = batch.shape[-2:]
        padded, (top, left) = self.pad_to_grid(batch)
        out = self.run_padded(padded)
        if isinstance(out, tuple | list):  # deep supervision: the first map is the final one
            out = out[0]
        if not isinstance(out, torch.Tensor) or out.ndim != 4:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise CardError(
                f"{self.card_path}: the network returned {shape} for input "
                f"{tuple(padded.shape)}; it must return one (N, K, H, W) map"
            )
        if out.shape[-2:] != padded.shape[-2:]:
            raise CardError(
                f"{self.card_path}: the network's output is {tuple(out.shape[-2:])} px for an "
                f"input of {tuple(padded.shape[-2:])} px; serve a network whose output has its "
                "input's size, or set pad_multiple to the factor its sides need"
            )
        return out[..., top : top + height, left : left + width]

    def foreground(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(served map, order-keeping scores), each (N, H, W), for raw output (N, K, H, W)."""
        channel = self.channel
        if self._head is None:  # the network's own map: served as it is
            return raw[:, channel], raw[:, channel]
        output = self._head(raw)[:, channel]
        if self.card.output.head == "softmax":
            # The logit of the foreground's softmax share: its logit against all the others'.
            others = torch.cat([raw[:, :channel], raw[:, channel + 1 :]], dim=1)
            return output, raw[:, channel] - torch.logsumexp(others, dim=1)
        return output, raw[:, channel]

    def class_maps(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(served maps, order-keeping scores), each (N, K, H, W) in class order, for raw output.

        Multiclass: the softmax over background and classes, each class's share; multilabel:
        each class channel through the head. Scores are what `foreground` gives per class (the
        logit of a softmax share, a sigmoid's logit). A binary model gives its one map as K = 1.
        """
        if self.mode == "binary":
            served, scores = self.foreground(raw)
            return served[:, None], scores[:, None]
        channels = list(self.card.output.class_channels)
        if self._head is None:
            return raw[:, channels], raw[:, channels]
        served = self._head(raw)[:, channels]
        if self.mode == "multiclass":
            # Each class's share against all other channels, background included, as a logit.
            logs = []
            for channel in channels:
                others = torch.cat([raw[:, :channel], raw[:, channel + 1 :]], dim=1)
                logs.append(raw[:, channel] - torch.logsumexp(others, dim=1))
            return served, torch.stack(logs, dim=1)
        return served, raw[:, channels]

    @torch.inference_mode()
    def probe(self) -> np.ndarray:
        """Passes on a random and a blank image of an awkward size; checks them, returns a map.

        Catches at load time what would otherwise fail every request: a wrong input channel
        count, an output of another size, a foreground channel the output lacks, an output
        that is not floating point, not finite, or outside the range the card promises.
        """
        side = max(self.multiple, 8)
        height, width = 2 * side + 5, 3 * side + 3  # not multiples: exercises the padding
        generator = torch.Generator().manual_seed(0)
        images = {
            "random": torch.rand((1, self.in_channels, height, width), generator=generator),
            "blank": torch.zeros((1, self.in_channels, height, width)),
        }
        first: np.ndarray | None = None
        for kind, image in images.items():
            raw = self._probe_pass(image, kind)
            if first is None:
                first = raw[0, self.channel].cpu().numpy()
        assert first is not None
        return first

    def _probe_pass(self, image: torch.Tensor, kind: str) -> torch.Tensor:
        """One checked pass on `image`; its float32 output (N, K, H, W)."""
        height, width = image.shape[-2:]
        what = f"a {self.in_channels}-channel {width} x {height} {kind} image"
        try:
            raw = self.logits(image.to(self.device))
        except CardError:
            raise
        except Exception as error:  # whatever the library raises, the card is what to fix
            message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise CardError(
                f"{self.card_path}: a test pass on {what} failed ({message[:300]}); check "
                "input.channels, pad_multiple and the network file"
            ) from None
        if not raw.is_floating_point():
            raise CardError(
                f"{self.card_path}: the network outputs {str(raw.dtype).removeprefix('torch.')}, "
                "not floating-point scores; serve a network whose output is float"
            )
        raw = raw.float()
        channels = raw.shape[1]
        if self.channel >= channels:
            raise CardError(
                f"{self.card_path}: output.channel is {self.channel} but the network emits "
                f"{channels} channel(s); give a channel from 0 to {channels - 1}"
            )
        softmax = self.card.output.emits == "logits" and self.card.output.head == "softmax"
        if softmax and channels < 2:
            raise CardError(
                f"{self.card_path}: the softmax head needs 2 or more output channels, the "
                "network emits 1; use head sigmoid"
            )
        wanted = self.card.output.n_channels
        if wanted is not None and channels != wanted:
            layout = "background first, then" if self.mode == "multiclass" else "one per class:"
            raise CardError(
                f"{self.card_path}: output.classes names {len(self.classes)} class(es), so a "
                f"{self.mode} network must emit {wanted} channels ({layout} "
                f"{', '.join(self.classes)}), but it emits {channels}; fix output.classes"
            )
        self.out_channels = channels
        self._check_values(raw, what)
        return raw

    def _check_values(self, raw: torch.Tensor, what: str) -> None:
        """The served map on a probe image must be finite and inside the head's range."""
        served, scores = self.class_maps(raw)
        bad = int((~torch.isfinite(raw[:, list(self.card.output.class_channels)])).sum())
        if bad or not bool(torch.isfinite(served).all()) or not bool(torch.isfinite(scores).all()):
            raise CardError(
                f"{self.card_path}: the network's output on {what} has NaN or infinite values; "
                "fix the network (or the card's normalisation) so that it outputs finite numbers"
            )
        low, high = head_range(self.head)
        found = (float(served.min()), float(served.max()))
        if found[0] < low or found[1] > high:
            raise CardError(
                f"{self.card_path}: the served output on {what} lies in [{found[0]:.4g}, "
                f"{found[1]:.4g}], outside the {self.head} range [{low:g}, {high:g}]; set "
                "output.emits to logits (with a head) or scores"
            )
