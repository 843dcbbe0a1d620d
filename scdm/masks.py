"""Subset sampling: which samples each model trains on.

A mask is a boolean row over the samples (observations); ``True`` means "in the training set of
this model". The mask of model ``m`` is a pure function of ``(random_state, m)`` and the sampler's
configuration, so any subset of models can be (re)generated anywhere, in any order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from ._checks import check_fraction
from ._seeding import MASK_STREAM, check_random_state, model_rng

MaskMode = Literal["balanced", "bernoulli"]
MASK_MODES: tuple[str, ...] = ("balanced", "bernoulli")


def check_alpha(alpha: float) -> float:
    """Validate the subset fraction ``alpha``: a number strictly between 0 and 1."""
    return check_fraction("alpha", alpha, why=" (the fraction of samples each model trains "
                          "on; the datamodels papers use 0.1-0.75, 0.5 is the default)")


class MaskSampler:
    """Draw training subsets, reproducibly per model.

    Parameters
    ----------
    labels
        Integer class code per observation (length ``n_obs``).
    alpha
        Fraction of samples (or of groups, with ``groups``) each model trains on.
    groups
        Optional integer group code per observation (e.g. donor). All observations of a group
        are in or out of a training set together, and a group must not span two classes.
    mode
        ``"balanced"`` (default): exactly ``round(alpha * n_c)`` units of each class ``c``, so
        every model sees the same class proportions. ``"bernoulli"``: every unit independently
        with probability ``alpha`` (the original datamodels scheme).
    strata
        Optional integer code per observation of a nuisance (e.g. batch) to hold fixed:
        balanced masks then draw ``alpha`` of every (class, stratum) cell, so no mask carries a
        chance correlation between the nuisance and the label for models to pick up (which
        otherwise shows in every datamodel). Fractional cell sizes are rounded systematically
        with one random offset per mask (see :meth:`sample_units`).
    random_state
        Seed of the mask stream.
    """

    def __init__(
        self,
        labels: np.ndarray,
        alpha: float,
        *,
        groups: np.ndarray | None = None,
        mode: MaskMode = "balanced",
        strata: np.ndarray | None = None,
        random_state: int = 0,
    ) -> None:
        self.alpha = check_alpha(alpha)
        if mode not in MASK_MODES:
            raise ValueError(f"mode must be one of {MASK_MODES}, got {mode!r}.")
        self.mode = mode
        self.random_state = check_random_state(random_state)
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.size == 0:
            raise ValueError("labels must be a non-empty 1-d array of class codes.")
        self.n_obs = labels.shape[0]

        if groups is None:
            self.unit_of_obs = np.arange(self.n_obs)
            unit_labels = labels
        else:
            groups = np.asarray(groups)
            if groups.shape != labels.shape:
                raise ValueError(
                    f"groups has shape {groups.shape} but labels has shape {labels.shape}."
                )
            _, self.unit_of_obs = np.unique(groups, return_inverse=True)
            n_units = int(self.unit_of_obs.max()) + 1
            first = np.full(n_units, -1)
            first[self.unit_of_obs[::-1]] = np.arange(self.n_obs)[::-1]
            unit_labels = labels[first]
            spanning = np.flatnonzero(
                np.bincount(self.unit_of_obs, minlength=n_units)
                != np.bincount(
                    self.unit_of_obs[labels == unit_labels[self.unit_of_obs]], minlength=n_units
                )
            )
            if spanning.size:
                bad = np.unique(groups)[spanning[:5]].tolist()
                raise ValueError(
                    f"{spanning.size} group(s) span more than one label class (e.g. {bad}); "
                    "group-aware masks put a whole group in or out of a training set, so each "
                    "group must carry one label. Check group_key/label_key, or drop group_key."
                )
        self.n_units = int(self.unit_of_obs.max()) + 1
        self.unit_labels = np.asarray(unit_labels)
        self.class_units = [
            np.flatnonzero(self.unit_labels == c) for c in np.unique(self.unit_labels)
        ]
        self.cell_units: list[list[np.ndarray]] | None = None
        if strata is not None:
            self.cell_units = self._strata_cells(np.asarray(strata), groups is not None)
        if mode == "balanced":
            for units in self.class_units:
                k = self.n_train_units(units.size)
                if k < 1 or k >= units.size:
                    unit = "groups" if groups is not None else "samples"
                    raise ValueError(
                        f"a class with {units.size} {unit} cannot be split with alpha="
                        f"{self.alpha}: each model would train on {k} of them, which leaves "
                        "nothing to train on or nothing held out. Use more samples per class, "
                        "or an alpha closer to 0.5."
                    )

    def _strata_cells(self, strata: np.ndarray, grouped: bool) -> list[list[np.ndarray]]:
        """Per class, the units of each stratum (the same strata order for every class)."""
        if strata.shape != (self.n_obs,):
            raise ValueError(f"strata has shape {strata.shape}, expected ({self.n_obs},).")
        if self.mode != "balanced":
            raise ValueError("strata need mode='balanced' (Bernoulli masks have no per-cell "
                             "counts to balance).")
        _, codes = np.unique(strata, return_inverse=True)
        unit_strata = np.zeros(self.n_units, dtype=np.int64)
        unit_strata[self.unit_of_obs] = codes
        if grouped and np.any(unit_strata[self.unit_of_obs] != codes):
            raise ValueError("a group spans several strata; every group (donor) must lie in "
                             "one stratum (e.g. one batch), or drop the stratification.")
        return [[units[unit_strata[units] == s] for s in range(int(codes.max()) + 1)]
                for units in self.class_units]

    def n_train_units(self, n_class_units: int) -> int:
        """Units of a class that one balanced mask trains on."""
        return round(self.alpha * n_class_units)

    def sample_units(self, model_index: int) -> np.ndarray:
        """Boolean training mask over units (groups, or observations) for one model."""
        rng = model_rng(self.random_state, MASK_STREAM, model_index)
        if self.mode == "bernoulli":
            return rng.random(self.n_units) < self.alpha
        mask = np.zeros(self.n_units, dtype=bool)
        if self.cell_units is not None:
            # Systematic rounding with one offset per mask, shared by all classes: each class
            # gets round(alpha * n_c) units in total, a stratum of one unit is in alpha of the
            # masks, and equal-sized (class, stratum) cells are rounded the same way in every
            # class, so no mask tilts a stratum towards one class (independent rounding did,
            # by one unit, and that was enough to bring the batches back into the datamodels).
            offset = rng.random()
            for cells in self.cell_units:
                cumulative = np.floor(self.alpha * np.cumsum([c.size for c in cells]) + offset)
                counts = np.diff(np.concatenate([[0.0], cumulative])).astype(np.int64)
                for units, k in zip(cells, counts, strict=True):
                    mask[units[rng.choice(units.size, size=k, replace=False)]] = True
            return mask
        for units in self.class_units:
            chosen = rng.choice(units.size, size=self.n_train_units(units.size), replace=False)
            mask[units[chosen]] = True
        return mask

    def sample(self, model_indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Boolean training masks over observations, one row per model index."""
        model_indices = np.asarray(model_indices, dtype=np.int64).reshape(-1)
        out = np.empty((model_indices.size, self.n_obs), dtype=bool)
        for row, m in enumerate(model_indices):
            out[row] = self.sample_units(int(m))[self.unit_of_obs]
        return out

    def heldout_counts(self, n_models: int, chunk_size: int = 1024) -> np.ndarray:
        """How many of the first ``n_models`` models hold out each observation."""
        counts = np.zeros(self.n_obs, dtype=np.int64)
        for start in range(0, n_models, chunk_size):
            stop = min(start + chunk_size, n_models)
            counts += (~self.sample(np.arange(start, stop))).sum(axis=0)
        return counts

    def check_heldout(
        self, n_models: int, min_heldout: int, obs_names: Sequence[str] | None = None
    ) -> np.ndarray:
        """Raise if some observation is held out of fewer than ``min_heldout`` models.

        A target's datamodel is fitted on the models that did not train on it, so too few
        of them make its regression meaningless. Returns the counts otherwise.
        """
        counts = self.heldout_counts(n_models)
        worst = int(np.argmin(counts))
        if counts[worst] < min_heldout:
            name = obs_names[worst] if obs_names is not None else worst
            needed = int(np.ceil(min_heldout / (1.0 - self.alpha) * 1.5))
            raise ValueError(
                f"sample {name!r} is held out of only {counts[worst]} of {n_models} models, "
                f"fewer than min_heldout={min_heldout}; its datamodel would be fitted on too "
                f"few models. Train more models (n_models >= ~{needed}) or lower alpha."
            )
        return counts
