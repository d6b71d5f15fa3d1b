"""Training in PyTorch: backbones, PatchCore and the other model heads, calibration."""
