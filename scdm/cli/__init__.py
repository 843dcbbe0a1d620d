"""Command line: ``scdm run`` — datamodels or TRAK end to end on an .h5ad (or bundled data) —
and the scheduler-friendly pieces ``scdm store init``, ``scdm train``, ``scdm worker`` (a
user's own ``main(index, logdir)``, MadryLab's contract), ``scdm fit``, ``scdm status``.

One module per subcommand, each with ``add_parser(sub)`` and ``execute(args)``; they adapt
arguments to the library and restate none of its defaults or rules.
"""

from __future__ import annotations

import argparse
import sys

from . import fit, run, status, store, train, worker

COMMANDS = {"run": run, "store": store, "train": train, "worker": worker, "fit": fit,
            "status": status}
# what a command can get wrong in its input: a message and exit status 2, no traceback
INPUT_ERRORS = (KeyError, ValueError, TypeError, FileNotFoundError, PermissionError, ImportError,
                MemoryError)


def main(argv: list[str] | None = None) -> int:
    """Run ``scdm`` with ``argv`` (default: the process's arguments); returns the exit status."""
    parser = argparse.ArgumentParser(prog="scdm", description="single-cell datamodels")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.add_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    args, unknown = parser.parse_known_args(argv)
    if (unknown or extra) and args.command != "worker":
        parser.error(f"unrecognized arguments: {' '.join([*unknown, *extra])} (arguments for "
                     "a user's script go to scdm worker)")
    args.main_args = [*unknown, *extra]  # for the user's main() (scdm worker)
    try:
        return COMMANDS[args.command].execute(args)
    except INPUT_ERRORS as err:
        message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        if args.command == "run":
            message = run.as_flags(message)
        print(f"scdm {args.command}: error: {message}", file=sys.stderr)
        return 2
