"""The shape of the code (issue #9): no import cycles, data/ stays numpy, no
algorithm or dataset names outside the recipe registry, one backend table,
mirrored backend packages, and the Algorithm protocol for every recipe."""
from __future__ import annotations

import ast
import importlib
import os
import re
import threading

import numpy as np
import pytest

import metabridge as mb
from metabridge import backend as backend_table
from metabridge.algorithms import Algorithm
from metabridge.recipes import (
    DatasetRecipe,
    Recipe,
    dataset_names,
    get_dataset,
    get_recipe,
    recipe_names,
    register_dataset,
    register_recipe,
)
from metabridge.train.experiment import Experiment, ExperimentConfig
from conftest import expect_value_error
from import_graph import ROOT, all_imports, cycles, graph

FRAMEWORKS = ("torch", "tensorflow", "keras")


def test_no_import_cycle_among_metabridge_modules():
    assert cycles(graph()) == []


def test_import_graph_sees_imports_inside_functions(tmp_path):
    pkg = tmp_path / "metabridge"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from metabridge import b\n")
    (pkg / "b.py").write_text("from metabridge.a import f\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from metabridge import a\n")
    assert cycles(graph(str(pkg))) == [["metabridge.a", "metabridge.b"]]
    assert graph(str(pkg))["metabridge.c"] == set()


def test_data_imports_no_framework_and_nothing_above_it():
    for module, names in all_imports().items():
        if not (module == "metabridge.data" or module.startswith("metabridge.data.")):
            continue
        for name in names:
            top = name.split(".")[0]
            assert top not in FRAMEWORKS, f"{module} imports {name}"
            if top == "metabridge":
                assert name.startswith(("metabridge.data", "metabridge.utils")), f"{module} imports {name}"


def test_utils_import_nothing_of_the_project():
    for module, names in all_imports().items():
        if module.startswith("metabridge.utils"):
            assert not [n for n in names if n.split(".")[0] == "metabridge" and not n.startswith("metabridge.utils")]


def test_only_backend_packages_import_a_framework():
    for module, names in all_imports().items():
        if module.startswith("metabridge.backends."):
            continue
        assert not [n for n in names if n.split(".")[0] in FRAMEWORKS], module


