"""Training losses matched to each output head."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(
    probabilities: torch.Tensor, target: torch.Tensor, eps: float = 1.0
) -> torch.Tensor:
    """One minus the soft Dice of `probabilities` against the 0/1 `target`, over the batch."""
    intersection = (probabilities * target).sum()
    return 1 - (2 * intersection + eps) / (probabilities.sum() + target.sum() + eps)


def head_loss(
    head: str, logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 0.0
) -> torch.Tensor:
    """The training loss for a model with output head `head`, given its pre-head `logits`.

    Sigmoid, hard-sigmoid and identity heads learn from BCE-with-logits on the logits, which never
    saturates the way a loss on sigmoid outputs does (hard-sigmoid then serves a piecewise-linear
    approximation of the same sigmoid, identity serves the logits). Softmax heads use cross-entropy
    with channel 1 as foreground (a multiclass label image: channel k for label k). A ReLU head
    is a non-negative regressor: it is trained the way such heads are, with mean squared error
    between ReLU(logits) and the 0/1 mask; where a logit is negative its gradient is zero, the
    dead-head hazard the calibration report makes visible.
    """
    if head == "softmax":
        labels = target[:, 0].long()
        loss = F.cross_entropy(logits, labels)
        probabilities = logits.softmax(dim=1)[:, 1:]
        if logits.shape[1] > 2:  # multiclass: Dice over every class's one-hot mask
            target = F.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].float()
    elif head == "relu":
        output = F.relu(logits)
        loss = F.mse_loss(output, target)
        probabilities = output.clamp(max=1.0)
    else:
        loss = F.binary_cross_entropy_with_logits(logits, target)
        probabilities = torch.sigmoid(logits)
    if dice_weight:
        loss = loss + dice_weight * soft_dice_loss(probabilities, target)
    return loss
