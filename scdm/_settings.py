"""Package-wide settings (``scdm.settings``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MARGIN_DTYPES = ("float32", "float16")


@dataclass
class ScdmSettings:
    """Global defaults for scdm.

    Attributes
    ----------
    verbosity
        0 silences progress bars and info messages, 1 (default) shows progress bars,
        2 also logs chosen defaults (model counts, chunk sizes).
    store_dir
        Where :func:`scdm.tl.train_models` puts a store when ``store=None``. Each configuration
        gets its own sub-directory named after its fingerprint, so re-running the same call
        resumes and a different configuration never touches an existing store.
    max_memory
        Bytes a run may need (estimated before it starts); ``None``: 80 % of physical memory.
        :func:`scdm.tl.datamodels` and :func:`scdm.tl.trak` refuse larger runs and say what
        to do instead.
    max_hours
        Longest estimated run accepted (``None``: no limit): on CPU, and for datamodels on a
        GPU, calibrated by a short probe on the device; TRAK on a GPU by its 2-core reference.
    n_jobs
        Processes for work that splits into independent pieces: the null pairs of
        :func:`scdm.tl.subgroups` on classes of 5,000+ cells (same results however many).
        ``None``: all CPUs.
    margins_dtype
        How new stores keep margins: ``"float32"`` (default) or ``"float16"``, half the disk
        and page cache (the published datamodels' format; ~3 significant digits, enough for
        margins). A store keeps the dtype it was created with: resuming it under the other
        setting is refused (the error names the field); set it back or use another store.
    """

    verbosity: int = 1
    store_dir: Path = Path("scdm_stores")
    max_memory: float | None = None
    max_hours: float | None = 24.0
    n_jobs: int | None = None
    margins_dtype: str = "float32"

    def __setattr__(self, name: str, value) -> None:
        # a misspelt setting (scdm.settings.verbose = False) would otherwise be kept and
        # silently change nothing
        if name not in self.__dataclass_fields__:
            raise AttributeError(
                f"scdm.settings has no setting {name!r}; the settings are "
                f"{', '.join(self.__dataclass_fields__)}"
                + (" (verbosity=0 silences progress bars)" if "verbos" in name else "") + ".")
        if name == "margins_dtype" and value not in MARGIN_DTYPES:
            raise ValueError(f"margins_dtype must be one of {MARGIN_DTYPES}, got {value!r}.")
        super().__setattr__(name, value)

    def progress(self, verbose: bool | None) -> bool:
        """Whether a loop should show a progress bar, given a function's ``verbose`` argument."""
        return self.verbosity >= 1 if verbose is None else bool(verbose)


settings = ScdmSettings()
