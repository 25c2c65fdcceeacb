"""Child processes of the local engine: the cores and GPUs they share out, and each one's
environment (one torch thread count, one GPU per job slot). Used by the grid's points
(:mod:`classlab.grid.local`) and a tuned grid's trials (:mod:`classlab.grid.tune`)."""

from __future__ import annotations

import os


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def gpu_ids() -> list[str]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES names them."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() \
        else []


def child_env(slot: int, threads: int, gpus: list[str], device: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               MPLBACKEND="Agg")
    # One device per job slot; an explicit cuda:N or cpu in the config is left alone.
    if gpus and device in ("auto", "cuda"):
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    return env
