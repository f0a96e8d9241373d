"""MAML on sinusoid regression (Finn et al. 2017, §5.1), on either backend.

    python examples/maml_sinusoid.py --backend torch --steps 2000
    python examples/maml_sinusoid.py --backend tf --steps 2000 --plot sinusoid.png

Unlike the short MAML snippet this grew from, the inner update builds new
parameters (no in-place update, so the meta-gradient is truly second order)
and runs ``--inner-steps`` times, not ``range(inner_lr)`` times.
"""
from __future__ import annotations

import argparse

import numpy as np

import metabridge as mb
from metabridge import ops
from metabridge.algorithms import MAML
from metabridge.data import SinusoidTasks
from metabridge.nn import MLP
from metabridge.optim import Adam
from metabridge.train import mean_ci95
from metabridge.utils.progress import progress


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="torch", help="torch or tf")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--meta-batch", type=int, default=25)
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--inner-lr", type=float, default=0.01)
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--test-tasks", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", help="save a plot of one test task before/after adaptation")
    args = parser.parse_args()

    mb.set_backend(args.backend)
    maml = MAML(MLP([1, 40, 40, 1]), inner_lr=args.inner_lr, inner_steps=args.inner_steps,
                loss="mse", compiled=True)
    tasks = SinusoidTasks(shots=args.shots, queries=10, seed=args.seed)
    params = {k: ops.asarray(v) for k, v in maml.model.init(args.seed).items()}
    opt = Adam(lr=1e-3)
    state = opt.init(params)
    bar = progress(range(args.steps), args.steps, f"MAML sinusoid [{mb.get_backend()}]")
    for step in bar:
        loss, grads = maml.meta_value_and_grad(params, tasks.batch(step, args.meta_batch))
        params, state = opt.update(params, grads, state)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{float(ops.to_numpy(loss)):.3f}")

    test = SinusoidTasks(shots=args.shots, queries=10, seed=args.seed + 1)
    batch = test.batch(0, args.test_tasks)
    mse = maml.evaluate(params, batch)["mse"]
    for k in range(mse.shape[1]):
        mean, ci = mean_ci95(mse[:, k])
        print(f"[{mb.get_backend()}] test MSE after {k} inner step(s): {mean:.3f} ± {ci:.3f}")

    if args.plot:
        try:
            import matplotlib
        except ImportError:
            raise SystemExit("--plot needs matplotlib: pip install 'metabridge[plot]'") from None

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ep = test.episode(0)
        amp, phase = test.task_parameters(0)
        xs = np.linspace(-5, 5, 200, dtype=np.float32)[:, None]
        adapted = maml.adapt(params, ep.support_x, ep.support_y)
        plt.plot(xs, amp * np.sin(xs - phase), "k-", label="true")
        plt.plot(xs, ops.to_numpy(maml.model(params, xs)), "--", label="meta-init")
        plt.plot(xs, ops.to_numpy(maml.model(adapted, xs)), "-", label="after adaptation")
        plt.scatter(ep.support_x, ep.support_y, label="support")
        plt.legend()
        plt.savefig(args.plot, dpi=100)
        print(f"saved {args.plot}")


if __name__ == "__main__":
    main()
