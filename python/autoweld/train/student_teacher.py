"""Student-teacher head in the manner of EfficientAD (Batzner et al., 2024), shrunk for CPU.

- **Teacher**: the frozen backbone's two taps aggregated as PatchCore aggregates them, at the
  shallower (by default stride-8) tap's h x w, standardised with the fit set's per-channel mean and std. There is no
  distilled teacher offline, so the pretrained backbone plays that part directly.
- **Student**: a small patch-description network (PDN) on the image — four convolutions with
  average pooling, stride 8 overall — with 2C output channels. The first C regress the teacher
  with the hard-feature loss (mean of the squared errors at or above their 0.999-quantile); the
  second C regress the autoencoder's output.
- **Autoencoder**: strided convolutions down to a 1x1 bottleneck, bilinear upsampling + convs back
  to the teacher's h x w and C channels; it regresses the teacher. Because everything passes the
  bottleneck it models the global layout, so its disagreement with the student (which sees only a
  local patch) catches logical anomalies.
- **Maps**: local = mean over channels of (teacher - student[:C])^2, global = mean over channels of
  (ae - student[C:])^2, each mapped linearly so that its q_a = 0.9 and q_b = 0.995 quantiles on the
  held-out normal validation images land at 0 and 0.1 (as in the paper); the head's output is
  0.5 * local + 0.5 * global, ``[N, h, w]``; the image score is its maximum.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from autoweld.train.feature_maps import (
    aggregate_taps,
    batch_order,
    channel_statistics,
    collect_features,
)
from autoweld.train.heads import ExportHead, HeadContext, register_head, settings_from_mapping

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudentTeacherConfig:
    """Training settings of the student-teacher head (recipe section ``[student_teacher]``)."""

    steps: int = 300
    batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    hard_quantile: float = 0.999
    student_channels: int = 64
    ae_channels: int = 32
    ae_latent: int = 64
    quantile_a: float = 0.9
    quantile_b: float = 0.995

    def __post_init__(self) -> None:
        for field in ("steps", "batch_size", "student_channels", "ae_channels", "ae_latent"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"student_teacher.{field} must be a positive int, got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(
                f"student_teacher.learning_rate must be > 0, got {self.learning_rate!r}"
            )
        if not self.weight_decay >= 0:
            raise ValueError(
                f"student_teacher.weight_decay must be >= 0, got {self.weight_decay!r}"
            )
        if not 0.0 <= self.hard_quantile < 1.0:
            raise ValueError(
                f"student_teacher.hard_quantile must be in [0, 1), got {self.hard_quantile!r}"
            )
        if not 0.0 <= self.quantile_a < self.quantile_b <= 1.0:
            raise ValueError(
                "student_teacher.quantile_a < quantile_b must both lie in [0, 1], got "
                f"{self.quantile_a!r}, {self.quantile_b!r}"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> StudentTeacherConfig:
        return settings_from_mapping(cls, values, "student_teacher")


class PatchDescriptionNetwork(nn.Module):
    """The student: a small PDN, stride 8 (resized to the teacher grid if that differs).

    Receptive field about 50 px at stride 8 — a local patch descriptor, like EfficientAD's small
    PDN, with the first convolution strided so the full-resolution work stays cheap on a CPU.
    """

    def __init__(
        self, out_channels: int, image_size: int, output_size: tuple[int, int], width: int = 64
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width // 2, kernel_size=4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Conv2d(width // 2, width, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Conv2d(width, 2 * width, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, 2 * width, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, out_channels, kernel_size=1),
        )
        self.output_size = (int(output_size[0]), int(output_size[1]))
        # the body gives floor(S/8); a SAME-padded backbone tap can be one larger. Decided once
        # here, so the exported graph holds no shape test.
        self.resize = (image_size // 8, image_size // 8) != self.output_size

    def forward(self, image: Tensor) -> Tensor:
        out = self.body(image)
        if self.resize:
            out = F.interpolate(out, size=self.output_size, mode="bilinear", align_corners=False)
        return out


class ImageAutoencoder(nn.Module):
    """EfficientAD's autoencoder, shrunk: image -> 1x1 bottleneck -> ``[N, out_channels, h, w]``."""

    def __init__(
        self,
        image_size: int,
        feature_size: tuple[int, int],
        out_channels: int,
        width: int = 32,
        latent: int = 64,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = 3, image_size
        # halve until the map is 8 px or less; then one conv over the whole map -> 1x1 bottleneck
        while size > 8:
            out = min(2 * width, width * (1 + len(layers) // 4))
            layers += [nn.Conv2d(channels, out, kernel_size=4, stride=2, padding=1), nn.ReLU()]
            channels, size = out, size // 2
        self.encoder = nn.Sequential(*layers, nn.Conv2d(channels, latent, kernel_size=size))
        h, w = feature_size
        self.sizes = [
            (max(1, math.ceil(h / 4)), max(1, math.ceil(w / 4))),
            (max(1, math.ceil(h / 2)), max(1, math.ceil(w / 2))),
            (h, w),
        ]
        self.decoder = nn.ModuleList(
            [
                nn.Conv2d(latent, 2 * width, kernel_size=3, padding=1),
                nn.Conv2d(2 * width, 2 * width, kernel_size=3, padding=1),
                nn.Conv2d(2 * width, 2 * width, kernel_size=3, padding=1),
            ]
        )
        self.head = nn.Conv2d(2 * width, out_channels, kernel_size=3, padding=1)

    def forward(self, image: Tensor) -> Tensor:
        x = self.encoder(image)
        for size, conv in zip(self.sizes, self.decoder, strict=True):
            x = F.relu(conv(F.interpolate(x, size=size, mode="bilinear", align_corners=False)))
        return self.head(x)


def hard_feature_loss(teacher: Tensor, student: Tensor, quantile: float) -> Tensor:
    """Mean of the squared errors at or above their ``quantile`` (EfficientAD's hard loss).

    Written with ``topk`` instead of ``torch.quantile`` so it has no input-size limit: the top
    ``ceil((1 - q) * n)`` squared errors are exactly those at or above the q-quantile.
    """
    squared = (teacher - student).pow(2).flatten()
    keep = max(1, math.ceil((1.0 - quantile) * squared.numel()))
    return squared.topk(keep, sorted=False).values.mean()


class StudentTeacherHead(ExportHead):
    """Map head ``student_teacher``: 0.5 * normalised local + 0.5 * normalised global map."""

    name = "student_teacher"
    kind = "map"
    output_name = "student_teacher_map"

    def __init__(
        self,
        channels: int | Sequence[int],
        image_size: int,
        config: StudentTeacherConfig | None = None,
        seed: int = 0,
        stride: int = 8,
    ) -> None:
        super().__init__()
        self.stride = int(stride)  # of the shallower backbone tap: sets the map grid
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16:
            raise ValueError(f"image_size must be an int >= 16, got {image_size!r}")
        self.config = config or StudentTeacherConfig()
        self.seed = seed
        self.channels = int(channels) if isinstance(channels, int) else int(sum(channels))
        self.image_size = image_size
        self.feature_size = self.feature_map_size(image_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.student = PatchDescriptionNetwork(
                2 * self.channels, image_size, self.feature_size, self.config.student_channels
            )
            self.autoencoder = ImageAutoencoder(
                image_size,
                self.feature_size,
                self.channels,
                self.config.ae_channels,
                self.config.ae_latent,
            )
        c = self.channels
        self.register_buffer("teacher_mean", torch.zeros(1, c, 1, 1))
        self.register_buffer("teacher_std", torch.ones(1, c, 1, 1))
        # [q_a, q_b] of the local and global maps on validation normals (set by fit_validation)
        self.register_buffer("local_quantiles", torch.tensor([0.0, 1.0]))
        self.register_buffer("global_quantiles", torch.tensor([0.0, 1.0]))
        self.fitted = False
        self.validated = False
        self.training_summary: dict[str, Any] = {}
        self.loss_history: list[tuple[float, float, float]] = []
        self.eval()

    def feature_map_size(self, image_size: int) -> tuple[int, int]:
        side = -(-image_size // self.stride)  # the shallower tap's grid; SAME padding rounds up
        return (side, side)

    def standardise(self, aggregated: Tensor) -> Tensor:
        return (aggregated - self.teacher_mean) / self.teacher_std

    def raw_maps(self, image: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
        """Un-normalised (local, global) maps, each ``[N, h, w]``; ``teacher`` standardised."""
        student = self.student(image)
        reconstruction = self.autoencoder(image)
        c = self.channels
        local = (teacher - student[:, :c]).pow(2).mean(dim=1)
        global_ = (reconstruction - student[:, c:]).pow(2).mean(dim=1)
        return local, global_

    @staticmethod
    def _normalise(raw: Tensor, quantiles: Tensor) -> Tensor:
        return 0.1 * (raw - quantiles[0]) / (quantiles[1] - quantiles[0])

    def forward(self, image: Tensor, features: list[Tensor]) -> Tensor:
        local, global_ = self.raw_maps(image, self.standardise(aggregate_taps(features)))
        return 0.5 * self._normalise(local, self.local_quantiles) + 0.5 * self._normalise(
            global_, self.global_quantiles
        )

    def fit(self, extractor: nn.Module, batches: Sequence[Tensor]) -> None:
        """Train student + autoencoder on the fit normals.

        Teacher features are computed once (no augmentation) and standardised with the fit set's
        channel statistics. Adam for ``config.steps`` steps on ``loss_hard + loss_ae +
        loss_student_ae`` (EfficientAD's objective without its ImageNet penalty: no ImageNet
        offline), learning rate x0.1 for the last 5 %. Seeded.
        """
        images, teacher_all = self._teacher_targets(extractor, batches)
        started = time.perf_counter()
        history = self._train(images, teacher_all)
        seconds = time.perf_counter() - started
        self.eval()
        self.loss_history = history
        tail = max(1, len(history) // 10)
        first, last = np.asarray(history[0]), np.asarray(history[-tail:]).mean(axis=0)
        names = ("hard", "ae", "student_ae")
        config = self.config
        self.training_summary = {
            "steps": config.steps,
            "batch_size": config.batch_size,
            "learning_rate": config.learning_rate,
            "seed": self.seed,
            "n_fit": int(images.shape[0]),
            "first_losses": {n: float(v) for n, v in zip(names, first, strict=True)},
            "final_losses": {n: float(v) for n, v in zip(names, last, strict=True)},
            "seconds": round(seconds, 2),
        }
        self.fitted = True
        log.info(
            "student_teacher: %d steps in %.1f s; hard loss %.3f -> %.3f, ae %.3f -> %.3f",
            config.steps,
            seconds,
            first[0],
            last[0],
            first[1],
            last[1],
        )

    def _teacher_targets(
        self, extractor: nn.Module, batches: Sequence[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """The fit images and their standardised teacher features (sets the statistics)."""
        images, raw = collect_features(
            extractor, batches, keep_images=True, desc="student_teacher: teacher"
        )
        assert images is not None
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise ValueError(
                f"student_teacher: built for {self.image_size}px images, got "
                f"{tuple(images.shape[-2:])}"
            )
        if raw.shape[1] != self.channels:
            raise ValueError(
                f"student_teacher: built for {self.channels} channels, the backbone gives "
                f"{raw.shape[1]}"
            )
        mean, std = channel_statistics(raw)
        self.teacher_mean.copy_(mean.view_as(self.teacher_mean))
        self.teacher_std.copy_(std.view_as(self.teacher_std))
        teacher_all = self.standardise(raw)
        del raw
        if tuple(teacher_all.shape[-2:]) != self.feature_size:
            raise ValueError(
                f"student_teacher: expected a shallow tap of {self.feature_size}, the backbone "
                f"gives {tuple(teacher_all.shape[-2:])}"
            )
        return images, teacher_all

    def _train(self, images: Tensor, teacher_all: Tensor) -> list[tuple[float, float, float]]:
        """The seeded Adam loop; returns the (hard, ae, student_ae) losses of every step."""
        config = self.config
        c = self.channels
        parameters = list(self.student.parameters()) + list(self.autoencoder.parameters())
        optimiser = torch.optim.Adam(
            parameters, lr=config.learning_rate, weight_decay=config.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.StepLR(
            optimiser, step_size=max(1, int(0.95 * config.steps)), gamma=0.1
        )
        order = batch_order(images.shape[0], config.batch_size, config.steps, self.seed)
        self.train()
        history: list[tuple[float, float, float]] = []
        bar = tqdm(order, desc="student_teacher: training", unit="step", leave=False)
        for indices in bar:
            index = torch.from_numpy(indices)
            image, teacher = images[index], teacher_all[index]
            student = self.student(image)
            reconstruction = self.autoencoder(image)
            loss_hard = hard_feature_loss(teacher, student[:, :c], config.hard_quantile)
            loss_ae = (teacher - reconstruction).pow(2).mean()
            loss_student_ae = (reconstruction - student[:, c:]).pow(2).mean()
            loss = loss_hard + loss_ae + loss_student_ae
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            history.append(
                (
                    float(loss_hard.detach()),
                    float(loss_ae.detach()),
                    float(loss_student_ae.detach()),
                )
            )
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
        return history

    def fit_validation(self, extractor: nn.Module, batches: Sequence[Tensor]) -> None:
        """Quantiles q_a, q_b of the raw local and global maps over held-out normal images."""
        if not self.fitted:
            raise ValueError("student_teacher: fit() must run before fit_validation()")
        local_maps, global_maps = [], []
        with torch.no_grad():
            bar = tqdm(batches, desc="student_teacher: validation", unit="batch", leave=False)
            for index, batch in enumerate(bar):
                images, raw = collect_features(
                    extractor, [batch], keep_images=True, desc="", progress=False
                )
                assert images is not None
                if images.shape[-1] != self.image_size:
                    raise ValueError(
                        f"batches[{index}]: built for {self.image_size}px images, got "
                        f"{tuple(images.shape[-2:])}"
                    )
                local, global_ = self.raw_maps(images, self.standardise(raw))
                local_maps.append(local.flatten())
                global_maps.append(global_.flatten())
        if not local_maps:
            raise ValueError("batches: no validation images for student_teacher")
        q_a, q_b = self.config.quantile_a, self.config.quantile_b
        local_q = _quantile_pair(torch.cat(local_maps).numpy(), q_a, q_b)
        global_q = _quantile_pair(torch.cat(global_maps).numpy(), q_a, q_b)
        self.local_quantiles.copy_(torch.tensor(local_q))
        self.global_quantiles.copy_(torch.tensor(global_q))
        self.validated = True
        log.info(
            "student_teacher: map quantiles local %s, global %s", _fmt(local_q), _fmt(global_q)
        )

    def manifest_entry(self) -> dict[str, Any]:
        if not self.validated:
            raise ValueError(
                "student_teacher head has no map quantiles yet (run fit and fit_validation)"
            )
        return {
            "channels": self.channels,
            "quantiles": {
                "q_a": self.config.quantile_a,
                "q_b": self.config.quantile_b,
                "local": [float(v) for v in self.local_quantiles],
                "global": [float(v) for v in self.global_quantiles],
            },
            "training": dict(self.training_summary),
        }

    def bundle_files(self) -> dict[str, np.ndarray]:
        return {}


def _fmt(pair: tuple[float, float]) -> str:
    return f"[{pair[0]:.4g}, {pair[1]:.4g}]"


def _quantile_pair(values: np.ndarray, q_a: float, q_b: float) -> tuple[float, float]:
    low, high = (float(v) for v in np.quantile(values, [q_a, q_b]))
    # a perfectly flat map would divide by zero; keep the scale finite and positive
    return low, max(high, low + 1e-6)


@register_head("student_teacher")
def _build_student_teacher(context: HeadContext) -> ExportHead:
    return StudentTeacherHead(
        context.channels,
        context.image_size,
        StudentTeacherConfig.from_mapping(dict(context.settings)),
        seed=context.seed,
        stride=context.strides[0],
    )
