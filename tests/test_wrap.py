"""Bring your own model: wrap / export native torch and Keras models, to_native / save_native.

A "twin" is a native network equal to a small built-in model, built by hand
from the built-in's parameters (layout transposes done here, independently of
metabridge.native), so every number metabridge computes through ``wrap`` has a
built-in reference.
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import BACKENDS, expect_value_error, flat, perturbed_init, rel_diff

import metabridge as mb
from metabridge import ops
from metabridge.algorithms import ANIL, MAML, MatchingNet, MetaSGD, ProtoNet, Reptile, Siamese
from metabridge.data.episodes import TaskBatch
from metabridge.native import save_native, to_native
from metabridge.nn import MLP, Conv4

# Conv4 non-strided on 16x32 images ends at 1x2x4: the head sees a flatten order
# that differs between NHWC (metabridge, Keras) and NCHW (torch).
CONV4 = dict(out_features=3, input_shape=(16, 32, 1), channels=4)


def _dtype():
    return mb.floatx()


# ---- twins ---------------------------------------------------------------------------------
class TorchTwin:
    """conv -> BN -> ReLU -> maxpool (x4) -> flatten -> linear, NCHW in; or an MLP."""

    def __init__(self, model, p):
        import torch

        self.torch, self.model = torch, model
        nn = torch.nn
        if isinstance(model, MLP):
            self.net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 4))
            self.names = {"dense1.kernel": "0.weight", "dense1.bias": "0.bias",
                          "dense2.kernel": "2.weight", "dense2.bias": "2.bias"}
            self.head, self.kwargs = "2", {}
        else:
            layers = []
            for i in range(4):
                layers += [nn.Conv2d(1 if i == 0 else 4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                           nn.MaxPool2d(2)]
            self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(8, 3))
            self.names = {"head.kernel": "17.weight", "head.bias": "17.bias"}
            for i in range(1, 5):
                conv, bn = 4 * (i - 1), 4 * (i - 1) + 1
                self.names.update({f"conv{i}.kernel": f"{conv}.weight", f"conv{i}.bias": f"{conv}.bias",
                                   f"bn{i}.scale": f"{bn}.weight", f"bn{i}.offset": f"{bn}.bias"})
            self.head, self.kwargs = "17", {"input_shape": (1, 16, 32)}
        self.net = self.net.to(getattr(torch, _dtype()))
        self.net.load_state_dict({k: torch.as_tensor(v) for k, v in self.to_native(p).items()}, strict=False)

    def to_native(self, d: dict) -> dict:
        """Built-in names/layouts -> this net's (also used for gradients)."""
        out = {}
        for name, value in d.items():
            value = np.asarray(ops.to_numpy(value))
            if name.endswith("kernel") and value.ndim == 4:
                value = value.transpose(3, 2, 0, 1)                      # HWIO -> OIHW
            elif name == "head.kernel":                                  # rows (h, w, c) -> (c, h, w)
                value = value.reshape(1, 2, 4, 3).transpose(2, 0, 1, 3).reshape(8, 3).T
            elif name.endswith("kernel"):
                value = value.T
            out[self.names[name]] = value
        return out

    def layout(self, x):
        return np.moveaxis(x, -1, -3) if x.ndim >= 4 else x

    def predict(self, x, training: bool):
        """The net on ``x`` (already in the net's layout)."""
        self.net.train(training)
        with self.torch.no_grad():
            return self.net(self.torch.as_tensor(x, dtype=getattr(self.torch, _dtype()))).numpy()

    def snapshot(self) -> dict:
        return {k: v.detach().clone().numpy() for k, v in self.net.state_dict().items()}

    def set_running(self, rng):
        with self.torch.no_grad():
            for m in self.net.modules():
                if isinstance(m, self.torch.nn.BatchNorm2d):
                    m.running_mean.copy_(self.torch.as_tensor(rng.normal(size=4)))
                    m.running_var.copy_(self.torch.as_tensor(rng.uniform(0.5, 2.0, size=4)))

    def running(self) -> dict:
        return {k: v.numpy() for k, v in self.net.named_buffers() if v.is_floating_point()}


