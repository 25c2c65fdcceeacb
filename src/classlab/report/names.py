"""Display names of config values, shared by the run report and the grid table."""

from __future__ import annotations

MODEL_NAMES = {"resnet18": "ResNet18", "resnet34": "ResNet34", "fastnet": "FastNet"}
NORM_NAMES = {"bn": "Batch Normalization", "ln": "Layer Normalization",
              "gn": "Group Normalization"}
# the report's settings table: short, with what the layer is
NORM_SHORT = {"bn": "BatchNorm", "ln": "LayerNorm (GroupNorm, 1 group)", "gn": "GroupNorm"}
SCHED_NAMES = {"onecycle": "OneCycleLR", "step": "StepLR", "plateau": "ReduceLROnPlateau",
               "cosine": "Cosine", "linear": "Linear", "none": "Constant"}
# the same as classlab.diagnose.cams.CAMS[...].title (tests/test_cams_methods.py checks it)
CAM_NAMES = {"eigencam": "Eigen-CAM", "gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++",
             "hirescam": "HiResCAM", "layercam": "LayerCAM", "scorecam": "Score-CAM",
             "xgradcam": "XGrad-CAM", "all": "all methods"}


def cam_name(method: str) -> str:
    return CAM_NAMES.get(method, method)
