"""The recipe registry: algorithm and dataset names → what an experiment needs.

The training loop, evaluation, run directories and the command line know no
algorithm or dataset by name: they ask this registry. A :class:`Recipe`
builds an algorithm (model factory + algorithm factory) and carries its
defaults; a :class:`DatasetRecipe` builds the samplers of a data set, its
default network and its defaults.

Your own algorithm or data set joins with one call, from any of three places:

- in your code: ``register_recipe(Recipe(...))`` before running;
- from files or modules named in the ``METABRIDGE_PLUGINS`` environment
  variable (separated by ``os.pathsep``), imported when the registry is first
  read — so ``METABRIDGE_PLUGINS=my_algo.py metabridge train --algo my-algo`` works;
- from installed packages, through the entry-point groups
  ``metabridge.recipes`` and ``metabridge.datasets`` (each entry point names a
  :class:`Recipe` / :class:`DatasetRecipe`, or a function returning one).

>>> get_recipe("maml").default_dataset
'sinusoid'
>>> "omniglot" in dataset_names()
True
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from metabridge.algorithms.base import Algorithm

RECIPE_GROUP = "metabridge.recipes"
DATASET_GROUP = "metabridge.datasets"
PLUGINS_ENV = "METABRIDGE_PLUGINS"
TASKS = ("classification", "regression")


@dataclass
class Sources:
    """The samplers of one experiment. ``train`` yields training batches
    (``train.batch(step, meta_batch)`` for episodes, ``train.batch(step)`` for
    pairs); ``test`` and ``val`` (or None) have ``episode(i)``; ``describe`` is
    recorded with every result so a number never loses its data protocol."""

    input_shape: tuple
    train: Any = None
    test: Any = None
    val: Any = None
    describe: dict | None = None


@dataclass(frozen=True)
class DatasetRecipe:
    """A data set by name.

    ``sources(config, trains_on)`` builds its :class:`Sources` for a resolved
    config (``trains_on`` is the algorithm's ``"episodes"`` or ``"pairs"``);
    ``backbone(input_shape, out_features)`` is the network algorithms use on it
    unless they bring their own (``out_features=None``: an embedding network);
    ``task`` is ``"classification"`` (cross-entropy, accuracy) or
    ``"regression"`` (MSE); ``defaults`` fill the config fields left unset.
    """

    name: str
    sources: Callable[[Any, str], Sources]
    backbone: Callable[[tuple, int | None], Any]
    task: str = "classification"
    defaults: dict = field(default_factory=dict)
    description: str = ""

    @property
    def loss(self) -> str:
        """The training loss of its tasks: ``"cross_entropy"`` or ``"mse"``."""
        return "cross_entropy" if self.task == "classification" else "mse"


@dataclass(frozen=True)
class Recipe:
    """An algorithm by name.

    ``model(config, input_shape, dataset)`` builds the network and
    ``algorithm(config, model, dataset)`` the :class:`~metabridge.algorithms.Algorithm`
    around it (``dataset`` is the :class:`DatasetRecipe`). ``algorithm_class``
    tells what the algorithm needs before anything is built (its
    ``trains_on``, ``adapts`` and ``any_ways``). ``defaults`` fill unset config
    fields on every data set, ``dataset_defaults[name]`` on one data set (they
    win over the data set's own). ``options`` are config options only some
    algorithms take (e.g. ``"transductive"``); ``validate(config)`` adds checks
    of a resolved config. ``tasks`` are the data set tasks it can learn.
    """

    name: str
    algorithm_class: type
    model: Callable[[Any, tuple, DatasetRecipe], Any]
    algorithm: Callable[[Any, Any, DatasetRecipe], Algorithm]
    default_dataset: str
    tasks: tuple[str, ...] = TASKS
    defaults: dict = field(default_factory=dict)
    dataset_defaults: dict = field(default_factory=dict)
    options: tuple[str, ...] = ()
    validate: Callable[[Any], None] | None = None
    description: str = ""

    @property
    def trains_on(self) -> str:
        return self.algorithm_class.trains_on

    @property
    def adapts(self) -> bool:
        return self.algorithm_class.adapts

    @property
    def any_ways(self) -> bool:
        return self.algorithm_class.any_ways

    def defaults_for(self, dataset: DatasetRecipe) -> dict:
        """Config defaults on ``dataset``: the data set's, then the recipe's, then the recipe's for that data set."""
        return {**dataset.defaults, **self.defaults, **self.dataset_defaults.get(dataset.name, {})}


_recipes: dict[str, Recipe] = {}
_datasets: dict[str, DatasetRecipe] = {}
_plugins_loaded = False
_lock = threading.RLock()


def _add(table: dict, kind: str, item, replace: bool):
    """Put ``item`` in ``table`` under its name (checked), refusing to shadow another one unless ``replace``."""
    name = item.name
    if not isinstance(name, str) or not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"Expected a {kind} name of letters, digits, '-' or '_'. Received: name={name!r}")
    with _lock:
        if name in table and not replace and table[name] is not item:
            raise ValueError(f"Expected a new {kind} name (or replace=True). Received: {name!r}, "
                             "which is already registered")
        table[name] = item
    return item


def register_recipe(recipe: Recipe, replace: bool = False) -> Recipe:
    """Make ``recipe`` available by its name (``--algo`` on the command line).

    >>> register_recipe(Recipe("my-algo", MyAlgorithm, model=..., algorithm=...,
    ...                        default_dataset="digits"))     # doctest: +SKIP
    """
    if not isinstance(recipe, Recipe):
        raise ValueError(f"Expected a metabridge.recipes.Recipe. Received: {type(recipe).__name__}")
    if not (isinstance(recipe.algorithm_class, type) and issubclass(recipe.algorithm_class, Algorithm)):
        raise ValueError(f"Expected algorithm_class to be a subclass of metabridge.algorithms.Algorithm. "
                         f"Received: {recipe.algorithm_class!r} for {recipe.name!r}")
    bad = [t for t in recipe.tasks if t not in TASKS]
    if bad or not recipe.tasks:
        raise ValueError(f"Expected tasks among {TASKS}. Received: tasks={recipe.tasks!r} for {recipe.name!r}")
    return _add(_recipes, "recipe", recipe, replace)


def register_dataset(dataset: DatasetRecipe, replace: bool = False) -> DatasetRecipe:
    """Make ``dataset`` available by its name (``--dataset`` on the command line).

    >>> register_dataset(DatasetRecipe("my-data", sources=..., backbone=...))   # doctest: +SKIP
    """
    if not isinstance(dataset, DatasetRecipe):
        raise ValueError(f"Expected a metabridge.recipes.DatasetRecipe. Received: {type(dataset).__name__}")
    if dataset.task not in TASKS:
        raise ValueError(f"Expected task in {TASKS}. Received: task={dataset.task!r} for {dataset.name!r}")
    return _add(_datasets, "dataset", dataset, replace)


def _import_plugin(spec: str) -> None:
    """Import a plugin given as a ``.py`` file path or a module name."""
    if spec.endswith(".py"):
        if not os.path.isfile(spec):
            raise ValueError(f"Expected an existing file in {PLUGINS_ENV}. Received: {spec!r}")
        name = "metabridge_plugin_" + os.path.splitext(os.path.basename(spec))[0].replace("-", "_")
        if name in sys.modules:
            return
        module_spec = importlib.util.spec_from_file_location(name, spec)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    else:
        importlib.import_module(spec)


def _register_entry_point(ep, kind: type, register: Callable) -> None:
    obj = ep.load()
    if not isinstance(obj, kind) and callable(obj):
        obj = obj()
    for item in obj if isinstance(obj, (list, tuple)) else [obj]:
        if not isinstance(item, kind):
            raise ValueError(f"Expected entry point {ep.name!r} ({ep.value}) to give a {kind.__name__}. "
                             f"Received: {type(item).__name__}")
        if _recipes.get(item.name) is not item and _datasets.get(item.name) is not item:
            register(item)


def load_plugins() -> None:
    """Import the plugins of ``METABRIDGE_PLUGINS`` and the installed entry points (once)."""
    global _plugins_loaded
    with _lock:
        if _plugins_loaded:
            return
        _plugins_loaded = True
        for ep in importlib.metadata.entry_points(group=DATASET_GROUP):
            _register_entry_point(ep, DatasetRecipe, register_dataset)
        for ep in importlib.metadata.entry_points(group=RECIPE_GROUP):
            _register_entry_point(ep, Recipe, register_recipe)
        for spec in filter(None, os.environ.get(PLUGINS_ENV, "").split(os.pathsep)):
            _import_plugin(spec.strip())


def recipe_names() -> tuple[str, ...]:
    """Registered algorithm names, built-in first.

    >>> recipe_names()[:2]
    ('maml', 'fomaml')
    """
    load_plugins()
    return tuple(_recipes)


def dataset_names() -> tuple[str, ...]:
    """Registered data set names, built-in first."""
    load_plugins()
    return tuple(_datasets)


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``, or a clear error listing the known ones."""
    load_plugins()
    if name not in _recipes:
        raise ValueError(f"Expected algo in {tuple(_recipes)} (your own: register_recipe, {PLUGINS_ENV} or the "
                         f"{RECIPE_GROUP!r} entry points). Received: algo={name!r}")
    return _recipes[name]


def get_dataset(name: str) -> DatasetRecipe:
    """The data set recipe called ``name``, or a clear error listing the known ones."""
    load_plugins()
    if name not in _datasets:
        raise ValueError(f"Expected dataset in {tuple(_datasets)} (your own: register_dataset, {PLUGINS_ENV} or "
                         f"the {DATASET_GROUP!r} entry points). Received: dataset={name!r}")
    return _datasets[name]


def recipes_with(predicate: Callable[[Recipe], bool]) -> tuple[str, ...]:
    """Names of the registered recipes for which ``predicate(recipe)`` holds (for messages)."""
    load_plugins()
    return tuple(name for name, r in _recipes.items() if predicate(r))
