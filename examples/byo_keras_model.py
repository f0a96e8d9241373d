"""Bring your own Keras model: MAML on your keras.Model, then back into it.

    python examples/byo_keras_model.py --steps 200

Your Keras 3 model (here a small CNN with batch norm) goes through
``metabridge.wrap`` on the tensorflow backend; MAML meta-trains it on 5-way
1-shot digits (classes 0-4, no download), adapts it to a task of unseen
classes (5-9), writes the adapted weights back with ``metabridge.export`` and
predicts with the Keras model alone. Training runs through
``model.stateless_call``: the model's variables change only at ``export``.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import metabridge as mb  # noqa: E402
from metabridge import ops  # noqa: E402
from metabridge.algorithms import MAML  # noqa: E402
from metabridge.data import EpisodeSampler, load_digits  # noqa: E402
from metabridge.optim import Adam  # noqa: E402


def small_cnn(ways: int) -> keras.Model:
    """What a user might already have: NHWC images, batch norm, a dense classifier."""
    L = keras.layers
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        L.Conv2D(16, 3, padding="same"), L.BatchNormalization(), L.ReLU(), L.MaxPooling2D(2),
        L.Conv2D(16, 3, padding="same"), L.BatchNormalization(), L.ReLU(), L.MaxPooling2D(2),
        L.Flatten(), L.Dense(ways, name="classifier"),
    ], name="small_cnn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    mb.set_backend("tf")
    keras.utils.set_random_seed(args.seed)
    net = small_cnn(ways=5)
    before = [np.array(v.numpy()) for v in net.variables]

    model = mb.wrap(net)  # input shape read from the model's Input
    maml = MAML(model, inner_lr=0.4, inner_steps=1, compiled=True)
    params = model.init(seed=0)  # the model's own weights, as numpy, by variable.path
    print(f"wrapped {net.name}: {len(params)} variables, e.g. {list(params)[:3]}")
    opt = Adam(lr=3e-3)
    opt_state = opt.init(params)
    train = EpisodeSampler(load_digits("train"), ways=5, shots=1, queries=5, seed=args.seed)
    for step in range(args.steps):
        loss, grads = maml.meta_value_and_grad(params, train.batch(step, args.meta_batch))
        params, opt_state = opt.update(params, grads, opt_state)
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  meta-loss {float(ops.to_numpy(loss)):.3f}")
    unchanged = all(np.array_equal(b, v.numpy()) for b, v in zip(before, net.variables))
    print(f"model untouched by meta-training (weights and moving statistics): {unchanged}")

    test = EpisodeSampler(load_digits("test"), ways=5, shots=1, queries=5, seed=args.seed + 1)
    acc = maml.evaluate(params, test.batch(0, 100), steps=1)["accuracy"].mean(axis=0)
    print(f"unseen digits, 5-way 1-shot accuracy: {acc[0]:.3f} before adaptation, {acc[1]:.3f} after 1 step")

    task = test.batch(100, 1)
    adapted = maml.adapt(params, task.support_x[0], task.support_y[0])
    query = task.query_x[0]
    ours = ops.to_numpy(model(adapted, query))
    mb.export(adapted, net)  # the adapted weights, into the Keras model
    native = np.asarray(net(query, training=True))  # batch statistics, as metabridge's model(params, x)
    diff = np.max(np.abs(native - ours))
    print(f"exported; native prediction vs metabridge's: max |difference| = {diff:.3g}")
    print(f"native query accuracy on the task: {np.mean(native.argmax(1) == task.query_y[0]):.3f}")


if __name__ == "__main__":
    main()