def _string_literals(path: str):
    """Non-docstring string constants of a source file (f-string parts included)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_no_algorithm_or_dataset_name_in_train_or_cli():
    names = set(recipe_names()) | set(dataset_names())
    pattern = re.compile(r"(?<![\w-])(" + "|".join(re.escape(n) for n in sorted(names)) + r")(?![\w-])")
    files = [os.path.join(ROOT, "cli.py")]
    for folder, _, fs in os.walk(os.path.join(ROOT, "train")):
        files += [os.path.join(folder, f) for f in fs if f.endswith(".py")]
    found = [(os.path.relpath(p, ROOT), line, text) for p in files for line, text in _string_literals(p)
             if pattern.search(text)]
    assert found == []


def test_the_name_check_would_catch_a_literal(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('"""About maml."""\nif algo == "reptile":\n    pass\nmsg = f"x {1} protonet y"\n')
    texts = [t for _, t in _string_literals(str(bad))]
    assert "reptile" in texts and " protonet y" in texts and "About maml." not in texts


# ---- the backend table -------------------------------------------------------------------------------
def test_backend_table_records():
    assert backend_table.NAMES == tuple(r.name for r in backend_table.BACKENDS)
    for r in backend_table.BACKENDS:
        for alias in (r.name, *r.aliases, r.name.upper()):
            assert backend_table.canonical_name(alias) == r.name
        assert backend_table.by_native_format(r.native_format) is r
        assert r.native_extension.startswith(".")
        assert os.path.isdir(os.path.join(ROOT, "backends", r.name))
    assert set(backend_table.available()) <= set(backend_table.NAMES)
    expect_value_error(lambda: backend_table.record("jax"), "Expected backend to be one of", "jax")
    expect_value_error(lambda: backend_table.by_native_format("onnx"), "native format", "onnx")


def _public(module) -> set[str]:
    return {n for n, v in vars(module).items() if not n.startswith("_")
            and getattr(v, "__module__", module.__name__) == module.__name__ and callable(v)}


def test_backend_packages_mirror_each_other(both_backends):
    modules = {}
    for name in both_backends:
        folder = os.path.join(ROOT, "backends", name)
        modules[name] = sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py"))
    assert modules["torch"] == modules["tensorflow"]
    for mod in modules["torch"]:
        if mod == "__init__":
            continue
        names = {b: _public(importlib.import_module(f"metabridge.backends.{b}.{mod}")) for b in both_backends}
        assert names["torch"] == names["tensorflow"], (mod, names["torch"] ^ names["tensorflow"])
    packages = {b: backend_table.load(b) for b in both_backends}
    assert {n for n in vars(packages["torch"]) if not n.startswith("_")} == \
        {n for n in vars(packages["tensorflow"]) if not n.startswith("_")}


# ---- floatx per context -------------------------------------------------------------------------------
def test_use_floatx_is_scoped_and_per_thread():
    assert mb.floatx() == "float32"
    with pytest.raises(RuntimeError):
        with mb.use_floatx("float64"):
            assert mb.floatx() == "float64"
            raise RuntimeError("inside")
    assert mb.floatx() == "float32"
    seen, inside, release = {}, threading.Event(), threading.Event()

    def worker():
        with mb.use_floatx("float64"):
            seen["worker"] = mb.floatx()
            inside.set()
            release.wait(5)

    t = threading.Thread(target=worker)
    t.start()
    inside.wait(5)
    seen["main"] = mb.floatx()
    release.set()
    t.join()
    assert seen == {"worker": "float64", "main": "float32"}
    expect_value_error(lambda: mb.use_floatx("float16").__enter__(), "Expected floatx", "float16")


# ---- recipes and the Algorithm protocol ---------------------------------------------------------------
@pytest.mark.parametrize("algo", ["maml", "fomaml", "metasgd", "anil", "reptile", "siamese", "protonet", "matching"])
def test_every_builtin_recipe_builds_an_algorithm_that_trains_and_evaluates(backend, algo):
    c = ExperimentConfig(algo=algo, dataset="digits", steps=2, meta_batch=2, test_tasks=3).resolved()
    exp = Experiment(c)
    assert isinstance(exp.algorithm, Algorithm) and exp.recipe is get_recipe(algo)
    params = {k: mb.ops.asarray(v) for k, v in exp.init_params(0).items()}
    loss, direction = exp.loss_and_grad(params, 0)
    assert set(direction) == set(params)
    new, _ = exp.optimizer().update(params, direction, exp.optimizer().init(params))
    assert set(new) == set(params)
    name, values = exp.evaluate(new, episodes=3)
    assert name == "accuracy" and values.shape == (3,) and np.all((values >= 0) & (values <= 1))
    ep = exp.sources.test.episode(0)
    pred = exp.predict(new, ep)
    assert pred.shape == (len(ep.query_y), c.test_ways)


def test_registry_lookups_and_errors():
    assert get_recipe("reptile").trains_on == "episodes" and get_recipe("siamese").trains_on == "pairs"
    assert get_dataset("sinusoid").task == "regression" and get_dataset("digits").loss == "cross_entropy"
    expect_value_error(lambda: get_recipe("nope"), "Expected algo in", "'maml'", "Received: algo='nope'")
    expect_value_error(lambda: get_dataset("nope"), "Expected dataset in", "Received: dataset='nope'")
    maml = get_recipe("maml")
    expect_value_error(lambda: register_recipe(Recipe("maml", maml.algorithm_class, maml.model, maml.algorithm,
                                                      "digits")), "new recipe name", "'maml'")
    expect_value_error(lambda: register_recipe(Recipe("bad name!", maml.algorithm_class, maml.model,
                                                      maml.algorithm, "digits")), "recipe name")
    expect_value_error(lambda: register_recipe(Recipe("x", dict, maml.model, maml.algorithm, "digits")),
                       "subclass of metabridge.algorithms.Algorithm")
    expect_value_error(lambda: register_recipe("maml"), "Expected a metabridge.recipes.Recipe")
    digits = get_dataset("digits")
    expect_value_error(lambda: register_dataset(DatasetRecipe("digits", digits.sources, digits.backbone)),
                       "new dataset name")
    expect_value_error(lambda: register_dataset(DatasetRecipe("y", digits.sources, digits.backbone, task="x")),
                       "Expected task in")


def test_unknown_algorithm_in_a_config_is_refused():
    expect_value_error(lambda: ExperimentConfig(algo="maml2").resolved(), "Expected algo in",
                       "METABRIDGE_PLUGINS", "Received: algo='maml2'")
