"""Filling stores: recipes, the idempotent worker, the local loop and Ray — one concept.

- :func:`fill_store` trains the incomplete models of a store, here (:class:`LocalBackend`) or
  as Ray tasks (:class:`RayBackend`), following a :class:`TrainingRecipe`, a user's own
  ``main(index, logdir)`` (:class:`UserMain`, MadryLab's contract), or the recipe the store
  carries.
- :func:`run_worker` / :func:`run_main_worker` are the workers that ``scdm train``, ``scdm
  worker``, scheduler jobs and Ray tasks run on a model range (with a heartbeat for ``scdm
  status``).
- Recipes: :class:`MLPRecipe` (``tl.train_models``' ensembles), ``scdm.vision.ImageRecipe``;
  :func:`register_recipe` adds a kind; :func:`write_recipe` / :func:`read_recipe` save and
  load one in a store.
- :func:`fill_features` / :func:`run_feature_worker` write ``tl.trak``'s features of a store's
  kept checkpoints, here or as Ray tasks; :func:`embedding_executor` runs its embedding's
  per-checkpoint products here or as Ray tasks (:class:`RayCheckpointProducts`).
"""

from ._fill import (
    Backend,
    LocalBackend,
    RayBackend,
    as_backend,
    embedding_executor,
    fill_features,
    fill_store,
)
from ._loop import train_into_store
from ._ray import RayCheckpointProducts
from ._recipes import (
    RECIPES,
    MaskSource,
    MLPRecipe,
    RepeatedMasks,
    Trainer,
    TrainingRecipe,
    read_recipe,
    register_recipe,
    targets_are_training_samples,
    write_recipe,
)
from ._worker import (
    WORKERS_DIR,
    UserMain,
    check_models,
    check_row,
    parse_range,
    run_feature_worker,
    run_main_worker,
    run_worker,
)

__all__ = [
    "RECIPES",
    "WORKERS_DIR",
    "Backend",
    "LocalBackend",
    "MLPRecipe",
    "MaskSource",
    "RayBackend",
    "RayCheckpointProducts",
    "RepeatedMasks",
    "Trainer",
    "TrainingRecipe",
    "UserMain",
    "as_backend",
    "check_models",
    "check_row",
    "embedding_executor",
    "fill_features",
    "fill_store",
    "parse_range",
    "read_recipe",
    "register_recipe",
    "run_feature_worker",
    "run_main_worker",
    "run_worker",
    "targets_are_training_samples",
    "train_into_store",
    "write_recipe",
]