class KerasTwin:
    """The same networks as Keras Sequential models (NHWC, no layout change)."""

    def __init__(self, model, p):
        import keras

        self.keras, self.model, dt = keras, model, _dtype()
        L = keras.layers
        if isinstance(model, MLP):
            layers = [keras.Input((3,), dtype=dt), L.Dense(8, activation="tanh", dtype=dt, name="dense1"),
                      L.Dense(4, dtype=dt, name="dense2")]
            self.head = "dense2"
        else:
            layers = [keras.Input(CONV4["input_shape"], dtype=dt)]
            for i in range(1, 5):
                layers += [L.Conv2D(4, 3, padding="same", dtype=dt, name=f"conv{i}"),
                           L.BatchNormalization(epsilon=1e-5, dtype=dt, name=f"bn{i}"), L.ReLU(dtype=dt),
                           L.MaxPooling2D(2, dtype=dt)]
            layers += [L.Flatten(dtype=dt), L.Dense(3, dtype=dt, name="head")]
            self.head = "head"
        self.net, self.kwargs = keras.Sequential(layers, name="net"), {}
        own = {v.path: v for v in self.net.variables}
        for k, v in self.to_native(p).items():
            own[k].assign(v)

    def to_native(self, d: dict) -> dict:
        kinds = {"kernel": "kernel", "bias": "bias", "scale": "gamma", "offset": "beta"}
        out = {}
        for name, value in d.items():
            layer, kind = name.split(".")
            out[f"net/{layer}/{kinds[kind]}"] = np.asarray(ops.to_numpy(value))
        return out

    def layout(self, x):
        return x

    def predict(self, x, training: bool):
        return np.asarray(self.net(x, training=training))

    def snapshot(self) -> dict:
        return {v.path: np.array(v.numpy()) for v in self.net.variables}

    def set_running(self, rng):
        for v in self.net.non_trainable_variables:
            shape = tuple(v.shape)
            v.assign(rng.normal(size=shape) if v.path.endswith("mean") else rng.uniform(0.5, 2.0, size=shape))

    def running(self) -> dict:
        return {v.path: np.array(v.numpy()) for v in self.net.non_trainable_variables}


def twin(backend: str, model, p):
    return TorchTwin(model, p) if backend == "torch" else KerasTwin(model, p)


def task_batch(rng, input_shape, tasks=2, ways=3, shots=2):
    n = ways * shots
    x = lambda: rng.standard_normal((tasks, n, *input_shape))  # noqa: E731
    y = np.tile(np.arange(ways).repeat(shots), (tasks, 1))
    return TaskBatch(x(), y, x(), y.copy())


def native_batch(t, batch: TaskBatch) -> TaskBatch:
    return TaskBatch(t.layout(batch.support_x), batch.support_y, t.layout(batch.query_x), batch.query_y)


# ---- MAML / ANIL meta-gradients equal the built-in model's ----------------------------------------
@pytest.mark.parametrize("algo", [MAML, ANIL])
def test_second_order_meta_gradient_matches_builtin(backend, float64, algo):
    model = Conv4(**CONV4)
    p = perturbed_init(model, 0)
    t = twin(backend, model, p)
    wrapped = mb.wrap(t.net, head=t.head, **t.kwargs)
    batch = task_batch(np.random.default_rng(1), model.input_shape)
    loss_ref, grads_ref = algo(model, inner_lr=0.1, inner_steps=2).meta_value_and_grad(p, batch)
    loss, grads = algo(wrapped, inner_lr=0.1, inner_steps=2).meta_value_and_grad(
        wrapped.init(0), native_batch(t, batch))
    assert rel_diff(ops.to_numpy(loss), ops.to_numpy(loss_ref)) < 1e-12
    expected = t.to_native(grads_ref)
    assert set(grads) == set(expected)
    assert rel_diff(flat(grads), flat({k: expected[k] for k in grads})) < 1e-9


