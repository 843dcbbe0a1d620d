"""Random projections of per-example gradients, in plain PyTorch.

A projection ``P`` (``grad_dim × proj_dim``) with independent ±1 (Rademacher) or standard
normal entries keeps inner products of gradients in expectation (Johnson–Lindenstrauss). It is
generated in blocks of rows from seeds derived from ``(seed, model_id, block)``, so memory
stays at one block however large the model, every process regenerates the same matrix, and a
checkpoint's projection never depends on how its examples were batched. When the whole matrix
fits in ``cache_bytes`` it is kept between calls.

The blocks are drawn with a CPU generator by default, so a projection is the same on every
device. A model too large for the cache (a full ResNet-9 at ``proj_dim`` 2048 is a 40 GB matrix)
regenerates every block for every batch, which a CPU generator makes the bottleneck of a GPU
run: ``generator="device"`` draws the blocks on the device itself (seeded the same way; the
numbers then differ between CPU and CUDA, so a save directory records which was used).
"""

from __future__ import annotations

import numpy as np
import torch

from .._checks import check_int

PROJECTIONS = ("rademacher", "normal")


def projection_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (checkpoint, layer, block): the projection of each part
    is drawn from its own seed, so it is the same however the work is split."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0]
               >> np.uint64(1))


GENERATORS = ("cpu", "device")


def random_matrix(rows: int, cols: int, *, kind: str, seed: int, device, dtype=torch.float32,
                  generator: str = "cpu") -> torch.Tensor:
    """A ``rows × cols`` matrix of ±1 or N(0, 1) entries from ``seed``, drawn by a CPU
    generator (the same numbers on every device) or, with ``generator="device"``, by
    ``device``'s own."""
    if generator not in GENERATORS:
        raise ValueError(f"generator must be one of {GENERATORS}, got {generator!r}.")
    where = torch.device("cpu") if generator == "cpu" else torch.device(device)
    rng = torch.Generator(device=where).manual_seed(seed)
    if kind == "rademacher":
        values = torch.randint(0, 2, (rows, cols), generator=rng, dtype=torch.int8,
                               device=where)
        matrix = values.to(dtype).mul_(2).sub_(1)
    elif kind == "normal":
        matrix = torch.randn(rows, cols, generator=rng, dtype=dtype, device=where)
    else:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {kind!r}.")
    return matrix.to(device)


ROW_BLOCK = 4096  # rows of P drawn from one seed: fixes the matrix whatever the memory settings


class RandomProjector:
    """Project ``[batch, grad_dim]`` gradients to ``[batch, proj_dim]``.

    ``P`` is drawn in blocks of :data:`ROW_BLOCK` rows, each from a seed derived from
    ``(seed, model_id, block)``: the matrix is the same whichever way it is generated or
    applied, and applying it block by block needs memory for one block
    (``ROW_BLOCK × proj_dim`` floats) besides the gradients.

    Parameters
    ----------
    grad_dim
        Length of the flattened gradient.
    proj_dim
        Dimension of the projection.
    seed
        Seed of the matrices; each ``model_id`` gets its own matrix.
    kind
        ``"rademacher"`` (±1) or ``"normal"``.
    device
        Where matrices are made and multiplied.
    cache_bytes
        Keep the whole matrix of the last ``model_id`` when it is at most this large.
    generator
        ``"cpu"`` (the same matrix on every device) or ``"device"`` (drawn where it is used:
        fast on a GPU for models too large to cache the matrix).
    """

    def __init__(self, grad_dim: int, proj_dim: int, *, seed: int = 0,
                 kind: str = "rademacher", device: str | torch.device = "cpu",
                 cache_bytes: int = 512 << 20, generator: str = "cpu"):
        check_int("proj_dim", proj_dim, 1)
        if kind not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {kind!r}.")
        if generator not in GENERATORS:
            raise ValueError(f"generator must be one of {GENERATORS}, got {generator!r}.")
        self.generator = generator
        self.grad_dim, self.proj_dim = int(grad_dim), int(proj_dim)
        self.seed, self.kind, self.device = int(seed), kind, torch.device(device)
        self.cache_bytes = cache_bytes
        self.n_blocks = -(-self.grad_dim // ROW_BLOCK)
        self._cached: tuple[int, torch.Tensor] | None = None

    def _rows(self, model_id: int, block: int) -> torch.Tensor:
        height = min(ROW_BLOCK, self.grad_dim - block * ROW_BLOCK)
        return random_matrix(height, self.proj_dim, kind=self.kind,
                             seed=projection_seed(self.seed, model_id, block), device=self.device,
                             generator=self.generator)

    def matrix(self, model_id: int) -> torch.Tensor:
        """The whole ``grad_dim × proj_dim`` matrix of ``model_id``."""
        if self._cached is not None and self._cached[0] == model_id:
            return self._cached[1]
        full = torch.cat([self._rows(model_id, b) for b in range(self.n_blocks)], dim=0)
        if 4 * full.numel() <= self.cache_bytes:
            self._cached = (model_id, full)
        return full

    def project(self, grads: torch.Tensor, model_id: int) -> torch.Tensor:
        """``grads @ P`` for ``model_id``'s matrix ``P``."""
        if grads.dim() != 2 or grads.shape[1] != self.grad_dim:
            raise ValueError(f"gradients must be [batch, {self.grad_dim}], got "
                             f"{tuple(grads.shape)}.")
        grads = grads.to(self.device, torch.float32)
        if 4 * self.grad_dim * self.proj_dim <= self.cache_bytes:
            return grads @ self.matrix(model_id)
        out = torch.zeros(grads.shape[0], self.proj_dim, device=self.device)
        for b in range(self.n_blocks):
            out += grads[:, b * ROW_BLOCK:(b + 1) * ROW_BLOCK] @ self._rows(model_id, b)
        return out
