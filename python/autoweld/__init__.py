"""AutoWeld: unsupervised visual defect inspection of weld seams.

Training (``autoweld.train``) uses PyTorch; the runtime (``autoweld.runtime``), the bundle
reader (``autoweld.bundle``) and the quality ledger (``autoweld.quality``) never import torch.
"""

#: The package version, as pyproject.toml's ``[project] version`` says (tests/test_package.py
#: checks they agree, and agree with the installed metadata and the extension). Written here
#: rather than read with ``importlib.metadata``, whose import alone costs a station's cold
#: start 20-35 ms.
__version__ = "0.1.0"

__all__ = ["__version__"]
