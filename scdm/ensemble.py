"""Batched training of many small MLPs at once.

The parameters of ``k`` models are stacked (``W_l: [k, d_in, d_out]``) and every step runs one
batched matmul per layer over all of them. Each model draws minibatches from its own training
subset in its own order, and every model's loss is summed, so each model gets exactly its own
gradient. Adam is element-wise, so one optimizer over the stacked tensors is ``k`` independent
optimizers; it is written out here so that a model whose (shorter) epoch has ended is left alone
exactly as a model trained by itself would be.

For two classes the network has one output, the logit difference ``z = logit_1 - logit_0``
(softmax over ``[0, z]``): half the work in the last layer, and the margin is ``±z``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ._checks import check_int
from ._device import resolve_device
from ._seeding import INIT_STREAM, ORDER_STREAM, model_rng


@dataclass(frozen=True)
class TrainConfig:
    """Model and optimisation settings shared by every model of an ensemble.

    Parameters
    ----------
    hidden
        Hidden layer widths; ``()`` gives (multinomial) logistic regression.
    epochs
        Passes over each model's own training subset.
    batch_size
        Minibatch size per model.
    lr
        Adam learning rate.
    weight_decay
        L2 penalty ``weight_decay / 2 * ||W_1||²`` on the first layer's weights. On by default:
        unregularised classifiers give precise datamodels that are blind to subtypes.
    l1
        L1 penalty ``l1 * ||W_1||_1`` on the first layer's weights.
    betas, eps
        Adam's moment decays and denominator epsilon (PyTorch's defaults).
    """

    hidden: tuple[int, ...] = (64,)
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-2
    l1: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden layer widths must be positive, got {self.hidden}.")
        for name in ("epochs", "batch_size"):
            check_int(name, getattr(self, name), 1)
        for name in ("lr",):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        for name in ("weight_decay", "l1"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}.")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# On CPU, ATen runs element-wise ops in SIMD code over multiples of twice the vector width and
# in scalar code over the remainder, and the two round differently (FMA, Sleef). Padding every
# chunk to a multiple of this many models keeps each model's elements on the vector path
# wherever it sits, so CPU results do not depend on the chunk size.
CPU_MODEL_ALIGN = 64


def layer_sizes(n_features: int, n_classes: int, hidden: Sequence[int]) -> list[int]:
    """Widths from input to output; two classes use a single logit-difference output."""
    return [n_features, *hidden, 1 if n_classes == 2 else n_classes]


def init_model(sizes: Sequence[int], random_state: int, model_index: int
               ) -> list[tuple[np.ndarray, np.ndarray]]:
    """One model's initial ``(weight [in, out], bias [out])`` per layer, as ``nn.Linear`` does it
    (uniform in ``±1/sqrt(fan_in)``), drawn from the model's own stream."""
    rng = model_rng(random_state, INIT_STREAM, model_index)
    params = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        bound = 1.0 / math.sqrt(fan_in)
        w = rng.uniform(-bound, bound, size=(fan_in, fan_out)).astype(np.float32)
        b = rng.uniform(-bound, bound, size=fan_out).astype(np.float32)
        params.append((w, b))
    return params


def epoch_orders(train_indices: np.ndarray, random_state: int, model_index: int, epochs: int
                 ) -> list[np.ndarray]:
    """The order in which one model visits its training samples, epoch by epoch."""
    rng = model_rng(random_state, ORDER_STREAM, model_index)
    return [rng.permutation(train_indices) for _ in range(epochs)]


def margins_from_logits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Correct-class logit minus the largest other logit.

    ``logits`` is ``[k, n]`` (two classes: the logit difference ``logit_1 - logit_0``) or
    ``[k, n, C]``; ``y`` is ``[n]`` integer class codes.
    """
    if logits.dim() == 3:
        index = y.view(1, -1, 1).expand(logits.shape[0], -1, 1)
        correct = logits.gather(-1, index).squeeze(-1)
        others = logits.scatter(-1, index, float("-inf"))
        return correct - others.amax(-1)
    return logits * (2.0 * y.to(logits.dtype) - 1.0)


def _output_logit_difference(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two-class output layer ``[k, B, h] → [k, B]``.

    Multiply-and-sum rather than a batched matrix-vector product: the latter is both slower and,
    on CPU, rounds differently depending on how many models are batched, which would make
    results depend on the chunk size.
    """
    return (h * w.squeeze(-1).unsqueeze(1)).sum(-1) + b


