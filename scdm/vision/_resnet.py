"""ResNet-9 ensembles for image datamodels (the CIFAR-10 setting of Ilyas et al., 2022).

The network is the ResNet-9 of the datamodels and TRAK CIFAR examples (from the ffcv CIFAR
recipe): conv-BN-ReLU blocks of 64, 128 (5 × 5, stride 2), a residual pair of 128, 256, max-pool,
a residual pair of 256, 128 (no padding), global max-pool, a bias-free linear layer and a fixed
scale of 0.2. ``width`` scales every layer (64 is the original).

``k`` models are trained at once as *one* network whose convolutions have ``groups=k``: model
``i`` owns input channels ``3i … 3i+2`` and the ``i``-th block of every layer's channels.
Batch-norm statistics are per channel, hence per model; the loss is the sum of the models'
losses, so each model gets exactly its own gradient, and SGD is element-wise. Each model draws
its own minibatches from its own subset, in its own order, with its own flips — all from
``(random_state, model index)`` alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .._checks import check_fraction, check_int
from .._seeding import INIT_STREAM, ORDER_STREAM, model_rng
from ..ensemble import TrainResult, margins_from_logits, resolve_device

# Per-channel statistics of the CIFAR-10 training images (0-255 scale), as in the ffcv recipe.
CIFAR_MEAN = (125.307, 122.961, 113.8575)
CIFAR_STD = (51.5865, 50.847, 51.255)


@dataclass(frozen=True)
class ResNetConfig:
    """Architecture and training schedule shared by every model of an image ensemble.

    Parameters
    ----------
    width
        Channels of the first layer (64 in the original ResNet-9); every layer scales with it.
    epochs
        Passes over each model's own training subset.
    batch_size
        Minibatch size per model.
    lr
        Peak learning rate of the one-cycle schedule (linear warm-up from 0 to ``lr`` over
        ``lr_peak_epoch`` epochs, then linear decay to 0), for SGD with Nesterov momentum.
    lr_peak_epoch
        Where the schedule peaks, in epochs.
    momentum, weight_decay
        SGD settings.
    label_smoothing
        Cross-entropy label smoothing.
    flip
        Random horizontal flips of training images.
    tta
        Margins average the logits of each target image and its mirror image.
    mixed_precision
        bfloat16 autocast and channels-last memory on CUDA (ignored on CPU, which stays float32
        so that CPU results are reproducible).
    cpu_threads
        Intra-op threads while training on CPU (``None``: PyTorch's current setting). It is
        part of the recipe because CPU convolutions round differently with different thread
        counts, and training amplifies the difference: with a fixed count every worker gets
        bitwise the same models. Scale out on CPU with more workers (Ray tasks, ``scdm train``)
        rather than more threads.
    """

    width: int = 64
    epochs: int = 16
    batch_size: int = 512
    lr: float = 0.5
    lr_peak_epoch: float = 2.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    flip: bool = True
    tta: bool = True
    mixed_precision: bool = True
    cpu_threads: int | None = 1

    def __post_init__(self) -> None:
        for name in ("width", "epochs", "batch_size"):
            check_int(name, getattr(self, name), 1)
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}.")
        if not 0 <= self.lr_peak_epoch <= self.epochs:
            raise ValueError(f"lr_peak_epoch must lie in [0, epochs={self.epochs}], got "
                             f"{self.lr_peak_epoch}.")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise ValueError("momentum must lie in [0, 1) and weight_decay be non-negative.")
        if self.cpu_threads is not None and int(self.cpu_threads) < 1:
            raise ValueError(f"cpu_threads must be at least 1 or None, got {self.cpu_threads}.")
        check_fraction("label_smoothing", self.label_smoothing, "[0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)


class _GroupedConvBN(nn.Module):
    """``k`` independent conv (no bias) → batch norm → ReLU blocks as one grouped convolution."""

    def __init__(self, k: int, c_in: int, c_out: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(k * c_in, k * c_out, kernel_size, stride, padding, groups=k,
                              bias=False)
        self.bn = nn.BatchNorm2d(k * c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class _Residual(nn.Module):
    def __init__(self, *blocks: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.blocks(x)


class GroupedResNet9(nn.Module):
    """``k`` ResNet-9s in one module: input ``[B, 3k, H, W]`` → logits ``[B, k, n_classes]``.

    Model ``i`` sees input channels ``3i:3i+3``. With ``k=1`` this is the plain ResNet-9.
    """

    scale = 0.2

    def __init__(self, k: int = 1, n_classes: int = 10, width: int = 64) -> None:
        super().__init__()
        w = int(width)
        self.k, self.n_classes = int(k), int(n_classes)
        self.features = nn.Sequential(
            _GroupedConvBN(k, 3, w),
            _GroupedConvBN(k, w, 2 * w, kernel_size=5, stride=2, padding=2),
            _Residual(_GroupedConvBN(k, 2 * w, 2 * w), _GroupedConvBN(k, 2 * w, 2 * w)),
            _GroupedConvBN(k, 2 * w, 4 * w),
            nn.MaxPool2d(2),
            _Residual(_GroupedConvBN(k, 4 * w, 4 * w), _GroupedConvBN(k, 4 * w, 4 * w)),
            _GroupedConvBN(k, 4 * w, 2 * w, padding=0),
            nn.AdaptiveMaxPool2d(1),
        )
        # the bias-free linear layer of each model, as a grouped 1 × 1 convolution
        self.head = nn.Conv2d(k * 2 * w, k * self.n_classes, 1, groups=k, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.features(x))
        return out.reshape(x.shape[0], self.k, self.n_classes).float() * self.scale

    def model_state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """One plain ResNet-9 (``k=1``) state dict per model of the group, for TRAK and for
        saving checkpoints: every grouped tensor's first dimension holds the models' blocks one
        after another (convolution outputs, batch-norm channels), so model ``i`` owns block
        ``i``."""
        state = self.state_dict()
        out = []
        for i in range(self.k):
            single = {}
            for name, value in state.items():
                if value.dim() == 0:  # num_batches_tracked: shared count of steps
                    single[name] = value.detach().clone()
                else:
                    rows = value.shape[0] // self.k
                    single[name] = value[i * rows : (i + 1) * rows].detach().clone()
            out.append(single)
        return out

    def conv_weights(self) -> list[torch.Tensor]:
        """Every convolution's weight (head last), in a fixed order."""
        return [m.weight for m in self.modules() if isinstance(m, nn.Conv2d)]

    @torch.no_grad()
    def initialise(self, random_state: int, model_indices: Sequence[int]) -> None:
        """Draw model ``i``'s weights from the stream of ``model_indices[i]`` (uniform in
        ``±1/sqrt(fan_in)``, PyTorch's default for conv and linear layers); batch norm starts
        at scale 1, shift 0."""
        weights = self.conv_weights()
        for i, index in enumerate(model_indices):
            rng = model_rng(random_state, INIT_STREAM, int(index))
            for weight in weights:
                rows = weight.shape[0] // self.k
                shape = (rows, *weight.shape[1:])
                bound = 1.0 / math.sqrt(int(np.prod(weight.shape[1:])))
                values = rng.uniform(-bound, bound, size=shape).astype(np.float32)
                weight[i * rows : (i + 1) * rows] = torch.from_numpy(values)


class ResNet9Classifier(GroupedResNet9):
    """One ResNet-9 as a ``[batch, 3, H, W]`` → ``[batch, classes]`` classifier, the form
    :class:`scdm.trak.TRAKer` and other attribution tools expect. It loads the state dicts of
    :meth:`GroupedResNet9.model_state_dicts` (the same parameter names)."""

    def __init__(self, n_classes: int = 10, width: int = 64) -> None:
        super().__init__(1, n_classes, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[:, 0, :]


def check_images(images: np.ndarray, labels: np.ndarray, target_images: np.ndarray,
                 target_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Refuse images or labels a ResNet ensemble cannot train on; labels as int64."""
    for name, array in (("images", images), ("target_images", target_images)):
        array = np.asarray(array)
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[1] != 3 or not len(array):
            raise ValueError(f"{name} must be non-empty uint8 [n, 3, H, W] (CIFAR's layout), "
                             f"got {array.dtype} {array.shape}.")
    labels = np.asarray(labels, dtype=np.int64)
    target_labels = np.asarray(target_labels, dtype=np.int64)
    if labels.shape != (len(images),) or target_labels.shape != (len(target_images),):
        raise ValueError("labels and target_labels need one class code per image.")
    if min(labels.min(), target_labels.min()) < 0:
        raise ValueError("labels must be non-negative class codes.")
    if np.unique(labels).size < 2:
        raise ValueError(f"the training images hold one class only ({labels[0]}); a classifier "
                         "needs two. Choose more training images (--n-train) or another subset.")
    return labels, target_labels


def _one_cycle(step: int, steps_per_epoch: int, config: ResNetConfig) -> float:
    total = config.epochs * steps_per_epoch
    peak = config.lr_peak_epoch * steps_per_epoch
    return float(np.interp(step, [0, peak, total], [0.0, config.lr, 0.0]))


class ResNetEnsembleTrainer:
    """Train ResNet-9s on subsets of a set of training images; margins on target images.

    Parameters
    ----------
    images, labels
        Training images ``uint8 [n, 3, H, W]`` and their class codes.
    target_images, target_labels
        Images on which every model's margin is recorded (e.g. CIFAR-10 test images).
    config
        Architecture and schedule (:class:`ResNetConfig`).
    n_classes
        Number of classes (default: ``max(labels) + 1``).
    device
        ``"auto"``: CUDA when available.
    random_state
        Seeds every model's initialisation, data order and flips, by model index.
    mean, std
        Per-channel normalisation on the 0-255 scale (default: CIFAR-10's).
    models_at_once
        Models trained together as one grouped network (default: all models of a
        :meth:`train` call on CUDA, one on CPU, where grouping is slower and would make a
        model's result depend on its companions).

    ``train`` returns, per model, the margin on every target image and the accuracy on them
    (``heldout_accuracy``: the targets are held out of every model's training).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, target_images: np.ndarray,
                 target_labels: np.ndarray, config: ResNetConfig | None = None, *,
                 n_classes: int | None = None, device: str | torch.device = "auto",
                 random_state: int = 0, mean: Sequence[float] = CIFAR_MEAN,
                 std: Sequence[float] = CIFAR_STD, eval_batch_size: int = 1024,
                 models_at_once: int | None = None) -> None:
        self.config = config or ResNetConfig()
        self.device = resolve_device(device)
        labels, target_labels = check_images(images, labels, target_images, target_labels)
        self.n_classes = int(n_classes or max(labels.max(), target_labels.max()) + 1)
        if max(labels.max(), target_labels.max()) >= self.n_classes:
            raise ValueError(f"labels must be class codes in [0, {self.n_classes}).")
        self.n, self.n_targets = len(labels), len(target_labels)
        self.random_state = int(random_state)
        self.eval_batch_size = int(eval_batch_size)
        if models_at_once is not None:
            check_int("models_at_once", models_at_once, 1)
        self.models_at_once = models_at_once
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        self.labels = torch.from_numpy(labels).to(self.device)
        self.target_images = torch.from_numpy(np.ascontiguousarray(target_images)).to(self.device)
        self.target_labels = torch.from_numpy(target_labels).to(self.device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        cuda = self.device.type == "cuda"
        self.autocast = cuda and self.config.mixed_precision
        self.memory_format = torch.channels_last if self.autocast else torch.contiguous_format

    def auto_chunk_size(self) -> int:
        """Models per call of :meth:`train`: on a GPU they train at once as one grouped network
        (``workflows/benchmarks/cifar10.py --group-sizes`` measures what fills a GPU); on CPU
        they train one after another, so one model per call keeps the store's progress fine."""
        return 4 if self.device.type == "cuda" else 1

    # ------------------------------------------------------------------ data
    def normalise(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``uint8 [n, 3, H, W]`` images → the normalised float input of one ResNet-9 (on the
        trainer's device), as the models saw them in training (without flips)."""
        images = torch.as_tensor(np.asarray(images)).to(self.device)
        return self._stack(images.unsqueeze(0), None)

    def _stack(self, images: torch.Tensor, flips: torch.Tensor | None) -> torch.Tensor:
        """``[k, B, 3, H, W]`` uint8 → normalised ``[B, 3k, H, W]`` network input."""
        x = (images.float() - self.mean) / self.std
        if flips is not None:
            x = torch.where(flips.view(*flips.shape, 1, 1, 1), x.flip(-1), x)
        k, b = x.shape[:2]
        x = x.transpose(0, 1).reshape(b, 3 * k, *x.shape[-2:])
        return x.contiguous(memory_format=self.memory_format)

    # ------------------------------------------------------------------ training
    def train(self, masks: np.ndarray, model_indices: Sequence[int] | np.ndarray, *,
              keep_params: bool = False) -> TrainResult:
        """Train one ResNet-9 per mask row (all at once); margins on the target images.

        With ``keep_params``, ``result.extras["state_dicts"]`` holds each model's trained
        parameters as a plain ResNet-9 state dict (:class:`ResNet9Classifier` loads it)."""
        masks = np.asarray(masks, dtype=bool)
        model_indices = np.asarray(model_indices, dtype=np.int64).reshape(-1)
        if masks.ndim != 2 or masks.shape != (model_indices.size, self.n):
            raise ValueError(f"masks must be {model_indices.size} × {self.n}, got {masks.shape}.")
        counts = masks.sum(axis=1)
        if counts.min() < 1 or (counts != counts[0]).any():
            raise ValueError("every mask trained together must select the same, non-zero "
                             f"number of images (got {sorted(set(counts.tolist()))}); use "
                             "balanced masks.")
        at_once = self.models_at_once or (model_indices.size if self.device.type == "cuda"
                                          else 1)
        threads = torch.get_num_threads()
        if self.device.type == "cpu" and self.config.cpu_threads is not None:
            torch.set_num_threads(int(self.config.cpu_threads))
        try:
            return self._train_groups(masks, model_indices, at_once, keep_params)
        finally:
            torch.set_num_threads(threads)

    def _train_groups(self, masks: np.ndarray, model_indices: np.ndarray, at_once: int,
                      keep_params: bool = False) -> TrainResult:
        margins, correct, states = [], [], []
        for start in range(0, model_indices.size, at_once):
            group = model_indices[start : start + at_once]
            net = GroupedResNet9(group.size, self.n_classes, self.config.width)
            net.initialise(self.random_state, [int(m) for m in group])
            net = net.to(self.device, memory_format=self.memory_format)  # type: ignore[call-overload]
            self._fit(net, masks[start : start + at_once], group)
            group_margins, group_correct = self._margins(net)
            margins.append(group_margins)
            correct.append(group_correct)
            if keep_params:
                states += [{k: v.cpu() for k, v in sd.items()}
                           for sd in net.model_state_dicts()]
        return TrainResult(margins=np.concatenate(margins),
                           heldout_accuracy=np.concatenate(correct).mean(axis=1,
                                                                         dtype=np.float32),
                           extras={"state_dicts": states} if keep_params else {})

    def _fit(self, net: GroupedResNet9, masks: np.ndarray, model_indices: np.ndarray) -> None:
        cfg = self.config
        rngs = [model_rng(self.random_state, ORDER_STREAM, int(m)) for m in model_indices]
        subsets = [np.flatnonzero(row) for row in masks]
        n_train = subsets[0].size
        steps_per_epoch = -(-n_train // cfg.batch_size)
        optimiser = torch.optim.SGD(net.parameters(), lr=0.0, momentum=cfg.momentum,
                                    nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay)
        net.train()
        step = 0
        for _ in range(cfg.epochs):
            orders = np.stack([rng.permutation(subset) for rng, subset in
                               zip(rngs, subsets, strict=True)])
            flips = np.stack([rng.random(n_train) < 0.5 for rng in rngs]) if cfg.flip else None
            orders_t = torch.from_numpy(orders).to(self.device)
            flips_t = None if flips is None else torch.from_numpy(flips).to(self.device)
            for start in range(0, n_train, cfg.batch_size):
                idx = orders_t[:, start : start + cfg.batch_size]
                x = self._stack(self.images[idx], None if flips_t is None else
                                flips_t[:, start : start + cfg.batch_size])
                y = self.labels[idx]  # [k, B]
                for group in optimiser.param_groups:
                    group["lr"] = _one_cycle(step, steps_per_epoch, cfg)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
                    logits = net(x)  # [B, k, C]
                losses = F.cross_entropy(logits.transpose(1, 2), y.T,
                                         label_smoothing=cfg.label_smoothing, reduction="none")
                optimiser.zero_grad(set_to_none=True)
                losses.mean(0).sum().backward()  # per-model mean over its batch
                optimiser.step()
                step += 1

    @torch.no_grad()
    def _margins(self, net: GroupedResNet9) -> tuple[np.ndarray, np.ndarray]:
        net.eval()
        k = net.k
        parts = []
        for start in range(0, self.n_targets, self.eval_batch_size):
            images = self.target_images[start : start + self.eval_batch_size]
            x = self._stack(images.unsqueeze(0).expand(k, *images.shape), None)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
                logits = net(x)
                if self.config.tta:
                    logits = (logits + net(x.flip(-1))) / 2
            parts.append(logits.float().transpose(0, 1))  # [k, b, C]
        logits = torch.cat(parts, dim=1)
        margins = margins_from_logits(logits, self.target_labels)
        return margins.cpu().numpy().astype(np.float32), (margins > 0).cpu().numpy()
