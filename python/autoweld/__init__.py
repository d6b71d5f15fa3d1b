"""AutoWeld: unsupervised visual defect inspection of weld seams.

Training (``autoweld.train``) uses PyTorch; the runtime (``autoweld.runtime``), the bundle
reader (``autoweld.bundle``) and the quality ledger (``autoweld.quality``) never import torch.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("autoweld")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