SUBNORMAL = float(np.finfo(np.float32).tiny)  # smallest normal float32
FLUSH_EVERY = 64  # optimiser steps between flushes (a flushed dead unit stays at zero)


def flush_subnormals(tensors: Sequence[torch.Tensor], active: torch.Tensor) -> None:
    """Set subnormal entries of the active models' ``[k, ...]`` tensors to zero, in place.

    Dead ReLU units get no data gradient: their Adam moments decay geometrically and the L2
    term drives their first-layer weights to zero, through the subnormal range, where every
    multiply takes the CPU's slow path (measured: 40 models on 50,000 cells trained in 102 s,
    16.7 s with this every 64 steps; RESULTS.md). Once zero they stay zero, so a periodic flush
    suffices. ``torch.set_flush_denormal`` is no substitute: it reaches only the calling
    thread, not torch's intra-op pool. Only active models are touched, so a model's values
    never depend on how long its chunk's companions train.
    """
    for x in tensors:
        x.masked_fill_((x.abs() < SUBNORMAL) & active.view((-1,) + (1,) * (x.dim() - 1)), 0.0)


@dataclass
class TrainResult:
    """Per-model outputs of one ensemble run."""

    margins: np.ndarray  # [k, n] float32
    heldout_accuracy: np.ndarray  # [k] float32
    extras: dict = field(default_factory=dict)


def model_state(params: Sequence[torch.Tensor], j: int) -> dict[str, torch.Tensor]:
    """Model ``j``'s parameters out of stacked ones (``[k, ...]`` per tensor, as
    :meth:`EnsembleTrainer.train` keeps them), as the store keeps a checkpoint (on the CPU,
    tensors by position)."""
    return {str(t): p[j].detach().cpu().clone() for t, p in enumerate(params)}


def stacked_params(states: Sequence[Mapping[str, torch.Tensor]], device) -> list[torch.Tensor]:
    """Kept checkpoints (:func:`model_state`'s form) stacked again, ``[k, ...]`` per tensor,
    on ``device``: the inverse of :func:`model_state`."""
    return [torch.stack([state[str(t)] for state in states]).to(device)
            for t in range(len(states[0]))]