def test_other_algorithms_accept_a_wrapped_model(backend, float64):
    """Compiled MAML, Meta-SGD, Reptile, ProtoNet, Matching and Siamese give the built-in MLP's numbers."""
    model = MLP([3, 8, 4], activation="tanh")
    p = perturbed_init(model, 0)
    t = twin(backend, model, p)
    wrapped = mb.wrap(t.net)
    assert wrapped.input_shape == (3,) and wrapped.output_shape == (4,)
    rng = np.random.default_rng(2)
    batch = task_batch(rng, (3,), ways=2)
    q = wrapped.init(0)

    l1, g1 = MAML(model, 0.1, inner_steps=2).meta_value_and_grad(p, batch)
    l2, g2 = MAML(wrapped, 0.1, inner_steps=2, compiled=True).meta_value_and_grad(q, batch)
    assert rel_diff(ops.to_numpy(l1), ops.to_numpy(l2)) < 1e-12
    assert rel_diff(flat({k: t.to_native(g1)[k] for k in g2}), flat(g2)) < 1e-9

    def native_lr(d):
        rates = t.to_native({k[3:]: v for k, v in d.items() if k.startswith("lr.")})
        return {**{f"lr.{k}": v for k, v in rates.items()},
                **t.to_native({k: v for k, v in d.items() if not k.startswith("lr.")})}

    ref, got = MetaSGD(model, 0.1, loss="cross_entropy"), MetaSGD(wrapped, 0.1, loss="cross_entropy")
    l1, g1 = ref.meta_value_and_grad(ref.init(0) | p, batch)
    l2, g2 = got.meta_value_and_grad(got.init(0), batch)
    assert rel_diff(ops.to_numpy(l1), ops.to_numpy(l2)) < 1e-12
    assert rel_diff(flat({k: native_lr(g1)[k] for k in g2}), flat(g2)) < 1e-9

    new_ref, _ = Reptile(model, 0.1, inner_steps=2).meta_step(p, batch, step=0)
    new, _ = Reptile(wrapped, 0.1, inner_steps=2).meta_step(q, batch, step=0)
    assert rel_diff(flat({k: t.to_native(new_ref)[k] for k in new}), flat(new)) < 1e-12

    for net in (ProtoNet, MatchingNet):
        l1, _ = net(model).meta_value_and_grad(p, batch)
        l2, _ = net(wrapped).meta_value_and_grad(q, batch)
        assert rel_diff(ops.to_numpy(l1), ops.to_numpy(l2)) < 1e-12

    x1, x2, same = rng.standard_normal((4, 3)), rng.standard_normal((4, 3)), np.array([1.0, 0.0, 1.0, 0.0])
    siamese_head = {"head.kernel": np.full((4, 1), 0.3), "head.bias": np.zeros(1)}
    l1, _ = Siamese(model).value_and_grad({**p, **siamese_head}, x1, x2, same)
    l2, _ = Siamese(wrapped).value_and_grad({**q, **siamese_head}, x1, x2, same)
    assert rel_diff(ops.to_numpy(l1), ops.to_numpy(l2)) < 1e-12


# ---- the native model is never touched; batch norm modes --------------------------------------------
def test_meta_step_leaves_native_model_untouched(backend):
    model = Conv4(**CONV4)
    t = twin(backend, model, perturbed_init(model, 0))
    if backend == "torch":
        t.net.eval()  # the flags a call sets must be restored
    before = t.snapshot()
    wrapped = mb.wrap(t.net, **t.kwargs)
    batch = native_batch(t, task_batch(np.random.default_rng(1), model.input_shape))
    MAML(wrapped, inner_lr=0.1, inner_steps=2).meta_value_and_grad(wrapped.init(0), batch)
    x = batch.query_x[0]
    for eval_bn in ("batch", "running"):
        mb.wrap(t.net, eval_bn, **t.kwargs).apply(wrapped.init(0), x, training=False)
    _, new_state = wrapped.apply(wrapped.init(0), x, state=wrapped.init_state())
    after = t.snapshot()
    assert set(before) == set(after)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert set(new_state) == set(wrapped.init_state())
    if backend == "torch":
        assert not any(m.training for m in t.net.modules())


def test_eval_bn_batch_and_running_statistics(backend, float64):
    model = Conv4(**CONV4)
    t = twin(backend, model, perturbed_init(model, 0))
    rng = np.random.default_rng(3)
    t.set_running(rng)
    x = t.layout(rng.standard_normal((6, *model.input_shape)))
    running, batch = mb.wrap(t.net, "running", **t.kwargs), mb.wrap(t.net, "batch", **t.kwargs)
    q = running.init(0)
    y_running = ops.to_numpy(running.apply(q, x, training=False)[0])
    y_batch = ops.to_numpy(batch.apply(q, x, training=False)[0])
    assert rel_diff(y_running, t.predict(x, training=False)) < 1e-12
    assert rel_diff(y_running, y_batch) > 1e-3  # the two modes really differ here
    _, new_state = running.apply(q, x)
    assert rel_diff(ops.to_numpy(batch(q, x)), y_batch) == 0.0
    assert rel_diff(y_batch, t.predict(x, training=True)) < 1e-12
    # That native train-mode call updated the native statistics as wrap's new_state says.
    native = t.running()
    assert set(native) == set(new_state)
    assert rel_diff(flat(native), flat({k: new_state[k] for k in native})) < 1e-12
    y_new = ops.to_numpy(running.apply(q, x, state=new_state, training=False)[0])
    assert rel_diff(y_new, t.predict(x, training=False)) < 1e-12


