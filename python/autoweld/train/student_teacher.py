"""Student-teacher head in the manner of EfficientAD (Batzner et al., 2024), shrunk for CPU.

- **Teacher**: the frozen backbone's two taps aggregated as PatchCore aggregates them, at the
  stride-8 tap's h x w, standardised with the fit set's per-channel mean and std. There is no
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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from autoweld.train.feature_maps import (
    aggregate_in_batches,
    aggregate_taps,
    batch_order,
    channel_statistics,
    check_fit_inputs,
)

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
    seed: int = 0

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


class PatchDescriptionNetwork(nn.Module):
    """The student: a small PDN, stride 8, ``[N, 3, S, S] -> [N, out_channels, h, w]``.

    Receptive field about 50 px at stride 8 — a local patch descriptor, like EfficientAD's small
    PDN, with the first convolution strided so the full-resolution work stays cheap on a CPU.
    """

    def __init__(self, out_channels: int, width: int = 64) -> None:
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

    def forward(self, image: Tensor, size: tuple[int, int]) -> Tensor:
        out = self.body(image)
        if tuple(out.shape[-2:]) != tuple(size):
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
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


class StudentTeacherHead(nn.Module):
    """Map head ``student_teacher``: 0.5 * normalised local + 0.5 * normalised global map."""

    name = "student_teacher"
    kind = "map"
    output_name = "student_teacher_map"

    def __init__(
        self,
        channels: int,
        image_size: int,
        feature_size: tuple[int, int],
        config: StudentTeacherConfig | None = None,
        *,
        teacher_mean: Tensor | None = None,
        teacher_std: Tensor | None = None,
    ) -> None:
        super().__init__()
        config = config or StudentTeacherConfig()
        self.config = config
        self.channels = channels
        self.image_size = image_size
        self.feature_size = (int(feature_size[0]), int(feature_size[1]))
        self.student = PatchDescriptionNetwork(2 * channels, config.student_channels)
        self.autoencoder = ImageAutoencoder(
            image_size, self.feature_size, channels, config.ae_channels, config.ae_latent
        )
        mean = torch.zeros(channels) if teacher_mean is None else teacher_mean.float()
        std = torch.ones(channels) if teacher_std is None else teacher_std.float()
        self.register_buffer("teacher_mean", mean.view(1, channels, 1, 1).clone())
        self.register_buffer("teacher_std", std.view(1, channels, 1, 1).clone())
        # [q_a, q_b] of the local and global maps on validation normals (set by training)
        self.register_buffer("local_quantiles", torch.tensor([0.0, 1.0]))
        self.register_buffer("global_quantiles", torch.tensor([0.0, 1.0]))
        self.training_summary: dict[str, Any] = {}

    def teacher(self, features: list[Tensor]) -> Tensor:
        return (aggregate_taps(features) - self.teacher_mean) / self.teacher_std

    def raw_maps(self, image: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
        """Un-normalised (local, global) maps, each ``[N, h, w]``."""
        student = self.student(image, tuple(teacher.shape[-2:]))
        reconstruction = self.autoencoder(image)
        c = self.channels
        local = (teacher - student[:, :c]).pow(2).mean(dim=1)
        global_ = (reconstruction - student[:, c:]).pow(2).mean(dim=1)
        return local, global_

    @staticmethod
    def _normalise(raw: Tensor, quantiles: Tensor) -> Tensor:
        return 0.1 * (raw - quantiles[0]) / (quantiles[1] - quantiles[0])

    def forward(self, image: Tensor, features: list[Tensor]) -> Tensor:
        local, global_ = self.raw_maps(image, self.teacher(features))
        return 0.5 * self._normalise(local, self.local_quantiles) + 0.5 * self._normalise(
            global_, self.global_quantiles
        )

    def manifest_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "channels": self.channels,
            "quantiles": {
                "q_a": self.config.quantile_a,
                "q_b": self.config.quantile_b,
                "local": [float(v) for v in self.local_quantiles],
                "global": [float(v) for v in self.global_quantiles],
            },
        }
        if self.training_summary:
            entry["training"] = dict(self.training_summary)
        return entry

    def bundle_files(self) -> dict[str, np.ndarray]:
        return {}


def _quantile_pair(values: np.ndarray, q_a: float, q_b: float) -> tuple[float, float]:
    low, high = (float(v) for v in np.quantile(values, [q_a, q_b]))
    # a perfectly flat map would divide by zero; keep the scale finite and positive
    return low, max(high, low + 1e-6)


def train_student_teacher(
    fit_images: Tensor,
    fit_taps: Sequence[Tensor],
    val_images: Tensor,
    val_taps: Sequence[Tensor],
    config: StudentTeacherConfig | None = None,
    *,
    progress: bool = True,
) -> StudentTeacherHead:
    """Train student + autoencoder on normal images; fit the map quantiles on validation normals.

    ``*_images``: preprocessed batches ``[N, 3, S, S]``; ``*_taps``: the backbone taps of the same
    images. Adam for ``config.steps`` steps on ``loss_hard + loss_ae + loss_student_ae`` (as
    EfficientAD, without its ImageNet penalty: no ImageNet offline). Seeded; the global RNG is
    used only inside ``torch.random.fork_rng``.
    """
    config = config or StudentTeacherConfig()
    n_fit = check_fit_inputs("student_teacher fit set", fit_images, fit_taps)
    n_val = check_fit_inputs("student_teacher validation set", val_images, val_taps)
    if fit_images.shape[1:] != val_images.shape[1:]:
        raise ValueError(
            f"student_teacher: fit and validation images differ: {tuple(fit_images.shape[1:])} vs "
            f"{tuple(val_images.shape[1:])}"
        )
    if fit_images.shape[-1] != fit_images.shape[-2]:
        raise ValueError(f"student_teacher: images must be square, got {tuple(fit_images.shape)}")
    fit_raw = aggregate_in_batches(list(fit_taps))
    val_raw = aggregate_in_batches(list(val_taps))
    mean, std = channel_statistics(fit_raw)
    channels, h, w = fit_raw.shape[1:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        head = StudentTeacherHead(
            channels,
            int(fit_images.shape[-1]),
            (h, w),
            config,
            teacher_mean=mean,
            teacher_std=std,
        )
    fit_teacher = (fit_raw - head.teacher_mean) / head.teacher_std
    val_teacher = (val_raw - head.teacher_mean) / head.teacher_std
    del fit_raw, val_raw

    parameters = list(head.student.parameters()) + list(head.autoencoder.parameters())
    optimiser = torch.optim.Adam(
        parameters, lr=config.learning_rate, weight_decay=config.weight_decay
    )
    # step the learning rate down for the last 5 % of steps, as EfficientAD does at 95 %
    scheduler = torch.optim.lr_scheduler.StepLR(
        optimiser, step_size=max(1, int(0.95 * config.steps)), gamma=0.1
    )
    batches = batch_order(n_fit, config.batch_size, config.steps, config.seed)
    head.train()
    history: list[tuple[float, float, float]] = []
    started = time.perf_counter()
    bar = tqdm(batches, desc="student_teacher", unit="step", disable=not progress)
    for indices in bar:
        index = torch.from_numpy(indices)
        image, teacher = fit_images[index], fit_teacher[index]
        student = head.student(image, (h, w))
        reconstruction = head.autoencoder(image)
        loss_hard = hard_feature_loss(teacher, student[:, :channels], config.hard_quantile)
        loss_ae = (teacher - reconstruction).pow(2).mean()
        loss_student_ae = (reconstruction - student[:, channels:]).pow(2).mean()
        loss = loss_hard + loss_ae + loss_student_ae
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
        history.append(
            (float(loss_hard.detach()), float(loss_ae.detach()), float(loss_student_ae.detach()))
        )
        bar.set_postfix(loss=f"{float(loss):.3f}", refresh=False)
    seconds = time.perf_counter() - started
    head.eval()

    local_maps, global_maps = [], []
    with torch.no_grad():
        for start in range(0, n_val, config.batch_size):
            stop = start + config.batch_size
            local, global_ = head.raw_maps(val_images[start:stop], val_teacher[start:stop])
            local_maps.append(local.flatten())
            global_maps.append(global_.flatten())
    local_q = _quantile_pair(torch.cat(local_maps).numpy(), config.quantile_a, config.quantile_b)
    global_q = _quantile_pair(torch.cat(global_maps).numpy(), config.quantile_a, config.quantile_b)
    head.local_quantiles.copy_(torch.tensor(local_q))
    head.global_quantiles.copy_(torch.tensor(global_q))

    tail = max(1, len(history) // 10)
    first, last = np.asarray(history[0]), np.asarray(history[-tail:]).mean(axis=0)
    names = ("hard", "ae", "student_ae")
    head.training_summary = {
        "steps": config.steps,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "seed": config.seed,
        "first_losses": {n: float(v) for n, v in zip(names, first, strict=True)},
        "final_losses": {n: float(v) for n, v in zip(names, last, strict=True)},
        "seconds": round(seconds, 2),
        "n_fit": int(n_fit),
        "n_val": int(n_val),
    }
    log.info(
        "student_teacher: %d steps in %.1f s; hard loss %.3f -> %.3f, ae %.3f -> %.3f",
        config.steps,
        seconds,
        first[0],
        last[0],
        first[1],
        last[1],
    )
    return head
