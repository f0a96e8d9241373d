"""Recipes: what an experiment with a named algorithm or data set needs.

``metabridge train --algo NAME --dataset NAME`` and everything around it
(validation, evaluation, run directories, export) look names up here; see
:mod:`metabridge.recipes.registry` for how to add your own.

>>> from metabridge.recipes import get_recipe, recipe_names
>>> "reptile" in recipe_names()
True
"""
from metabridge.recipes.registry import (
    DATASET_GROUP,
    PLUGINS_ENV,
    RECIPE_GROUP,
    DatasetRecipe,
    Recipe,
    Sources,
    dataset_names,
    get_dataset,
    get_recipe,
    load_plugins,
    recipe_names,
    recipes_with,
    register_dataset,
    register_recipe,
)
from metabridge.recipes import datasets as _datasets  # noqa: E402  (registers the built-in data sets)
from metabridge.recipes import algorithms as _algorithms  # noqa: E402  (registers the built-in algorithms)
from metabridge.recipes.algorithms import DEFAULT_ALGO, DEFAULT_COMPARE, classifier_model, embedding_model, siamese_encoder

__all__ = ["DATASET_GROUP", "DEFAULT_ALGO", "DEFAULT_COMPARE", "PLUGINS_ENV", "RECIPE_GROUP", "DatasetRecipe", "Recipe", "Sources",
           "classifier_model", "dataset_names", "embedding_model", "get_dataset", "get_recipe", "load_plugins",
           "recipe_names", "recipes_with", "register_dataset", "register_recipe", "siamese_encoder"]