# ---- export ---------------------------------------------------------------------------------------------
def test_export_round_trip_is_exact(backend):
    model = Conv4(**CONV4)
    t = twin(backend, model, perturbed_init(model, 0))
    t.set_running(np.random.default_rng(4))
    before = t.snapshot()
    wrapped = mb.wrap(t.net, "running", **t.kwargs)
    mb.export(wrapped.init(0), t.net, state=wrapped.init_state())
    after = t.snapshot()
    assert all(np.array_equal(before[k], after[k]) for k in before)

    batch = native_batch(t, task_batch(np.random.default_rng(5), model.input_shape))
    maml = MAML(wrapped, inner_lr=0.1, inner_steps=2)
    adapted = maml.adapt(wrapped.init(0), batch.support_x[0], batch.support_y[0])
    x = batch.query_x[0]
    y, new_state = wrapped.apply(adapted, x)
    mb.export(adapted, wrapped, state=new_state)  # a NativeModel is accepted as the target too
    y_eval = ops.to_numpy(wrapped.apply(adapted, x, state=new_state, training=False)[0])
    assert np.array_equal(t.predict(x, training=False), y_eval)
    assert np.array_equal(t.predict(x, training=True), ops.to_numpy(y))


def test_export_errors_name_the_key(backend):
    model = MLP([3, 8, 4], activation="tanh")
    t = twin(backend, model, model.init(0))
    params = mb.wrap(t.net).init(0)
    first, last = list(params)[0], list(params)[-1]
    bad = {**params, first: np.zeros((2, 2))}
    expect_value_error(lambda: mb.export(bad, t.net), f"params[{first!r}]", "Received: shape (2, 2)")
    missing = {k: v for k, v in params.items() if k != last}
    expect_value_error(lambda: mb.export(missing, t.net), "Received: params without", repr(last))
    expect_value_error(lambda: mb.export({**params, "lr.x": 1.0}, t.net), "unknown key 'lr.x'")
    expect_value_error(lambda: mb.export(params, object()), "Expected a torch.nn.Module or a Keras model",
                       "Received: object")


# ---- bad inputs to wrap -----------------------------------------------------------------------------------
def test_wrap_rejects_what_it_cannot_run(backend):
    expect_value_error(lambda: mb.wrap(object()), "Expected a torch.nn.Module or a Keras model",
                       "Received: object")
    model = MLP([3, 8, 4], activation="tanh")
    t = twin(backend, model, model.init(0))
    expect_value_error(lambda: mb.wrap(t.net, eval_bn="moving"), "eval_bn", "Received: eval_bn='moving'")
    expect_value_error(lambda: mb.wrap(t.net, head="nope"), "Received: head='nope'")
    expect_value_error(lambda: mb.wrap(t.net, input_shape=(5,)), "input_shape", "Received: input_shape=(5,)")
    for bad in ((), (3, 0), (3.0,), "3"):
        expect_value_error(lambda: mb.wrap(t.net, input_shape=bad),
                           "Expected input_shape to be a tuple of positive ints", f"Received: input_shape={bad!r}")
    wrapped = mb.wrap(t.net)
    expect_value_error(lambda: wrapped(wrapped.init(0), np.zeros((2, 5))), "(batch, 3)", "x.shape=(2, 5)")
    expect_value_error(lambda: ANIL(wrapped, 0.1), "with a head")
    other = "tensorflow" if backend == "torch" else "torch"
    if other in BACKENDS:
        with mb.use_backend(other):
            expect_value_error(lambda: mb.wrap(t.net), "Expected a torch.nn.Module or a Keras model",
                               f"matching the active backend ('{other}'", f"Received: {type(t.net).__name__}")
            expect_value_error(lambda: wrapped(wrapped.init(0), np.zeros((2, 3))),
                               f"Received: backend='{other}'")


def test_torch_conv_module_needs_an_input_shape():
    if "torch" not in BACKENDS:
        pytest.skip("needs torch")
    import torch

    with mb.use_backend("torch"):
        net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten())
        expect_value_error(lambda: mb.wrap(net), "input_shape", "Conv2d", "Received: input_shape=None")
        expect_value_error(lambda: mb.wrap(net, input_shape=(1, 2, 2)), "Received: input_shape=(1, 2, 2)")
        assert mb.wrap(net, input_shape=(1, 5, 5)).output_shape == (18,)


def test_keras_model_dtype_must_match_floatx(float64):
    if "tensorflow" not in BACKENDS:
        pytest.skip("needs tensorflow")
    import keras

    with mb.use_backend("tensorflow"):
        net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])  # float32 variables
        wrapped = mb.wrap(net)
        expect_value_error(lambda: wrapped(wrapped.init(0), np.zeros((2, 3))), "float64", "Received: float32")


