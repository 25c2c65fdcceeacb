"""Checkpoints: written atomically, loaded only as tensors and plain containers.

``last.pt`` holds everything a resume needs (see :func:`classlab.run.session.checkpoint_state`);
``test_outputs.pt`` the per-image test outputs of the checkpoint's epoch, so that diagnose
does not run the whole test set through the model a second time.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

import torch

from classlab.rundir.files import atomic_write_bytes


class CheckpointError(RuntimeError):
    """A missing, truncated or corrupted checkpoint (one-line message)."""


def save_checkpoint(path: Path, state: dict) -> None:
    """Serialise to memory first, then write atomically: a failed write leaves the old file."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """``torch.load(weights_only=True)``; any failure becomes one CheckpointError line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint there")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle/zip errors have many types; all mean "unreadable"
        blocked = re.search(r"GLOBAL ([\w.]+)", str(e))
        if isinstance(e, pickle.UnpicklingError) and blocked:
            raise CheckpointError(
                f"{path}: refusing to load a checkpoint holding a Python object "
                f"({blocked.group(1)}); only tensors and plain containers are loaded "
                "(weights_only=True)") from None
        kind = type(e).__name__
        raise CheckpointError(f"{path}: unreadable checkpoint (truncated or corrupted: {kind})") \
            from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{path}: not a classlab checkpoint (no 'model' entry)")
    # Every reader (resume, eval, diagnose) needs these; a wrong type would otherwise surface
    # later as a KeyError/TypeError traceback instead of one line.
    if not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise CheckpointError(f"{path}: not a classlab checkpoint ('model' is not a state dict)")
    for key, tp in (("epoch", int), ("config", dict)):
        if not isinstance(state.get(key), tp):
            raise CheckpointError(f"{path}: not a classlab checkpoint (no valid {key!r} entry)")
    return state


def weight_differences(expected: dict, got: dict) -> list[str]:
    """What keeps ``got`` (a checkpoint's state dict) from loading into a model whose state
    dict is ``expected``: tensors of another shape, missing or unknown, one phrase each
    (``linear.weight: [10, 64] in the checkpoint, [10, 32] in the model``)."""
    def shape(t: torch.Tensor) -> str:
        return str(list(t.shape))

    out = [f"{k}: {shape(v)} in the checkpoint, {shape(expected[k])} in the model"
           for k, v in got.items() if k in expected and v.shape != expected[k].shape]
    out += [f"{k}: missing from the checkpoint" for k in expected if k not in got]
    out += [f"{k}: not in the model" for k in got if k not in expected]
    return out


def check_weights_fit(path: Path, expected: dict, got: dict, model: str) -> None:
    """One-line CheckpointError when the checkpoint ``path``'s weights ``got`` do not fit
    ``model`` (described in words), whose state dict is ``expected``."""
    differ = weight_differences(expected, got)
    if differ:
        more = f"; {len(differ) - 2} more" if len(differ) > 2 else ""
        raise CheckpointError(f"{path}: does not fit {model} ({'; '.join(differ[:2])}{more}); "
                              "it holds another run's network")


def eval_weights(state: dict) -> dict:
    """The weights of a checkpoint that count (evaluated, reported, exported): its EMA copy
    when the run kept one, else the trained model. The rule of
    :attr:`classlab.run.session.Session.eval_model`, for a checkpoint read on its own."""
    return state["ema"] if isinstance(state.get("ema"), dict) else state["model"]


def save_test_outputs(path: Path, epoch: int, probs: torch.Tensor, losses: torch.Tensor,
                      labels: torch.Tensor) -> None:
    """Per-image test outputs of the checkpoint of ``epoch``: probs [N,K] float32 softmax,
    losses [N] per-image cross-entropy, labels [N] int64 (the test set they were scored on,
    so that two runs' outputs can be paired image by image)."""
    save_checkpoint(path, {"epoch": epoch, "probs": probs, "losses": losses,
                           "labels": labels})


def read_test_outputs(path: Path) -> dict | None:
    """``{"epoch", "probs", "losses", "labels"}`` of a test_outputs.pt, None when it is
    absent or damaged (labels may be None in files written before they were stored)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged cache is recomputed, never trusted
        return None
    if not isinstance(state, dict) or state.get("probs") is None or state.get("losses") is None:
        return None
    return {"epoch": state.get("epoch"), "probs": state["probs"], "losses": state["losses"],
            "labels": state.get("labels")}


def load_test_outputs(path: Path, epoch: int | None,
                      n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(probs [N,K], losses [N]) when they belong to checkpoint ``epoch`` and ``n`` images,
    else None (absent, damaged, stale: recomputed by the caller, never trusted)."""
    state = read_test_outputs(path)
    if state is None or state["epoch"] != epoch or len(state["probs"]) != n:
        return None
    return state["probs"], state["losses"]
