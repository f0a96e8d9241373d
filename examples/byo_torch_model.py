"""Bring your own torch model: MAML on your nn.Module, then back into it.

    python examples/byo_torch_model.py --steps 200

Your ``torch.nn.Module`` (here a small CNN with batch norm) goes through
``metabridge.wrap``; MAML meta-trains it on 5-way 1-shot digits (classes
0-4, no download), adapts it to a task of unseen classes (5-9), writes the
adapted weights back into the module with ``metabridge.export`` and predicts
with the module alone. The module itself is never modified by training: its
weights and batch-norm buffers change only at ``export``.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

import metabridge as mb
from metabridge import ops
from metabridge.algorithms import MAML
from metabridge.data import EpisodeSampler, TaskBatch, load_digits
from metabridge.optim import Adam


class SmallCNN(nn.Module):
    """What a user might already have: NCHW images, batch norm, a linear classifier."""

    def __init__(self, ways: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(16 * 2 * 2, ways)

    def forward(self, x):
        return self.classifier(self.features(x))


def nchw(batch: TaskBatch) -> TaskBatch:
    """metabridge's datasets are NHWC; this module wants NCHW."""
    move = lambda a: np.moveaxis(a, -1, -3)  # noqa: E731
    return TaskBatch(move(batch.support_x), batch.support_y, move(batch.query_x), batch.query_y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    mb.set_backend("torch")
    torch.manual_seed(args.seed)
    net = SmallCNN(ways=5)
    before = {k: v.clone() for k, v in net.state_dict().items()}

    model = mb.wrap(net, input_shape=(1, 8, 8))  # a Conv2d first layer: give the input shape
    maml = MAML(model, inner_lr=0.4, inner_steps=1)
    params = model.init(seed=0)  # the module's own weights, as numpy
    print(f"wrapped {type(net).__name__}: {len(params)} parameter tensors, e.g. {list(params)[:3]}")
    opt = Adam(lr=3e-3)
    opt_state = opt.init(params)
    train = EpisodeSampler(load_digits("train"), ways=5, shots=1, queries=5, seed=args.seed)
    for step in range(args.steps):
        loss, grads = maml.meta_value_and_grad(params, nchw(train.batch(step, args.meta_batch)))
        params, opt_state = opt.update(params, grads, opt_state)
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  meta-loss {float(ops.to_numpy(loss)):.3f}")
    unchanged = all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    print(f"module untouched by meta-training (weights and BN buffers): {unchanged}")

    test = EpisodeSampler(load_digits("test"), ways=5, shots=1, queries=5, seed=args.seed + 1)
    acc = maml.evaluate(params, nchw(test.batch(0, 100)), steps=1)["accuracy"].mean(axis=0)
    print(f"unseen digits, 5-way 1-shot accuracy: {acc[0]:.3f} before adaptation, {acc[1]:.3f} after 1 step")

    task = nchw(test.batch(100, 1))
    adapted = maml.adapt(params, task.support_x[0], task.support_y[0])
    query = task.query_x[0].astype(np.float32)
    ours = ops.to_numpy(model(adapted, query))
    mb.export(adapted, net)  # the adapted weights, into the module
    net.train()  # batch statistics, as metabridge's model(params, x)
    with torch.no_grad():
        native = net(torch.as_tensor(query)).numpy()
    diff = np.max(np.abs(native - ours))
    print(f"exported; native prediction vs metabridge's: max |difference| = {diff:.3g}")
    print(f"native query accuracy on the task: {np.mean(native.argmax(1) == task.query_y[0]):.3f}")


if __name__ == "__main__":
    main()
