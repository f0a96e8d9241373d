"""Meta-train in PyTorch, deliver a plain Keras model.

    python examples/cross_framework_handoff.py --steps 100

A built-in Conv4 (MAML's strided Omniglot variant, sized for 8x8 digits) is
meta-trained with MAML on the torch backend, then handed to Keras with
``metabridge.native.to_native(model, params, "keras")``: a ``keras.Sequential``
of standard layers, saved as ``.keras`` and loaded back with
``keras.models.load_model`` (no metabridge needed to load it). Predictions of
the plain Keras model are compared with metabridge's, for the meta-trained
weights and for weights adapted to a new task. Batch norm uses batch
statistics on both sides (Keras: ``training=True``), as MAML does.
"""
from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import metabridge as mb  # noqa: E402
from metabridge import ops  # noqa: E402
from metabridge.algorithms import MAML  # noqa: E402
from metabridge.data import EpisodeSampler, load_digits  # noqa: E402
from metabridge.native import save_native, to_native  # noqa: E402
from metabridge.nn import Conv4  # noqa: E402
from metabridge.optim import Adam  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model = Conv4(out_features=5, input_shape=(8, 8, 1), channels=16, strided=True)
    test = EpisodeSampler(load_digits("test"), ways=5, shots=1, queries=5, seed=args.seed + 1)
    task = test.batch(0, 1)
    query = task.query_x[0]
    with mb.use_backend("torch"):
        maml = MAML(model, inner_lr=0.4, inner_steps=1)
        params = model.init(seed=args.seed)
        opt = Adam(lr=3e-3)
        opt_state = opt.init(params)
        train = EpisodeSampler(load_digits("train"), ways=5, shots=1, queries=5, seed=args.seed)
        for step in range(args.steps):
            loss, grads = maml.meta_value_and_grad(params, train.batch(step, args.meta_batch))
            params, opt_state = opt.update(params, grads, opt_state)
            if step % 25 == 0 or step == args.steps - 1:
                print(f"[torch] step {step:4d}  meta-loss {float(ops.to_numpy(loss)):.3f}")
        adapted = maml.adapt(params, task.support_x[0], task.support_y[0])
        torch_logits = {"meta-trained": ops.to_numpy(model(params, query)),
                        "adapted": ops.to_numpy(model(adapted, query))}

    import keras  # only now: the hand-off needs Keras, training did not

    with tempfile.TemporaryDirectory() as folder:
        for name, values in (("meta-trained", params), ("adapted", adapted)):
            path = os.path.join(folder, f"conv4-{name}.keras")
            save_native(to_native(model, values, "keras"), path)
            net = keras.models.load_model(path)  # plain Keras from here on
            logits = np.asarray(net(query, training=True))
            diff = np.max(np.abs(logits - torch_logits[name]))
            acc = np.mean(logits.argmax(1) == task.query_y[0])
            print(f"[keras] {name:12s} {type(net).__name__} with {len(net.layers)} layers: "
                  f"max |keras - torch| = {diff:.3g} (float32), query accuracy {acc:.3f}")


if __name__ == "__main__":
    main()
