"""A Siamese network on scikit-learn's 8x8 digits, evaluated 5-way one-shot
on digit classes it never saw in training, on either backend.

    python examples/siamese_digits.py --backend torch
    python examples/siamese_digits.py --backend tf --distance l2 --loss contrastive
"""
from __future__ import annotations

import argparse

import numpy as np

import metabridge as mb
from metabridge import ops
from metabridge.algorithms import Siamese
from metabridge.data import EpisodeSampler, PairSampler, load_digits
from metabridge.nn import SmallConvEncoder
from metabridge.optim import Adam
from metabridge.train import mean_ci95
from metabridge.utils.progress import progress


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="torch", help="torch or tf")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--distance", default="l1", choices=("l1", "l2", "cosine"))
    parser.add_argument("--loss", default="bce", choices=("bce", "contrastive"))
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    mb.set_backend(args.backend)
    net = Siamese(SmallConvEncoder(input_shape=(8, 8, 1)), distance=args.distance, loss=args.loss)
    pairs = PairSampler(load_digits("train"), batch_size=args.batch_size, seed=args.seed)
    params = {k: ops.asarray(v) for k, v in net.init(args.seed).items()}
    opt = Adam(lr=1e-3)
    state = opt.init(params)
    bar = progress(range(args.steps), args.steps, f"Siamese digits [{mb.get_backend()}]")
    for step in bar:
        loss, grads = net.value_and_grad(params, *pairs.batch(step))
        params, state = opt.update(params, grads, state)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{float(ops.to_numpy(loss)):.3f}")

    episodes = EpisodeSampler(load_digits("test"), ways=args.ways, shots=1, queries=5, seed=args.seed + 1)
    accs = [net.one_shot_accuracy(params, episodes.episode(i)) for i in range(args.episodes)]
    mean, ci = mean_ci95(np.asarray(accs))
    print(f"[{mb.get_backend()}] final pair loss {float(ops.to_numpy(loss)):.4f}; "
          f"{args.ways}-way one-shot accuracy on held-out digits 5-9: "
          f"{100 * mean:.1f} ± {100 * ci:.1f} % (chance {100 / args.ways:.0f} %)")


if __name__ == "__main__":
    main()
