"""What the subcommands share: stage timings, defaults read from the library, tl's messages
shown as they come, folders checked before work."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
import time
from pathlib import Path


class Stages:
    """Times the stages of a run and says when each starts and ends."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.seconds: dict[str, float] = {}
        self.started = 0

    @contextlib.contextmanager
    def __call__(self, name: str):
        self.started += 1
        number = self.started
        if not self.quiet:
            print(f"[{number}] {name} ...", flush=True)
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start
        if not self.quiet:
            print(f"[{number}] {name}: {self.seconds[name]:.1f} s", flush=True)

    def split(self, name: str, parts: dict[str, float]) -> None:
        """Stage ``name`` as the steps the tool itself timed (e.g. tl.datamodels' train, fit
        and embed), in its place."""
        self.seconds = {k: v for stage, t in self.seconds.items()
                        for k, v in (parts.items() if stage == name else ((stage, t),))}
        if not self.quiet:
            print("    " + ", ".join(f"{k}: {v:.1f} s" for k, v in parts.items()), flush=True)


def tl_default(func_name: str, parameter: str):
    """The default of a ``scdm.tl`` function's parameter: the CLI restates none of them."""
    import scdm

    return inspect.signature(getattr(scdm.tl, func_name)).parameters[parameter].default


def fill_defaults(args, options) -> None:
    """Options left unset (``None``) take the defaults of the ``tl`` functions they are passed
    to: ``options`` holds ``(option, tl function, parameter)``."""
    for option, func, parameter in options:
        if getattr(args, option, "absent") is None:
            setattr(args, option, tl_default(func, parameter))


def columns(names) -> str:
    """Column names for a message: the first 12 and how many in all."""
    names = [str(n) for n in names]
    return ", ".join(names[:12]) + (f", … ({len(names)} in all)" if len(names) > 12 else "")


@contextlib.contextmanager
def library_messages(show: bool):
    """The library's log messages (its cost estimate, the defaults it chose, its scores) on
    stdout while a command runs, as lines of their own; nothing with ``show=False``."""
    if not show:
        yield
        return
    logger = logging.getLogger("scdm")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("    %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def check_folder(flag: str, folder: Path) -> None:
    """A folder the run writes can be made and written: the nearest part of its path that
    exists is a writable directory (mkdir would otherwise fail after the checks, with a bare
    OSError)."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{flag} {folder} is a file; give a directory (created if missing).")
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{flag} {folder} cannot be made: {existing} is a file, not a "
                         "directory; give a path under a directory.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {folder} cannot be made: {existing} is not writable; "
                              "give a directory you can write to.")
