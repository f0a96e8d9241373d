"""A new algorithm in one file, trained, checkpointed, resumed and evaluated by
the ``metabridge`` command line on either backend — without touching metabridge.

The algorithm: Prototypical networks with a learned metric scale (Oreshkin,
Rodríguez & Lacoste 2018, TADAM §3.1): a query's logits are
``-alpha * ||f(query) - prototype||²`` with ``alpha = exp(metric.log_scale)``
meta-learned beside the embedding network. It is written once with
``metabridge.ops``, so it runs on PyTorch and TensorFlow alike.

Run it through the command line by naming this file in ``METABRIDGE_PLUGINS``::

    export METABRIDGE_PLUGINS=examples/custom_algorithm.py
    metabridge train --algo scaled-protonet --steps 60 --checkpoint-every 20 --run-dir runs/sp
    metabridge resume runs/sp                      # continues from the newest checkpoint
    metabridge eval runs/sp --backend tf           # the torch-trained run, evaluated on TensorFlow
    metabridge compare --algo scaled-protonet --steps 20

or package it and declare ``[project.entry-points."metabridge.recipes"]
scaled-protonet = "custom_algorithm:RECIPE"``, after which ``pip install``
makes it appear in ``metabridge train --algo``. ``python examples/custom_algorithm.py``
runs the commands above in a temporary folder and prints what they report.
"""
from __future__ import annotations

import numpy as np

from metabridge import ops
from metabridge.algorithms import Algorithm
from metabridge.data import Episode, TaskBatch
from metabridge.recipes import Recipe, embedding_model, get_recipe, recipe_names, register_recipe

SCALE = "metric.log_scale"


class ScaledProtoNet(Algorithm):
    """Prototypical networks whose squared distances are scaled by a learned ``alpha``."""

    adapts = False     # no inner loop
    any_ways = True    # test episodes may have another number of classes
    metric_name = "accuracy"

    def __init__(self, model, init_scale: float = 1.0):
        if not init_scale > 0:
            raise ValueError(f"Expected init_scale > 0. Received: init_scale={init_scale!r}")
        self.model, self.init_scale = model, float(init_scale)

    def init(self, seed: int) -> dict:
        params = self.model.init(seed)
        dtype = next(iter(params.values())).dtype
        params[SCALE] = np.full((1,), np.log(self.init_scale), dtype=dtype)
        return params

    def logits(self, params: dict, support_x, support_y, query_x, ways: int):
        es, eq = self.model(params, support_x), self.model(params, query_x)
        onehot = ops.one_hot(support_y, ways)
        protos = ops.matmul(ops.transpose(onehot, (1, 0)), es) / ops.reshape(ops.sum(onehot, 0), (-1, 1))
        sq = (ops.sum(ops.square(eq), -1, keepdims=True) - 2.0 * ops.matmul(eq, ops.transpose(protos, (1, 0)))
              + ops.reshape(ops.sum(ops.square(protos), -1), (1, -1)))
        return -ops.exp(params[SCALE]) * sq

    def meta_value_and_grad(self, params: dict, batch: TaskBatch):
        ways = int(np.max(batch.support_y)) + 1
        params = {k: ops.asarray(v) for k, v in params.items()}
        sx, sy, qx, qy = (ops.asarray(a) for a in (batch.support_x, batch.support_y, batch.query_x, batch.query_y))

        def task_loss(p, a, b, c, d):
            return ops.cross_entropy(self.logits(p, a, b, c, ways), d)

        grad_fn = ops.value_and_grad(task_loss)
        loss_sum, grad_sum = None, None
        for t in range(batch.size):
            loss, grads = grad_fn(params, sx[t], sy[t], qx[t], qy[t])
            loss_sum = loss if loss_sum is None else loss_sum + loss
            grad_sum = grads if grad_sum is None else {k: grad_sum[k] + g for k, g in grads.items()}
        return loss_sum / batch.size, {k: g / batch.size for k, g in grad_sum.items()}

    def predict_episode(self, params: dict, episode: Episode, steps=None):
        ways = int(np.max(episode.support_y)) + 1
        params = {k: ops.asarray(v) for k, v in params.items()}
        return self.logits(params, ops.asarray(episode.support_x), ops.asarray(episode.support_y),
                           ops.asarray(episode.query_x), ways)

    def evaluate(self, params: dict, batch: TaskBatch, steps=None) -> dict:
        losses, accs = np.zeros(batch.size), np.zeros(batch.size)
        for t in range(batch.size):
            episode = Episode(batch.support_x[t], batch.support_y[t], batch.query_x[t], batch.query_y[t])
            z, qy = self.predict_episode(params, episode), ops.asarray(episode.query_y)
            losses[t] = float(ops.to_numpy(ops.cross_entropy(z, qy)))
            accs[t] = float(ops.to_numpy(ops.accuracy(z, qy)))
        return {"loss": losses, "accuracy": accs}


RECIPE = Recipe(
    "scaled-protonet", ScaledProtoNet,
    model=embedding_model,                                   # the data set's embedding network
    algorithm=lambda c, model, dataset: ScaledProtoNet(model),
    default_dataset="digits", tasks=("classification",),
    dataset_defaults={"omniglot": {"rotations": "classes"}},
    description="Prototypical networks with a learned metric scale (TADAM)")

if RECIPE.name not in recipe_names() or get_recipe(RECIPE.name) is not RECIPE:
    register_recipe(RECIPE, replace=True)


def _demo() -> None:
    import json
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    env = {**os.environ, "METABRIDGE_PLUGINS": os.path.abspath(__file__), "TF_CPP_MIN_LOG_LEVEL": "2"}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("torch", "tf"):
            run = os.path.join(tmp, backend)

            def cli(*args):
                out = subprocess.run([sys.executable, "-m", "metabridge", *args], env=env, check=True,
                                     capture_output=True, text=True).stdout
                return json.loads(out)

            done = cli("train", "--algo", "scaled-protonet", "--backend", backend, "--steps", "60",
                       "--checkpoint-every", "20", "--test-tasks", "200", "--run-dir", run, "--json", "--quiet")
            metric = done["results"][next(iter(done["results"]))]
            print(f"{backend}: trained 60 steps, test accuracy {100 * metric['metric']:.2f} %")
            # Pretend the run was killed after step 40: drop its last checkpoint, then resume.
            ckpts = os.path.join(run, "checkpoints")
            last = sorted(f for f in os.listdir(ckpts) if f.startswith("step-00000060"))
            kept = os.path.join(tmp, "last")
            os.makedirs(kept, exist_ok=True)
            for f in last:
                shutil.move(os.path.join(ckpts, f), os.path.join(kept, f))
            resumed = cli("resume", run, "--json", "--quiet")
            again = resumed["results"][next(iter(resumed["results"]))]
            print(f"{backend}: resumed from step 40, test accuracy {100 * again['metric']:.2f} % "
                  f"(same as uninterrupted: {again['metric'] == metric['metric']})")
            shutil.rmtree(kept)
            other = "tf" if backend == "torch" else "torch"
            ev = cli("eval", run, "--backend", other, "--json")
            print(f"{backend}-trained run evaluated on {ev['backend']}: {100 * ev['metric']:.2f} %")


if __name__ == "__main__":
    _demo()
