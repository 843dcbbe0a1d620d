"""Package-wide settings (``scdm.settings``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
    """

    verbosity: int = 1
    store_dir: Path = Path("scdm_stores")

    def progress(self, verbose: bool | None) -> bool:
        """Whether a loop should show a progress bar, given a function's ``verbose`` argument."""
        return self.verbosity >= 1 if verbose is None else bool(verbose)


settings = ScdmSettings()
