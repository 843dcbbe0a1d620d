"""One view of an attribution result, datamodels or TRAK: ``τ(j, i)``, the effect of training
sample ``i`` on target ``j``'s margin, applied to weight matrices without forming it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from anndata import AnnData
from scipy import sparse

from ..trak._lowrank import ClassFactors
from ._recorded import one_view


@dataclass
class Attribution:
    """``τ`` (rows = targets, columns = training samples) of ``adata.uns[key]``.

    From ``adata.obsp[key]`` when it is there (datamodels always; TRAK up to ``max_obsp``
    cells), else from TRAK's per-checkpoint factors ``τ = mean_c A_c A_cᵀ · diag(q)``, so the
    ``n × n`` matrix is never formed for large data. Sums include each target's own term
    ``diagonal``; callers that want other samples only subtract it.
    """

    method: str
    diagonal: np.ndarray  # τ(j, j): 0 where the fit absorbed it (datamodels), else TRAK's
    W: np.ndarray | sparse.spmatrix | None = None
    # tensors, or memory maps of the store's features (read in row blocks: large data)
    factors: Sequence[torch.Tensor] | Sequence[np.ndarray] | None = None
    q: np.ndarray | None = None

    def target_sums(self, R: np.ndarray) -> np.ndarray:
        """``τᵀ R``: for each training sample, its influence summed over targets with weights
        ``R`` (``n × r``): the effect of including it on each weighted set of targets."""
        R = np.asarray(R, dtype=np.float64)
        if self.W is not None:
            return np.asarray(self.W.T @ R, dtype=np.float64)
        return self._factors()[1][:, None] * self._mean_gram(R)

    def class_sums(self, B: np.ndarray) -> np.ndarray:
        """``τ B``: for each target, the summed influence of the training samples weighted by
        ``B`` (``n × r``, e.g. a one-hot class matrix: each class's total push)."""
        B = np.asarray(B, dtype=np.float64)
        if self.W is not None:
            return np.asarray(self.W @ B, dtype=np.float64)
        return self._mean_gram(self._factors()[1][:, None] * B)

    def _factors(self) -> tuple[Sequence[torch.Tensor] | Sequence[np.ndarray], np.ndarray]:
        if self.factors is None or self.q is None:
            raise RuntimeError("an Attribution without W needs TRAK's factors and q.")
        return self.factors, self.q

    def _mean_gram(self, B: np.ndarray) -> np.ndarray:
        factors = self._factors()[0]
        if not isinstance(factors[0], torch.Tensor):  # streamed: A Aᵀ B with A = [F_c] / √K
            A = ClassFactors(factors, np.arange(factors[0].shape[0]))
            Bt = torch.as_tensor(B, dtype=torch.float32)
            return A.matmul(A.rmatmul(Bt)).numpy().astype(np.float64)
        Bt = torch.as_tensor(B, dtype=factors[0].dtype, device=factors[0].device)
        out = torch.zeros(factors[0].shape[0], Bt.shape[1], dtype=Bt.dtype, device=Bt.device)
        for a in factors:
            out += torch.as_tensor(a) @ (torch.as_tensor(a).T @ Bt)  # tensors already
        return (out / len(factors)).cpu().numpy().astype(np.float64)


@one_view
def attribution(adata: AnnData, key: str = "datamodels", *, device: str = "auto"
                ) -> Attribution:
    """The attribution of ``adata.uns[key]`` as one view, datamodels or TRAK alike: what
    :func:`scdm.tl.label_issues`, :func:`scdm.tl.influence_removal` and :func:`scdm.tl.debias`
    read (``target_sums``, ``class_sums``, ``diagonal``). TRAK's ``n × n`` matrix is never
    formed when it was not kept: its per-checkpoint factors are read from the store (computed
    once and kept there). Raises with the call that computes it when there is none."""
    info = adata.uns.get(key)
    if not isinstance(info, dict) or "params" not in info:
        raise KeyError(f"adata.uns[{key!r}] holds no attribution; run scdm.tl.datamodels or "
                       f"scdm.tl.trak (key_added={key!r}) first.")
    method = str(info.get("method", "datamodels"))
    diagonal = np.zeros(adata.n_obs)
    if method == "trak":
        diagonal = np.asarray(info["self_influence"], dtype=np.float64)
    if key in adata.obsp:
        W = adata.obsp[key]
        if sparse.issparse(W):
            W = W.tocsr()
        return Attribution(method=method, diagonal=diagonal, W=W)
    if method != "trak":
        raise KeyError(f"adata.obsp[{key!r}] not found: the datamodels were trained but not "
                       "fitted; run scdm.tl.fit_datamodels(adata, key=...) first.")
    from ._trak import checkpoint_features, trak_factor_settings

    params = trak_factor_settings(adata, key)
    features = checkpoint_features(adata, key, proj_dim=int(params["proj_dim"]),
                                   damping=float(params["damping"]), device=device)
    return Attribution(method=method, diagonal=diagonal, factors=features.feature_maps(),
                       q=features.out_to_loss().mean(0).astype(np.float64))
