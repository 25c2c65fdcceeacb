"""PLACEHOLDER: replaced by the diagnose implementation."""
CAMS = {"gradcam": None, "gradcampp": None, "layercam": None}
