"""Where and in what precision the model runs: the device, autocast and fp16's gradient scaler."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from classlab.engine.errors import TrainingError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"train.device={name} but CUDA is not available; use cpu or auto")
    return torch.device(name)


@dataclass
class Amp:
    """Autocast settings plus the gradient scaler that fp16 needs (disabled otherwise)."""

    device_type: str
    precision: str
    scaler: torch.amp.GradScaler = field(repr=False, default=None)

    def __post_init__(self) -> None:
        if self.scaler is None:
            enabled = self.precision == "fp16" and self.device_type == "cuda"
            self.scaler = torch.amp.GradScaler(self.device_type, enabled=enabled)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device_type, dtype=dtype)