# ---- built-in models as native ones ----------------------------------------------------------------
NATIVE_MODELS = {
    "mlp": lambda: MLP([3, 7, 5, 2], activation="tanh"),
    "conv4": lambda: Conv4(4, input_shape=(16, 32, 2), channels=3),
    # 16 rows pad (0, 1) at stride 2 (TensorFlow's rule), 17 columns pad (1, 1).
    "conv4-strided": lambda: Conv4(4, input_shape=(16, 17, 1), channels=3, strided=True),
    "conv4-no-last-pool": lambda: Conv4(4, input_shape=(20, 24, 1), channels=3, last_pool=False),
}
FRAMEWORKS = {"torch": "torch", "keras": "tensorflow"}


def native_predict(net, framework, x, training):
    if framework == "torch":
        import torch

        net.train(training)
        with torch.no_grad():
            return net(torch.as_tensor(np.moveaxis(x, -1, 1) if x.ndim == 4 else x)).numpy()
    return np.asarray(net(x, training=training))


def load_native(framework, path):
    if framework == "torch":
        import torch

        return torch.jit.load(str(path))
    import keras

    return keras.models.load_model(str(path))


@pytest.mark.parametrize("framework", ["torch", "keras"])
@pytest.mark.parametrize("kind", list(NATIVE_MODELS))
def test_to_native_predicts_like_metabridge(backend, float64, kind, framework, tmp_path):
    if FRAMEWORKS[framework] not in BACKENDS:
        pytest.skip(f"needs {framework}")
    model = NATIVE_MODELS[kind]()
    rng = np.random.default_rng(6)
    p = perturbed_init(model, 0)
    state = {k: (rng.normal(size=v.shape) if k.endswith("mean") else rng.uniform(0.5, 2, v.shape))
             for k, v in model.init_state().items()}
    x = rng.standard_normal((5, *model.input_shape))
    y_train = ops.to_numpy(model(p, x))
    y_eval = ops.to_numpy(model.apply(p, x, state=state or None, training=False)[0])
    net = to_native(model, {k: ops.asarray(v) for k, v in p.items()}, framework, state=state or None)
    path = tmp_path / ("model.pt" if framework == "torch" else "model.keras")
    save_native(net, path)
    assert sorted(f.name for f in tmp_path.iterdir()) == [path.name]  # no temporary file left behind
    loaded = load_native(framework, path)
    # Evaluation first: a native training-mode call updates the running statistics.
    for native in (net, loaded):
        assert rel_diff(native_predict(native, framework, x, training=False), y_eval) < 1e-12
        assert rel_diff(native_predict(native, framework, x, training=True), y_train) < 1e-12


def test_meta_trained_on_torch_predicts_the_same_in_keras(both_backends):
    from metabridge.optim import Adam

    model = Conv4(**CONV4)
    batch = task_batch(np.random.default_rng(7), model.input_shape)
    with mb.use_backend("torch"):
        maml, opt = MAML(model, inner_lr=0.1, inner_steps=1), Adam(lr=1e-2)
        params = model.init(0)
        opt_state = opt.init(params)
        for _ in range(3):
            _, grads = maml.meta_value_and_grad(params, batch)
            params, opt_state = opt.update(params, grads, opt_state)
        adapted = maml.adapt(params, batch.support_x[0], batch.support_y[0])
        x = batch.query_x[0].astype("float32")
        y_torch = {"meta": ops.to_numpy(model(params, x)), "adapted": ops.to_numpy(model(adapted, x))}
    for name, values in (("meta", params), ("adapted", adapted)):
        net = to_native(model, values, "keras")
        assert rel_diff(np.asarray(net(x, training=True)), y_torch[name]) < 1e-5


def test_to_native_and_save_native_errors(backend, tmp_path):
    model = MLP([3, 4])
    p = model.init(0)
    expect_value_error(lambda: to_native(model, p, "jax"), "framework", "Received: framework='jax'")
    expect_value_error(lambda: to_native(Siamese(model, loss="contrastive"), p, "torch"), "MLP or Conv4",
                       "Received: Siamese")
    expect_value_error(lambda: to_native(model, {**p, "dense1.kernel": np.zeros((4, 3))}, "torch"),
                       "params['dense1.kernel'] of shape (3, 4)", "Received: shape (4, 3)")
    expect_value_error(lambda: save_native(object(), tmp_path / "x.pt"), "Received: object")
    if "tensorflow" in BACKENDS:
        net = to_native(model, p, "keras")
        expect_value_error(lambda: save_native(net, tmp_path / "x.h5"), "'.keras'", "x.h5")
