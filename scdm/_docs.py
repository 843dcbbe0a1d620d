"""Parameter descriptions shared by the public functions (scanpy's ``_doc_params``).

A docstring line that holds only ``{name}`` (indented as a parameter) is replaced by the text of
``name``, indented like that line, so that a parameter is described once however many
functions take it. Other braces in docstrings (``{"epochs": 60}``) are left alone.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

SNIPPETS = {
    "training_inputs": """\
adata
    Observations × features: log-normalised expression in ``.X``, or pass ``use_rep``
    (e.g. ``"X_pca"``) or ``layer``.
label_key
    Column of ``adata.obs`` with the class to predict (e.g. disease vs control).
use_rep
    Key of ``adata.obsm`` to train on (e.g. ``"X_pca"``), or ``"X"`` (or ``None``) for ``.X``.
    ``"auto"`` (the default): ``.X``, unless it is mostly noise (its components above the
    noise edge hold under 15 % of its variance, as in thousands of sparse genes) and has at
    least 100 features, then its PCs (``obsm["X_pca"]`` where present, else computed and
    stored there as ``sc.pp.pca`` does).
    The measure and the choice are recorded in ``uns[key_added]["params"]["input_choice"]``
    (:func:`scdm._anndata.choose_input`; RESULTS.md, session 28).
layer
    Layer to train on instead of ``.X``.
group_key
    Column of ``adata.obs`` with groups (e.g. donors) that are kept in or out of a training
    set together; needed whenever observations of a group are not independent.
stratify_key
    Column of ``adata.obs`` with a nuisance (e.g. batch) to hold fixed across masks: every
    mask trains on ``alpha`` of each (class, batch) cell. Without it, a mask that happens to
    hold more diseased cells of one batch teaches its model that the batch predicts disease,
    and that chance correlation dominates the attribution of every cell in the batch.
    Recommended whenever such a nuisance is known.
alpha
    Fraction of observations (or groups) each model trains on, in (0, 1).""",
    "train_kwds": """\
train_kwds
    More arguments of :func:`scdm.tl.train_models` (``config``, ``mask_mode``, ``scale``,
    ``backend``, ``min_heldout``); the model settings of ``config`` (``hidden``, ``epochs``,
    ``lr``, ``weight_decay``, ...) may also be given directly.""",
    "device": """\
device
    ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.""",
    "verbose_copy": """\
verbose
    Progress bars (default: ``scdm.settings.verbosity >= 1``).
copy
    Return a copy instead of writing into ``adata``.""",
    "show_save": """\
show
    Show the figure (default: when it is neither saved nor returned), as in scanpy.
save
    File path to save the figure to (any format matplotlib writes).
return_fig
    Return the Figure instead of the Axes.""",
    "show_save_ax": """\
show
    Show the figure (default: when it is neither saved nor returned), as in scanpy.
save
    File path to save the figure to (any format matplotlib writes).
ax
    Axes to draw into (default: a new figure).
return_fig
    Return the Figure instead of the Axes.""",
}

_PLACEHOLDER = re.compile(r"^(?P<indent>[ \t]*)\{(?P<name>\w+)\}[ \t]*$", re.M)


def doc_params(func: F) -> F:
    """Fill ``func``'s ``{name}`` lines from :data:`SNIPPETS` (an unknown name is an error)."""

    def fill(match: re.Match) -> str:
        name = match["name"]
        if name not in SNIPPETS:
            raise KeyError(f"{func.__qualname__}'s docstring asks for an unknown snippet "
                           f"{{{name}}}; known: {sorted(SNIPPETS)}.")
        return textwrap.indent(SNIPPETS[name], match["indent"])

    if func.__doc__:
        func.__doc__ = _PLACEHOLDER.sub(fill, func.__doc__)
    return func
