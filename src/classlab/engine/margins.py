"""Per-image training dynamics (``log.data_dynamics``): for every training image and epoch,
from the logits the training step already computed (no extra forward pass):

- the **margin**: logit of the given label minus the largest other logit (Pleiss et al.,
  NeurIPS 2020: its mean over epochs is the area under the margin, AUM);
- the **probability** of the given label (softmax; the data map of Swayamdipta et al.,
  EMNLP 2020: its mean over epochs is the confidence, its standard deviation the variability);
- the **rival**: the class of that largest other logit (what the network would rather say);
- whether it was **right** (argmax = given label; forgetting events of Toneva et al., ICLR
  2019 are right-to-wrong transitions between consecutive epochs).

They describe the *augmented* image the step trained on (crop, flip, ... of that epoch), in
training mode (BatchNorm on batch statistics), before the step's update: exactly what the
loss saw. An image the epoch did not train on (a trailing batch of one image is dropped)
has a NaN margin and probability, rival -1 and is not right.

During an epoch the values of this process's images are kept on the device
(:meth:`ImageDynamics.add`: a few small kernels per step, no synchronisation); at the end of
the epoch the processes of a torchrun job sum their buffers (each image was trained on by
exactly one process, the others hold zeros: the sum is exact), and the epoch becomes one row
of the history, kept compactly: float16 margins and probabilities, int16 rivals, one bit per
image for right. A mid-epoch checkpoint carries the partial epoch (:meth:`partial_state`),
so a resumed run's history is bit-identical to an uninterrupted one's.
"""

from __future__ import annotations

import numpy as np
import torch

from classlab.engine.distributed import Dist

# The file's layout version (data_dynamics.pt, classlab.rundir.datadyn)
VERSION = 1
_FIELDS = ("margin", "prob", "rival", "right", "seen")


class ImageDynamics:
    """The per-image training dynamics of a run: the epoch in progress on the device, the
    finished epochs (on the main process) on the CPU."""

    def __init__(self, n: int, device: torch.device, dist: Dist | None = None) -> None:
        self.n, self.device, self.dist = n, device, dist or Dist()
        self.margin: list[torch.Tensor] = []  # per finished epoch: float16 [N]
        self.prob: list[torch.Tensor] = []  # float16 [N]
        self.rival: list[torch.Tensor] = []  # int16 [N], -1: not trained on that epoch
        self.right: list[np.ndarray] = []  # uint8 [ceil(N/8)], np.packbits little-endian
        self._now = {k: torch.zeros(n, device=device, dtype=dt) for k, dt in
                     zip(_FIELDS, (torch.float32, torch.float32, torch.int64, torch.uint8,
                                   torch.uint8), strict=True)}

    @property
    def epochs(self) -> int:
        return len(self.margin)

    def add(self, idx: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        """One step's images: ``idx`` [B] their rows in the training tensor, ``logits``
        [B,K] of the step's forward pass, ``y`` [B] their given labels."""
        z = logits.detach().float()
        given = z.gather(1, y[:, None])[:, 0]
        other, rival = z.scatter(1, y[:, None], float("-inf")).max(1)
        prob = (given - torch.logsumexp(z, 1)).exp()
        now = self._now
        now["margin"].index_copy_(0, idx, given - other)
        now["prob"].index_copy_(0, idx, prob)
        now["rival"].index_copy_(0, idx, rival)
        now["right"].index_copy_(0, idx, (z.argmax(1) == y).to(torch.uint8))
        now["seen"].index_fill_(0, idx, 1)

    def partial_state(self) -> dict[str, torch.Tensor]:
        """The epoch so far, over every process (a collective call under torchrun), on the
        CPU: what a mid-epoch checkpoint keeps."""
        now = self._now
        if self.dist.world > 1:
            t = torch.stack([now[k].double() for k in _FIELDS])
            torch.distributed.all_reduce(t)
            return {"margin": t[0].float().cpu(), "prob": t[1].float().cpu(),
                    "rival": t[2].long().cpu(), "right": t[3].to(torch.uint8).cpu(),
                    "seen": t[4].to(torch.uint8).cpu()}
        return {k: v.cpu().clone() for k, v in now.items()}

    def load_partial(self, state: dict | None) -> None:
        """Continue an epoch from a mid-epoch checkpoint's :meth:`partial_state` (on one
        process of a torchrun job; the others start from zeros, as the sums need)."""
        if not state:
            return
        for k in _FIELDS:
            v = state.get(k)
            if not isinstance(v, torch.Tensor) or v.shape != (self.n,):
                raise ValueError(f"data dynamics of the interrupted epoch: {k!r} is missing "
                                 "or has another size")
            self._now[k].copy_(v.to(self._now[k].dtype))

    def end_epoch(self) -> None:
        """Close the epoch (a collective call under torchrun): its values join the history
        (main process) and the device buffers start again from zeros."""
        s = self.partial_state()
        if self.dist.main:
            seen = s["seen"].bool()
            nan = torch.tensor(float("nan"))
            self.margin.append(torch.where(seen, s["margin"], nan).half())
            self.prob.append(torch.where(seen, s["prob"], nan).half())
            self.rival.append(torch.where(seen, s["rival"], -1).to(torch.int16))
            self.right.append(np.packbits((s["right"].bool() & seen).numpy(),
                                          bitorder="little"))
        for v in self._now.values():
            v.zero_()

    def load_history(self, record: dict | None, epochs: int) -> None:
        """The first ``epochs`` finished epochs from a data_dynamics.pt ``record`` (a
        resumed run; rows written after its checkpoint are dropped). Epochs the record
        lacks (recording was off then) are NaN rows."""
        have = int(record["margin"].shape[0]) if record else 0
        if record and record["margin"].shape[1] != self.n:
            have = 0  # another training set: nothing of it applies
        for e in range(epochs):
            if e < have:
                self.margin.append(record["margin"][e].clone())
                self.prob.append(record["prob"][e].clone())
                self.rival.append(record["rival"][e].clone())
                self.right.append(record["right"][e].numpy().copy())
            else:
                self.margin.append(torch.full((self.n,), float("nan"), dtype=torch.float16))
                self.prob.append(torch.full((self.n,), float("nan"), dtype=torch.float16))
                self.rival.append(torch.full((self.n,), -1, dtype=torch.int16))
                self.right.append(np.zeros((self.n + 7) // 8, dtype=np.uint8))

    def record(self, index: torch.Tensor, labels: torch.Tensor) -> dict:
        """What data_dynamics.pt holds: ``index`` [N] the training-split index of each row,
        ``labels`` [N] the labels trained on, and the history, one row per epoch."""
        n, e = self.n, self.epochs

        def rows(xs: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
            return torch.stack(xs) if xs else torch.zeros((0, n), dtype=dtype)

        right = (torch.from_numpy(np.stack(self.right)) if self.right
                 else torch.zeros((0, (n + 7) // 8), dtype=torch.uint8))
        return {"version": VERSION, "epochs": e, "images": n, "augmented": True,
                "index": index.detach().cpu().long(), "labels": labels.detach().cpu().long(),
                "margin": rows(self.margin, torch.float16), "prob": rows(self.prob,
                                                                         torch.float16),
                "rival": rows(self.rival, torch.int16), "right": right}
