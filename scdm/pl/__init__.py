"""Plotting: attribution embeddings per class, subgroups (markers, make-up, reproducibility),
influencers, similarity, regularisation paths, evaluation, data cleaning."""

from ._cleaning import debias, label_issues
from ._evaluation import lds, validation
from ._plots import embedding, influencers, path, similarity
from ._report import report
from ._subgroups import composition, markers, reproducibility

__all__ = ["composition", "debias", "embedding", "influencers", "label_issues", "lds",
           "markers", "path",
           "report", "reproducibility", "similarity", "validation"]
