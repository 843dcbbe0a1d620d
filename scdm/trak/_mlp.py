"""TRAK features of scdm's stacked MLP ensembles in closed form, for all checkpoints at once.

For a ReLU MLP the gradient of the margin w.r.t. a weight matrix is an outer product
``a ⊗ δ`` (layer input, backpropagated signal). Projected with a Kronecker-structured matrix
whose column ``j`` is ``p_in[:, j] ⊗ p_out[:, j]`` (±1 entries, like a Rademacher
projection), it is ``(aᵀ P_in) ⊙ (δᵀ P_out)``: two small matrix products instead of forming
the ``in × out`` gradient of every example. Biases are projected densely. Every checkpoint has
its own matrices; the result equals the dense gradient times the dense Kronecker matrix
divided by ``sqrt(n_params)`` (tested).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch

from ._projection import projection_seed, random_matrix

PARTS = {"in": 0, "out": 1, "bias": 2}


def _layer_matrices(sizes: Sequence[int], proj_dim: int, seed: int, model_id: int, device):
    """Per layer ``(P_in [in, k], P_out [out, k], P_bias [out, k])`` of one checkpoint."""
    mats = []
    for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        mats.append(tuple(
            random_matrix(rows, proj_dim, kind="rademacher",
                          seed=projection_seed(seed, model_id, layer, PARTS[part]), device=device)
            for part, rows in (("in", fan_in), ("out", fan_out), ("bias", fan_out))))
    return mats


def dense_projection(sizes: Sequence[int], proj_dim: int, seed: int, model_id: int
                     ) -> torch.Tensor:
    """The dense ``n_params × proj_dim`` matrix that :func:`mlp_features` applies implicitly
    (parameters ordered W1 [in, out] row-major, b1, W2, b2, ...): for tests."""
    blocks = []
    for p_in, p_out, p_bias in _layer_matrices(sizes, proj_dim, seed, model_id, "cpu"):
        blocks.append(torch.einsum("ij,oj->ioj", p_in, p_out).reshape(-1, proj_dim))
        blocks.append(p_bias)
    return torch.cat(blocks)


def _forward(params: Sequence[torch.Tensor], X: torch.Tensor):
    """Layer inputs and pre-activations of all checkpoints on ``X`` ([K, B, width] each)."""
    n_layers = len(params) // 2
    inputs, pre = [X.unsqueeze(0).expand(params[0].shape[0], -1, -1)], []
    for layer in range(n_layers):
        w, b = params[2 * layer], params[2 * layer + 1]
        z = torch.baddbmm(b.unsqueeze(1), inputs[-1], w)
        pre.append(z)
        if layer < n_layers - 1:
            inputs.append(torch.relu(z))
    return inputs, pre


def _output_signal(z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d margin / d logits ``[K, B, out]`` and the out-to-loss term ``1 - p`` ``[K, B]``.

    One output unit is scdm's two-class logit difference ``z = logit_1 - logit_0``: the
    margin is ``±z`` and ``p = sigmoid(±z)``. Otherwise the margin is the correct logit minus
    the log-sum-exp of the others.
    """
    if z.shape[-1] == 1:
        sign = (2.0 * y.to(z.dtype) - 1.0).view(1, -1, 1)
        return sign.expand_as(z).clone(), torch.sigmoid(-sign * z).squeeze(-1)
    index = y.view(1, -1, 1).expand(z.shape[0], -1, 1)
    others = torch.softmax(z.scatter(-1, index, float("-inf")), dim=-1)
    signal = (-others).scatter(-1, index, 1.0)
    p = torch.softmax(z, dim=-1).gather(-1, index).squeeze(-1)
    return signal, 1.0 - p


class MLPProjection:
    """The projection matrices of some checkpoints of a stacked MLP ensemble, drawn once and
    applied to any block of examples (:meth:`block`): every row's features are the same
    whatever the blocks, and a caller can stream examples through them.

    Parameters
    ----------
    params
        Stacked parameters ``[W1 [K, in, h], b1 [K, h], ..., W_L, b_L]`` as
        :class:`scdm.ensemble.EnsembleTrainer` holds them.
    proj_dim, seed, model_ids
        Dimension of the projection, its seed and each checkpoint's id (default ``0..K-1``),
        which pick its matrices.
    """

    def __init__(self, params: Sequence[torch.Tensor], *, proj_dim: int, seed: int = 0,
                 model_ids: Sequence[int] | None = None):
        K = params[0].shape[0]
        ids = list(range(K)) if model_ids is None else [int(m) for m in model_ids]
        if len(ids) != K:
            raise ValueError(f"{len(ids)} model_ids for {K} checkpoints.")
        self.params = list(params)
        self.proj_dim = int(proj_dim)
        self.device = params[0].device
        self.sizes = [params[0].shape[1]] + [params[i].shape[-1]
                                             for i in range(0, len(params), 2)]
        n_params = sum(int(np.prod(p.shape[1:])) for p in params)
        self.scale = 1.0 / np.sqrt(n_params)
        mats = [_layer_matrices(self.sizes, proj_dim, seed, m, self.device) for m in ids]
        # [K, rows, k] per layer and part, so that all checkpoints project in one bmm
        self.stacked = [tuple(torch.stack([mats[c][layer][part] for c in range(K)])
                              for part in range(3)) for layer in range(len(self.sizes) - 1)]

    @torch.no_grad()
    def block(self, X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(G [K, b, proj_dim], q [K, b])`` of the examples ``X [b, d]``, ``y [b]``."""
        inputs, pre = _forward(self.params, X.to(self.device))
        delta, q = _output_signal(pre[-1], y.to(self.device))
        out = torch.zeros(delta.shape[0], delta.shape[1], self.proj_dim, device=self.device)
        for layer in range(len(self.sizes) - 2, -1, -1):
            p_in, p_out, p_bias = self.stacked[layer]
            out += torch.bmm(inputs[layer], p_in) * torch.bmm(delta, p_out)
            out += torch.bmm(delta, p_bias)
            if layer > 0:
                delta = torch.bmm(delta, self.params[2 * layer].transpose(1, 2))
                delta = delta * (pre[layer - 1] > 0)
        return out * self.scale, q


@torch.no_grad()
def mlp_features(params: Sequence[torch.Tensor], X: torch.Tensor, y: torch.Tensor, *,
                 proj_dim: int, seed: int = 0, model_ids: Sequence[int] | None = None,
                 batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected margin gradients and out-to-loss terms of every example for every checkpoint.

    Parameters
    ----------
    params
        Stacked parameters ``[W1 [K, in, h], b1 [K, h], ..., W_L, b_L]`` as
        :class:`scdm.ensemble.EnsembleTrainer` holds them.
    X, y
        Inputs ``[n, d]`` (as the models saw them) and class codes ``[n]``.
    proj_dim
        Dimension of the projection.
    seed, model_ids
        Projection seed and each checkpoint's id (default ``0..K-1``), which pick its matrices.
    batch_size
        Examples per step.

    Returns
    -------
    ``(G [K, n, proj_dim], q [K, n])``, float32 on the parameters' device.
    """
    projection = MLPProjection(params, proj_dim=proj_dim, seed=seed, model_ids=model_ids)
    K, n, device = params[0].shape[0], X.shape[0], params[0].device
    G = torch.empty(K, n, proj_dim, device=device)
    Q = torch.empty(K, n, device=device)
    for start in range(0, n, batch_size):
        rows = slice(start, min(start + batch_size, n))
        G[:, rows], Q[:, rows] = projection.block(X[rows], y[rows])
    return G, Q
