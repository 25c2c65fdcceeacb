"""The model-randomisation sanity check (Adebayo et al., NeurIPS 2018, "Sanity Checks for
Saliency Maps"): do the maps depend on what the model learned?

On a copy of the model, its top-level children that hold parameters are re-initialised one
after the other from the output end down (cascading: after step s the top s of them are
random, the rest trained). After each step the maps of the same images and targets are
computed again and compared with the trained model's maps by Spearman's rank correlation,
image by image. A map that still ranks the pixels as before once every weight is random
(mean correlation >= :data:`FLAG_RHO` at the last step) does not depend on what the model
learned (an edge detector would pass), and is flagged.

Correlations: average ranks for ties (CAMs after a ReLU hold many zeros). An image whose
trained-model map is flat (constant) has no ranking to keep: NaN, left out of the mean. A map
that turns flat after randomising has lost the ranking: correlation 0.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

FLAG_RHO = 0.5  # mean rank correlation at the last step at or above which a map is flagged

Maps = dict[tuple[str, str], torch.Tensor]  # (method, layer) -> [N,H,W]


def cascade(model: nn.Module) -> list[str]:
    """Top-level children that hold parameters, output end first (definition order
    reversed): the order in which they are re-initialised."""
    return [name for name, m in reversed(list(model.named_children()))
            if next(m.parameters(), None) is not None]


def reinitialise(module: nn.Module) -> None:
    """Fresh default initialisation of every submodule that defines ``reset_parameters``
    (convolutions, linear layers, norm layers with their running statistics)."""
    for m in module.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()


def average_ranks(v: torch.Tensor) -> torch.Tensor:
    """[N,P] -> [N,P] float64 ranks 1..P along each row, ties given their average rank."""
    v = v.double().contiguous()
    s = v.sort(dim=1).values
    lo = torch.searchsorted(s, v, right=False)  # values strictly below
    hi = torch.searchsorted(s, v, right=True)  # values at or below
    return (lo + hi + 1).double() / 2  # mean of the 1-based positions lo+1 .. hi


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rho of each pair of rows of ``a``, ``b`` [N,...] (flattened): the Pearson
    correlation of their average ranks. [N] float64; NaN where a row is constant."""
    ra, rb = average_ranks(a.flatten(1)), average_ranks(b.flatten(1))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    den = (ra.square().sum(1) * rb.square().sum(1)).sqrt()
    return torch.where(den > 0, (ra * rb).sum(1) / torch.where(den > 0, den, 1.0),
                       torch.full_like(den, float("nan")))


def _flat(maps: torch.Tensor) -> torch.Tensor:
    """[N] bool: the map is constant (no ranking)."""
    f = maps.flatten(1)
    return f.amax(1) == f.amin(1)


@dataclass
class Sanity:
    """The check's outcome: the randomised modules per step, and per (method, layer) the
    per-image rank correlations [steps, N] and the first image's map after each step."""

    steps: list[str]  # module re-initialised at each step (cumulative)
    rho: dict[tuple[str, str], torch.Tensor]  # [S,N] float64, CPU
    first_maps: dict[tuple[str, str], torch.Tensor]  # [S,H,W] float32, CPU (image 0)

    def mean_rho(self, key: tuple[str, str]) -> list[float | None]:
        """Mean correlation over images per step (None where no image has a ranking)."""
        r = self.rho[key]
        ok = ~torch.isnan(r)
        return [float(r[s][ok[s]].mean()) if bool(ok[s].any()) else None
                for s in range(r.shape[0])]

    def rows(self) -> list[dict]:
        out = []
        for key in self.rho:
            means = self.mean_rho(key)
            last = means[-1] if means else None
            out.append({"method": key[0], "layer": key[1], "steps": self.steps,
                        "rho": means, "final_rho": last,
                        "flagged": bool(last is not None and last >= FLAG_RHO)})
        return out


def randomisation_check(model: nn.Module, maps_fn: Callable[[nn.Module], Maps],
                        trained: Maps, *, seed: int = 0) -> Sanity:
    """Cascading randomisation of a copy of ``model`` (``model`` itself is not touched).

    ``maps_fn(m)`` gives the maps of the fixed images and targets under model ``m``, keyed as
    ``trained`` (the maps of the trained model). Re-initialisation draws from torch's global
    generator seeded with ``seed`` inside a forked RNG state, so the run's generators are left
    as they were and the check is reproducible."""
    names = cascade(model)
    work = copy.deepcopy(model)
    param = next(model.parameters(), None)
    dev = param.device if param is not None else torch.device("cpu")
    flat0 = {k: _flat(v).cpu() for k, v in trained.items()}
    rho: dict[tuple[str, str], list[torch.Tensor]] = {k: [] for k in trained}
    first: dict[tuple[str, str], list[torch.Tensor]] = {k: [] for k in trained}
    children = dict(work.named_children())
    devices = [dev] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for name in names:
            reinitialise(children[name])
            now = maps_fn(work)
            for k, before in trained.items():
                after = now[k]
                r = rank_correlation(before, after).cpu()  # [N]
                r = torch.where(_flat(after).cpu() & ~flat0[k], 0.0, r)  # lost its ranking
                r = torch.where(flat0[k], float("nan"), r)  # never had one
                rho[k].append(r)
                first[k].append(after[0].float().cpu())
    del work
    return Sanity(names, {k: torch.stack(v) for k, v in rho.items()},
                  {k: torch.stack(v) for k, v in first.items()})