class EnsembleTrainer:
    """Train many MLPs on subsets of one data set, all at once.

    Parameters
    ----------
    X
        ``n × d`` float features (numpy array or tensor; moved to ``device`` once).
    y
        ``n`` integer class codes in ``[0, n_classes)``.
    config
        :class:`TrainConfig`.
    n_classes
        Number of classes (default: ``y.max() + 1``).
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, or a ``torch.device``.
    random_state
        Seed; model ``m``'s initial weights and data order depend on ``(random_state, m)`` only.
    eval_batch_size
        Samples per block when computing margins on all ``n`` samples.
    """

    def __init__(
        self,
        X: np.ndarray | torch.Tensor,
        y: np.ndarray | torch.Tensor,
        config: TrainConfig | None = None,
        *,
        n_classes: int | None = None,
        device: str | torch.device = "auto",
        random_state: int = 0,
        eval_batch_size: int = 4096,
    ) -> None:
        self.config = config or TrainConfig()
        self.device = resolve_device(device)
        X = torch.as_tensor(X, dtype=torch.float32)
        # a copy: labels are small, and pandas' category codes are read-only views, which
        # torch.as_tensor shares with a warning that writing to them is undefined
        y = torch.as_tensor(np.array(y, dtype=np.int64))
        if X.dim() != 2 or y.dim() != 1 or X.shape[0] != y.shape[0]:
            raise ValueError(f"X must be n × d and y length n; got {tuple(X.shape)}, "
                             f"{tuple(y.shape)}.")
        if not torch.isfinite(X).all():
            raise ValueError("X contains NaN or inf; clean or impute the features first.")
        self.n_classes = int(n_classes if n_classes is not None else int(y.max()) + 1)
        if self.n_classes < 2 or y.min() < 0 or y.max() >= self.n_classes:
            raise ValueError(f"y must hold class codes in [0, {self.n_classes}) with at least "
                             "two classes.")
        self.X = X.to(self.device).contiguous()
        self.y = y.to(self.device)
        self.y_float = self.y.to(torch.float32)
        self.n, self.d = X.shape
        self.sizes = layer_sizes(self.d, self.n_classes, self.config.hidden)
        self.random_state = int(random_state)
        self.eval_batch_size = int(eval_batch_size)

    # ------------------------------------------------------------------ memory
    def bytes_per_model(self) -> int:
        """Rough device memory one model needs during training and evaluation."""
        n_params = sum(a * b + b for a, b in zip(self.sizes[:-1], self.sizes[1:], strict=True))
        widths = sum(self.sizes)
        batch = self.config.batch_size
        evaluation = min(self.eval_batch_size, self.n) * widths
        return 4 * (5 * n_params + 4 * batch * widths + 2 * evaluation + 3 * self.n)

    def auto_chunk_size(self, memory_budget: int | None = None) -> int:
        """Models per batched run: as many as fit the budget (device memory), capped."""
        if memory_budget is None:
            if self.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(self.device)
                memory_budget = int(free * 0.6)
            else:
                memory_budget = 2 << 30
        # CPU: the fewest models the SIMD alignment allows. The per-step working set of more
        # leaves the cache: on 2 cores, pbmc68k's 50 PCs trained 770 models/s in chunks of
        # 64, 710 of 128, 600 of 256; its 765 genes 65, 62, 60 (RESULTS.md, 2026-12-05).
        cap = 8192 if self.device.type == "cuda" else CPU_MODEL_ALIGN
        return int(max(1, min(cap, memory_budget // self.bytes_per_model())))

    # ------------------------------------------------------------------ training
    def train(self, masks: np.ndarray, model_indices: Sequence[int] | np.ndarray, *,
              keep_params: bool = False) -> TrainResult:
        """Train one model per mask row and return margins on all samples.

        ``masks`` is ``k × n`` bool (True = trains on it); ``model_indices`` are the models'
        global indices, which seed their initialisation and data order. With ``keep_params``
        the trained parameters (stacked, ``[k, ...]`` per tensor) are in
        ``result.extras["params"]`` (TRAK's checkpoints).
        """
        masks = np.asarray(masks, dtype=bool)
        model_indices = np.asarray(model_indices, dtype=np.int64).reshape(-1)
        if masks.ndim != 2 or masks.shape != (model_indices.size, self.n):
            raise ValueError(f"masks must be {model_indices.size} × {self.n}, got {masks.shape}.")
        counts = masks.sum(axis=1)
        if (counts == 0).any():
            raise ValueError("a model's mask selects no training samples.")
        k = model_indices.size
        padded = -(-k // CPU_MODEL_ALIGN) * CPU_MODEL_ALIGN if self.device.type == "cpu" else k
        if padded > k:  # duplicates of the last model, dropped below
            fill = np.full(padded - k, k - 1)
            masks = np.concatenate([masks, masks[fill]])
            model_indices = np.concatenate([model_indices, model_indices[fill]])
            counts = np.concatenate([counts, counts[fill]])
        params = self._init_params(model_indices)
        self._fit(params, masks, model_indices, counts)
        margins = self.margins(params)[:k]
        heldout = ~masks[:k]
        correct = (margins > 0) & heldout
        with np.errstate(invalid="ignore", divide="ignore"):
            accuracy = (correct.sum(axis=1) / heldout.sum(axis=1)).astype(np.float32)
        extras = {"params": [p[:k] for p in params]} if keep_params else {}
        return TrainResult(margins=margins, heldout_accuracy=accuracy, extras=extras)

    def _init_params(self, model_indices: np.ndarray) -> list[torch.Tensor]:
        per_model = [init_model(self.sizes, self.random_state, int(m)) for m in model_indices]
        params = []
        for layer in range(len(self.sizes) - 1):
            w = np.stack([p[layer][0] for p in per_model])
            b = np.stack([p[layer][1] for p in per_model])
            params += [torch.from_numpy(w).to(self.device), torch.from_numpy(b).to(self.device)]
        return params

    def forward(self, params: Sequence[torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        """Logits ``[k, B]`` (two classes) or ``[k, B, C]`` for per-model inputs ``[k, B, d]``."""
        h = xb
        n_layers = len(params) // 2
        for layer in range(n_layers):
            w, b = params[2 * layer], params[2 * layer + 1]
            if layer == n_layers - 1 and w.shape[-1] == 1:
                return _output_logit_difference(h, w, b)
            h = torch.baddbmm(b.unsqueeze(1), h, w)
            if layer < n_layers - 1:
                h = torch.relu(h)
        return h

    @torch.no_grad()
    def _fit(self, params: list[torch.Tensor], masks: np.ndarray, model_indices: np.ndarray,
             counts: np.ndarray) -> None:
        cfg = self.config
        k, batch = len(model_indices), cfg.batch_size
        dev = self.device
        steps_per_model = np.ceil(counts / batch).astype(np.int64)
        n_steps = int(steps_per_model.max())
        padded = n_steps * batch
        train_sets = [np.flatnonzero(row) for row in masks]
        rngs = [model_rng(self.random_state, ORDER_STREAM, int(m)) for m in model_indices]
        step_limit = torch.as_tensor(steps_per_model, device=dev)
        exp_avg = [torch.zeros_like(p) for p in params]
        exp_avg_sq = [torch.zeros_like(p) for p in params]
        step_count = torch.zeros(k, dtype=torch.float32, device=dev)
        order = np.zeros((k, padded), dtype=np.int64)
        valid = np.zeros((k, padded), dtype=np.float32)
        for row, c in enumerate(counts):
            valid[row, :c] = 1.0
        valid_t = torch.from_numpy(valid).to(dev)
        # Buffers reused by every step: fresh multi-MB allocations per step cost page faults
        # that took longer than the matmuls (on 765 genes, 256 models at once spent 44% of
        # their time in the kernel before the gradients and Adam's temporaries had buffers).
        xb = torch.empty(k, batch, self.d, device=dev)
        acts = [torch.empty(k, batch, h, device=dev) for h in self.sizes[1:-1]]
        weight_grads = [torch.empty_like(p) for p in params[0::2]]
        scratch = [torch.empty_like(p) for p in params]

        for _ in range(cfg.epochs):
            for row, (rng, train) in enumerate(zip(rngs, train_sets, strict=True)):
                order[row, : train.size] = rng.permutation(train)
            order_t = torch.from_numpy(order).to(dev)
            for step in range(n_steps):
                cols = slice(step * batch, (step + 1) * batch)
                idx = order_t[:, cols].reshape(-1)
                weight = valid_t[:, cols]
                torch.index_select(self.X, 0, idx, out=xb.view(k * batch, self.d))
                grads = self._gradients(params, xb, idx, weight, acts, weight_grads)
                self._adam_step(params, grads, exp_avg, exp_avg_sq, step_count,
                                step < step_limit, scratch)
                if (step + 1) % FLUSH_EVERY == 0:
                    flush_subnormals(params + exp_avg + exp_avg_sq, step < step_limit)

    def _gradients(self, params: Sequence[torch.Tensor], xb: torch.Tensor, idx: torch.Tensor,
                   weight: torch.Tensor, acts: Sequence[torch.Tensor],
                   weight_grads: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Gradients of each model's weighted mean loss (hand-written backprop of the MLP).

        Equal to autograd's (``tests/test_ensemble.py`` checks it against ``nn.Module``), without
        its graph bookkeeping and with activations kept in the reused ``acts`` buffers. The
        hidden layers' weight gradients are written into ``weight_grads`` (one buffer per
        weight, shaped like it) where given; they are valid until the next call.
        """
        def out(layer: int) -> torch.Tensor | None:
            return None if weight_grads is None else weight_grads[layer]

        k, batch = weight.shape
        n_layers = len(params) // 2
        inputs = [xb]
        for layer in range(n_layers - 1):
            w, b = params[2 * layer], params[2 * layer + 1]
            torch.baddbmm(b.unsqueeze(1), inputs[-1], w, out=acts[layer])
            inputs.append(acts[layer].relu_())
        scale = weight / weight.sum(1, keepdim=True).clamp_min(1.0)
        w_out, b_out = params[-2], params[-1]
        h = inputs[-1]
        if self.n_classes == 2:
            z = _output_logit_difference(h, w_out, b_out)
            target = torch.index_select(self.y_float, 0, idx).view(k, batch)
            dz = (torch.sigmoid(z) - target) * scale
            grads = [torch.einsum("kb,kbh->kh", dz, h).unsqueeze(-1), dz.sum(1, keepdim=True)]
            d_input = dz.unsqueeze(-1) * w_out.squeeze(-1).unsqueeze(1) if n_layers > 1 else None
        else:
            z = torch.baddbmm(b_out.unsqueeze(1), h, w_out)
            dz = torch.softmax(z, dim=-1)
            dz.view(k * batch, -1)[torch.arange(k * batch, device=z.device),
                                   torch.index_select(self.y, 0, idx)] -= 1.0
            dz.mul_(scale.unsqueeze(-1))
            grads = [torch.bmm(h.transpose(1, 2), dz, out=out(n_layers - 1)), dz.sum(1)]
            d_input = torch.bmm(dz, w_out.transpose(1, 2)) if n_layers > 1 else None
        for layer in range(n_layers - 2, -1, -1):
            w = params[2 * layer]
            d_pre = torch.ops.aten.threshold_backward(d_input, inputs[layer + 1], 0)
            grads = [torch.bmm(inputs[layer].transpose(1, 2), d_pre, out=out(layer)),
                     d_pre.sum(1), *grads]
            if layer > 0:
                d_input = torch.bmm(d_pre, w.transpose(1, 2))
        return grads

    @torch.no_grad()
    def _adam_step(self, params, grads, exp_avg, exp_avg_sq, step_count, active,
                   scratch: Sequence[torch.Tensor] | None = None) -> None:
        """One Adam step of the active models, in place; the others do not move.

        ``grads`` may be overwritten (the first layer's penalty is added to it). ``scratch``
        holds one buffer shaped like each parameter for the step's temporaries; without it they
        are allocated. Buffer or not, the arithmetic is the same, so the results are too.
        """
        cfg = self.config
        beta1, beta2 = cfg.betas
        # Models that have ended their epoch take the step like the others and are then put
        # back, row by row: the active ones see the same arithmetic whichever companions share
        # their chunk, and no model-sized temporaries are needed (out-of-place updates with
        # torch.where cost six such tensors per parameter: 300 MB a step for 256 models of 765
        # genes).
        idle = torch.nonzero(~active).squeeze(1)
        step_count += active.to(step_count.dtype)
        t = step_count.clamp_min(1.0)
        step_size = cfg.lr / (1.0 - beta1**t)
        bias_correction2_sqrt = torch.sqrt(1.0 - beta2**t)
        for i, (p, g, m, v) in enumerate(zip(params, grads, exp_avg, exp_avg_sq, strict=True)):
            kept = [x.index_select(0, idle) for x in (p, m, v)] if idle.numel() else []
            tmp = torch.empty_like(p) if scratch is None else scratch[i]
            if i == 0 and cfg.weight_decay:
                g = g.add_(torch.mul(p, cfg.weight_decay, out=tmp))
            if i == 0 and cfg.l1:
                g = g.add_(torch.sign(p, out=tmp).mul_(cfg.l1))
            shape = (-1,) + (1,) * (p.dim() - 1)
            m.lerp_(g, 1.0 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
            denom = torch.sqrt(v, out=tmp).div_(bias_correction2_sqrt.view(shape))
            denom.add_(cfg.eps).mul_((1.0 / step_size).view(shape))
            p.addcdiv_(m, denom, value=-1.0)
            if kept:
                for x, before in zip((p, m, v), kept, strict=True):
                    x.index_copy_(0, idle, before)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def logits(self, params: Sequence[torch.Tensor], X: torch.Tensor | None = None
               ) -> torch.Tensor:
        """Logits of every model on ``X`` (default: all samples): ``[k, n]`` or ``[k, n, C]``."""
        X = self.X if X is None else X
        k = params[0].shape[0]
        blocks = []
        for start in range(0, X.shape[0], self.eval_batch_size):
            xb = X[start : start + self.eval_batch_size]
            blocks.append(self.forward(params, xb.unsqueeze(0).expand(k, -1, -1)))
        return torch.cat(blocks, dim=1)

    @torch.no_grad()
    def margins(self, params: Sequence[torch.Tensor]) -> np.ndarray:
        """Margins ``[k, n]`` of every model on every sample (float32 numpy)."""
        return margins_from_logits(self.logits(params), self.y).float().cpu().numpy()
