"""learn2learn's MAML-on-Omniglot example, ported to metabridge's clone-and-adapt API.

    python examples/port_from_learn2learn.py --backend torch
    python examples/port_from_learn2learn.py --backend tf --iterations 2 --meta-batch 2

The loop has the shape of learn2learn's ``examples/vision/maml_omniglot.py``:
for each task, ``learner = maml.clone(params)``, ``learner.adapt(...)`` per
adaptation step, then the evaluation error on the query set. The differences
(see docs/port_from_learn2learn.md): the meta-gradient comes from
``ops.value_and_grad`` instead of ``.backward()``, so the same script runs on
PyTorch or TensorFlow; the data are metabridge's Omniglot with the standard
Vinyals train/val/test split (learn2learn's example samples all three from the
whole dataset); the network is MAML's strided Conv4 with batch norm.
"""
from __future__ import annotations

import argparse
import os

import numpy as np

import metabridge as mb
from metabridge import ops
from metabridge.algorithms import MAML, Learner
from metabridge.data import FastEpisodeSampler, Omniglot, omniglot_split
from metabridge.nn import Conv4
from metabridge.optim import Adam
from metabridge.utils.progress import progress

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_OMNIGLOT = os.path.join(REPO_ROOT, "..", "shared", "data", "omniglot")


def fast_adapt(learner: Learner, support_x, support_y, query_x, query_y, loss, adaptation_steps: int,
               first_order: bool | None = None):
    """Adapt ``learner`` on the support set, then ``(query error, query accuracy)``."""
    for _ in range(adaptation_steps):
        learner.adapt(lambda l: loss(l(support_x), support_y), first_order=first_order)
    predictions = learner(query_x)
    return loss(predictions, query_y), ops.accuracy(predictions, query_y)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=SHARED_OMNIGLOT if os.path.isdir(SHARED_OMNIGLOT) else None,
                        help="folder of the Omniglot archives (default: ../shared/data/omniglot if present)")
    parser.add_argument("--download", action="store_true", help="fetch the official archives into --data-dir")
    parser.add_argument("--backend", default="torch", choices=("torch", "tf"))
    parser.add_argument("--iterations", type=int, default=60000)
    parser.add_argument("--meta-batch", type=int, default=32)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=None, help="query examples per class (default: shots)")
    parser.add_argument("--adaptation-steps", type=int, default=1)
    parser.add_argument("--fast-lr", type=float, default=0.5)
    parser.add_argument("--meta-lr", type=float, default=0.003)
    parser.add_argument("--first-order", action="store_true")
    parser.add_argument("--rotations", default="per-task", choices=("none", "per-task"),
                        help="MAML's random quarter turns per class and task, or none")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--log-every", type=int, default=100, help="print metrics every N iterations")
    args = parser.parse_args()
    if args.data_dir is None:
        parser.error("--data-dir is required (no ../shared/data/omniglot next to the repository)")
    for name in ("iterations", "meta_batch", "ways", "shots", "adaptation_steps", "log_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(args, name)})")
    args.queries = args.shots if args.queries is None else args.queries
    return args


def main() -> None:
    args = parse_args()
    mb.set_backend(args.backend)

    # Create datasets: the Vinyals split of all 1623 characters.
    omniglot = Omniglot(args.data_dir, subset="all", download=args.download, quiet=True)
    samplers = {
        part: FastEpisodeSampler(omniglot_split(omniglot, "vinyals", part, rotations=args.rotations),
                                 args.ways, args.shots, args.queries, seed=args.seed + i)
        for i, part in enumerate(("train", "val", "test"))
    }

    # Create model
    model = Conv4(args.ways, input_shape=(28, 28, 1), channels=64, strided=True)
    maml = MAML(model, inner_lr=args.fast_lr, first_order=args.first_order)
    params = {k: ops.asarray(v) for k, v in model.init(args.seed).items()}
    opt = Adam(lr=args.meta_lr)
    opt_state = opt.init(params)
    loss = ops.cross_entropy

    def meta_train_task(params, sx, sy, qx, qy):
        learner = maml.clone(params)
        return fast_adapt(learner, sx, sy, qx, qy, loss, args.adaptation_steps)

    meta_train_grad = ops.value_and_grad(meta_train_task, has_aux=True)
    print(f"[{mb.get_backend()}] MAML {args.ways}-way {args.shots}-shot Omniglot: "
          f"{args.iterations} iterations of {args.meta_batch} tasks")

    bar = progress(range(args.iterations), args.iterations, f"MAML Omniglot [{mb.get_backend()}]")
    for iteration in bar:
        batches = {part: [ops.asarray(a) for a in (b.support_x, b.support_y, b.query_x, b.query_y)]
                   for part, b in ((p, s.batch(iteration, args.meta_batch)) for p, s in samplers.items())}
        metrics = np.zeros((3, 2))  # train / valid / test x error / accuracy
        grad_sum = None
        for task in range(args.meta_batch):
            # Compute meta-training loss (and its meta-gradient)
            (evaluation_error, evaluation_accuracy), grads = meta_train_grad(
                params, *[a[task] for a in batches["train"]])
            grad_sum = grads if grad_sum is None else {k: grad_sum[k] + g for k, g in grads.items()}
            metrics[0] += [float(ops.to_numpy(evaluation_error)), float(ops.to_numpy(evaluation_accuracy))]

            # Compute meta-validation and meta-testing loss (no meta-gradient: first order suffices)
            for row, part in ((1, "val"), (2, "test")):
                learner = maml.clone(params)
                evaluation_error, evaluation_accuracy = fast_adapt(
                    learner, *[a[task] for a in batches[part]], loss, args.adaptation_steps, first_order=True)
                metrics[row] += [float(ops.to_numpy(evaluation_error)),
                                 float(ops.to_numpy(evaluation_accuracy))]

        metrics /= args.meta_batch
        bar.set_postfix(train_error=f"{metrics[0, 0]:.3f}", valid_acc=f"{metrics[1, 1]:.3f}")
        if iteration % args.log_every == 0 or iteration == args.iterations - 1:
            print(f"iteration {iteration}: "
                  + " | ".join(f"meta {name} error {e:.4f} accuracy {a:.4f}"
                               for name, (e, a) in zip(("train", "valid", "test"), metrics)))

        # Average the accumulated gradients and optimize
        meta_grads = {k: g / args.meta_batch for k, g in grad_sum.items()}
        params, opt_state = opt.update(params, meta_grads, opt_state)


if __name__ == "__main__":
    main()
