"""Evaluation: loss and accuracy of a model on uint8 images, optionally with test-time
augmentation (TTA), optionally keeping every image's outputs (for diagnose)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from classlab.engine.amp import Amp
from classlab.engine.batches import Normalizer
from classlab.engine.distributed import Dist


@dataclass
class EvalResult:
    loss: float  # mean per-sample cross-entropy
    acc: float  # percent correct
    n: int
    preds: torch.Tensor | None = None  # [N] int64 (keep_outputs=True)
    probs: torch.Tensor | None = None  # [N, K] float32 softmax
    losses: torch.Tensor | None = None  # [N] per-sample loss


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate ``[N,C,H,W]`` by (dy, dx) pixels, filling with reflected border pixels."""
    p = max(abs(dy), abs(dx))
    padded = F.pad(x, (p, p, p, p), mode="reflect")
    h, w = x.shape[-2:]
    return padded[..., p - dy: p - dy + h, p - dx: p - dx + w]


TTA: dict[str, Callable[[torch.Tensor], list[torch.Tensor]]] = {
    "none": lambda x: [x],
    "flip": lambda x: [x, x.flip(-1)],
    # the image, its mirror, and both shifted one pixel up-left and down-right
    "flip_translate": lambda x: [v for s in (x, _shift(x, 1, 1), _shift(x, -1, -1))
                                 for v in (s, s.flip(-1))],
}


def view_logits(model: nn.Module, xb: torch.Tensor, amp: Amp, tta: str,
                fraction: float = 1.0) -> torch.Tensor:
    """float32 ``[B,K]`` logits of the normalised batch ``xb``, averaged over the ``tta``
    views (the image, its mirror, ...; :data:`TTA`), in ``amp``'s precision.

    ``fraction`` < 1: only the ``ceil(fraction * B)`` images of the batch whose plain view is
    least confident (lowest top softmax probability) get the other views; the rest keep
    their plain logits. Confident images rarely change their answer under TTA, so this keeps
    most of its gain for a fraction of its cost (the 2025 CIFAR-10 speed record re-scores the
    least confident 15%). The choice is made per evaluation batch, so it depends on
    ``train.eval_batch_size`` only through which images share a batch."""
    with amp.autocast():
        if fraction >= 1.0 or tta == "none":
            return torch.stack([model(v).float() for v in TTA[tta](xb)]).mean(0)
        plain = model(xb).float()  # [B, K]
        k = math.ceil(fraction * len(xb))
        unsure = plain.softmax(1).amax(1).topk(k, largest=False).indices  # [k]
        views = TTA[tta](xb[unsure])  # views[0] is the plain view, already scored
        rest = torch.stack([model(v).float() for v in views[1:]]).sum(0)
        out = plain.clone()
        out[unsure] = (plain[unsure] + rest) / len(views)
        return out


@torch.inference_mode()
def predict_logits(model: nn.Module, x: torch.Tensor, *, normalize: Normalizer,
                   batch_size: int, amp: Amp, tta: str = "none",
                   tta_fraction: float = 1.0) -> torch.Tensor:
    """float32 ``[N,K]`` logits (on the CPU) of uint8 images ``x`` (no labels), made exactly
    as :func:`evaluate` makes them: the same normalisation, views, precision and batches."""
    was_training = model.training
    model.eval()
    out = [view_logits(model, normalize(x[idx]), amp, tta, tta_fraction).cpu()
           for idx in torch.arange(len(x), device=x.device).split(batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


@torch.inference_mode()  # no autograd bookkeeping at all (cheaper than no_grad)
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    normalize: Normalizer,
    batch_size: int,
    amp: Amp,
    keep_outputs: bool = False,
    tta: str = "none",
    tta_fraction: float = 1.0,
    dist: Dist = Dist(),
) -> EvalResult:
    """Loss and accuracy of ``model`` on uint8 ``x``, without augmentation, or with test-time
    augmentation ``tta`` (see :data:`TTA`) averaging the logits of several views, for the
    least confident ``tta_fraction`` of each batch (see :func:`view_logits`). Outputs stay
    on the CPU."""
    if len(x) == 0:
        return EvalResult(float("nan"), float("nan"), 0)
    if keep_outputs and dist.world > 1:
        raise ValueError("keep_outputs needs the whole set in one process")
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    preds, probs, losses = [], [], []
    for idx in dist.shard(torch.arange(len(x), device=x.device)).split(batch_size):
        xb, yb = normalize(x[idx]), y[idx]
        logits = view_logits(model, xb, amp, tta, tta_fraction)
        per = F.cross_entropy(logits, yb, reduction="none")
        loss_sum += per.double().sum().item()
        pred = logits.argmax(1)
        correct += int((pred == yb).sum())
        if keep_outputs:
            preds.append(pred.cpu())
            probs.append(logits.softmax(1).cpu())
            losses.append(per.cpu())
    model.train(was_training)
    if dist.world > 1:
        loss_sum, correct = (t.item() for t in dist.sum(torch.tensor(loss_sum, device=x.device),
                                                         torch.tensor(correct, device=x.device)))
    res = EvalResult(loss_sum / len(x), 100.0 * correct / len(x), len(x))
    if keep_outputs:
        res.preds, res.probs, res.losses = torch.cat(preds), torch.cat(probs), torch.cat(losses)
    return res
