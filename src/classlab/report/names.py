"""Display names of config values, shared by the run report and the grid table."""

from __future__ import annotations

from classlab.config.schema import CAM_TITLES

MODEL_NAMES = {"resnet18": "ResNet18", "resnet34": "ResNet34", "fastnet": "FastNet"}
NORM_NAMES = {"bn": "Batch Normalization", "ln": "Layer Normalization",
              "gn": "Group Normalization"}
# the report's settings table: short, with what the layer is
NORM_SHORT = {"bn": "BatchNorm", "ln": "LayerNorm (GroupNorm, 1 group)", "gn": "GroupNorm"}
SCHED_NAMES = {"onecycle": "OneCycleLR", "step": "StepLR", "plateau": "ReduceLROnPlateau",
               "cosine": "Cosine", "linear": "Linear", "none": "Constant"}


def cam_name(method: str) -> str:
    """A CAM method's display name (the vocabulary's), "all methods" for ``all``."""
    return {**CAM_TITLES, "all": "all methods"}.get(method, method)
