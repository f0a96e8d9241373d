"""Data (numpy only), the backend registry and import hygiene (DESIGN.md §2, §3, §5, §9)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import metabridge as mb
from metabridge.data import (
    ArrayDataset,
    Episode,
    EpisodeSampler,
    PairSampler,
    SinusoidTasks,
    TaskBatch,
    load_digits,
)

from conftest import BACKENDS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- fixtures ---------------------------------------------------------------------------
def _indexed_dataset(classes: int = 8, per_class: int = 12) -> ArrayDataset:
    """x[i] holds its own index i (so an episode can be traced back to examples);
    classes are shuffled through the array and carry non-contiguous label values."""
    n = classes * per_class
    y = np.repeat(np.arange(classes) * 3 + 7, per_class)  # labels 7, 10, 13, ...
    perm = np.random.default_rng(123).permutation(n)
    y = y[perm]
    x = np.arange(n, dtype=np.float64).reshape(n, 1)
    return ArrayDataset(x, y, name="indexed")


def _episode_equal(a: Episode, b: Episode) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f))
               for f in ("support_x", "support_y", "query_x", "query_y"))


# ---- digits -----------------------------------------------------------------------------
def test_digits_splits_are_disjoint_nhwc_and_scaled():
    train, test = load_digits("train"), load_digits("test")
    assert set(np.unique(train.y)) == {0, 1, 2, 3, 4}
    assert set(np.unique(test.y)) == {5, 6, 7, 8, 9}
    for ds in (train, test):
        assert ds.x.ndim == 4 and ds.x.shape[1:] == (8, 8, 1)  # NHWC
        assert ds.x.dtype == np.float32
        assert ds.x.min() >= 0.0 and ds.x.max() <= 1.0
        assert ds.x.max() == 1.0  # scaled by 16, not merely clipped
        assert ds.y.dtype.kind in "iu"
        assert len(ds.x) == len(ds.y)
        assert ds.num_classes == 5
    # No image of a test class appears among the train images.
    assert len(train) + len(test) == len(load_digits("all"))
    assert load_digits("test", dtype="float64").x.dtype == np.float64


def test_digits_bad_split_or_classes():
    with pytest.raises(ValueError, match="Expected split"):
        load_digits("validation")
    with pytest.raises(ValueError, match="Received"):
        load_digits(classes=(3, 12))


# ---- EpisodeSampler -----------------------------------------------------------------------
def test_episode_is_a_pure_function_of_seed_and_index():
    ds = load_digits("train")
    s = EpisodeSampler(ds, ways=3, shots=2, queries=4, seed=5)
    first = s.episode(7)
    s.episode(0), s.episode(100)  # other calls in between change nothing
    assert _episode_equal(first, s.episode(7))
    assert _episode_equal(first, EpisodeSampler(ds, ways=3, shots=2, queries=4, seed=5).episode(7))
    assert not _episode_equal(first, s.episode(8))
    assert not _episode_equal(first, EpisodeSampler(ds, ways=3, shots=2, queries=4, seed=6).episode(7))
    # A batch is episodes step * meta_batch + j, whatever was asked before.
    b = s.batch(step=2, meta_batch=3)
    for j in range(3):
        e = s.episode(6 + j)
        assert np.array_equal(b.support_x[j], e.support_x)
        assert np.array_equal(b.query_y[j], e.query_y)


def test_episode_shapes_labels_and_disjoint_support_query():
    ds = _indexed_dataset()
    ways, shots, queries = 4, 3, 5
    s = EpisodeSampler(ds, ways=ways, shots=shots, queries=queries, seed=0)
    for i in range(25):
        e = s.episode(i)
        assert e.support_x.shape == (ways * shots, 1)
        assert e.query_x.shape == (ways * queries, 1)
        assert e.support_y.shape == (ways * shots,) and e.query_y.shape == (ways * queries,)
        assert np.array_equal(np.sort(np.unique(e.support_y)), np.arange(ways))
        assert np.array_equal(np.sort(np.unique(e.query_y)), np.arange(ways))
        assert np.array_equal(np.bincount(e.support_y, minlength=ways), [shots] * ways)
        assert np.array_equal(np.bincount(e.query_y, minlength=ways), [queries] * ways)
        s_idx = e.support_x[:, 0].astype(int)
        q_idx = e.query_x[:, 0].astype(int)
        originals = []
        for label in range(ways):
            sup, qry = s_idx[e.support_y == label], q_idx[e.query_y == label]
            # every example of one label comes from one original class
            cls = np.unique(ds.y[np.concatenate([sup, qry])])
            assert len(cls) == 1
            originals.append(cls[0])
            # support and query disjoint, no example twice
            assert len(set(sup) | set(qry)) == shots + queries
        assert len(set(originals)) == ways  # distinct classes per label


def test_episode_sampler_image_shapes():
    e = EpisodeSampler(load_digits("test"), ways=5, shots=1, queries=3, seed=0).episode(0)
    assert e.support_x.shape == (5, 8, 8, 1) and e.query_x.shape == (15, 8, 8, 1)
    b = EpisodeSampler(load_digits("test"), ways=5, shots=2, queries=3, seed=0).batch(0, 4)
    assert b.support_x.shape == (4, 10, 8, 8, 1) and b.query_y.shape == (4, 15) and b.size == 4


def test_episode_sampler_bad_input():
    test = load_digits("test")
    with pytest.raises(ValueError) as info:
        EpisodeSampler(test, ways=20, shots=1, queries=1)
    assert str(info.value) == "Expected ways <= 5 (classes available in digits[test]). Received: ways=20"
    with pytest.raises(ValueError, match=r"Expected shots \+ queries <= 174.*Received: shots=100, queries=100"):
        EpisodeSampler(test, ways=5, shots=100, queries=100)
    with pytest.raises(ValueError, match="Expected ways >= 2. Received: ways=1"):
        EpisodeSampler(test, ways=1, shots=1, queries=1)
    with pytest.raises(ValueError, match="Expected shots >= 1. Received: shots=0"):
        EpisodeSampler(test, ways=5, shots=0, queries=1)
    with pytest.raises(ValueError, match="Expected queries >= 1"):
        EpisodeSampler(test, ways=5, shots=1, queries=0)
    with pytest.raises(ValueError, match="Received"):
        EpisodeSampler(test, ways=5, shots=1, queries=1, seed=-1)
    s = EpisodeSampler(test, ways=5, shots=1, queries=1)
    with pytest.raises(ValueError, match="Expected index >= 0"):
        s.episode(-1)
    with pytest.raises(ValueError, match="Expected meta_batch >= 1"):
        s.batch(0, 0)


# ---- PairSampler ------------------------------------------------------------------------------
def test_pair_sampler_balanced_and_pure():
    ds = _indexed_dataset()
    ps = PairSampler(ds, batch_size=10, seed=3)
    for i in range(10):
        x1, x2, same = ps.batch(i)
        assert x1.shape == x2.shape == (10, 1) and same.shape == (10,)
        assert same.dtype.kind == "f"
        assert np.array_equal(same, [1.0] * 5 + [0.0] * 5)
        a, b = x1[:, 0].astype(int), x2[:, 0].astype(int)
        assert np.array_equal(ds.y[a] == ds.y[b], same == 1.0)
        assert np.all(a[:5] != b[:5])  # positive pairs are two different examples
    x1, x2, same = ps.batch(4)
    again = PairSampler(ds, batch_size=10, seed=3).batch(4)
    assert all(np.array_equal(u, v) for u, v in zip((x1, x2, same), again))
    other_index, other_seed = ps.batch(5), PairSampler(ds, batch_size=10, seed=4).batch(4)
    assert not np.array_equal(x1, other_index[0])
    assert not np.array_equal(x1, other_seed[0])


def test_pair_sampler_digits_dtype_and_bad_input():
    x1, x2, same = PairSampler(load_digits("train", dtype="float64"), batch_size=6, seed=0).batch(0)
    assert x1.shape == (6, 8, 8, 1) and x1.dtype == same.dtype == np.float64
    with pytest.raises(ValueError, match="Expected batch_size >= 2"):
        PairSampler(load_digits("train"), batch_size=1)
    with pytest.raises(ValueError, match="Expected at least 2 classes"):
        PairSampler(ArrayDataset(np.zeros((4, 2)), np.zeros(4, dtype=int)), batch_size=4)


# ---- SinusoidTasks ------------------------------------------------------------------------------
def test_sinusoid_ranges_and_formula():
    tasks = SinusoidTasks(shots=7, queries=3, seed=11, dtype="float64")
    amps, phases, xs = [], [], []
    for i in range(400):
        e = tasks.episode(i)
        a, p = tasks.task_parameters(i)
        assert e.support_x.shape == (7, 1) and e.support_y.shape == (7, 1)
        assert e.query_x.shape == (3, 1) and e.query_y.shape == (3, 1)
        x = np.concatenate([e.support_x, e.query_x])
        y = np.concatenate([e.support_y, e.query_y])
        np.testing.assert_allclose(y, a * np.sin(x - p), rtol=0, atol=1e-12)
        amps.append(a), phases.append(p), xs.append(x)
    amps, phases, xs = np.array(amps), np.array(phases), np.concatenate(xs)
    assert amps.min() >= 0.1 and amps.max() <= 5.0
    assert phases.min() >= 0.0 and phases.max() <= np.pi
    assert xs.min() >= -5.0 and xs.max() <= 5.0
    # The ranges are actually covered, not a sliver of them.
    assert amps.min() < 0.5 and amps.max() > 4.6
    assert phases.min() < 0.3 and phases.max() > np.pi - 0.3
    assert xs.min() < -4.9 and xs.max() > 4.9


def test_sinusoid_pure_and_dtype():
    t = SinusoidTasks(shots=5, queries=5, seed=2)
    assert t.episode(0).support_x.dtype == np.float32
    assert _episode_equal(t.episode(9), SinusoidTasks(shots=5, queries=5, seed=2).episode(9))
    assert not _episode_equal(t.episode(9), t.episode(10))
    assert not _episode_equal(t.episode(9), SinusoidTasks(shots=5, queries=5, seed=3).episode(9))
    b = t.batch(3, 4)
    assert b.support_x.shape == (4, 5, 1)
    assert _episode_equal(Episode(b.support_x[1], b.support_y[1], b.query_x[1], b.query_y[1]), t.episode(13))
    with pytest.raises(ValueError, match="Expected shots >= 1"):
        SinusoidTasks(shots=0)


# ---- TaskBatch --------------------------------------------------------------------------------------
def test_task_batch_stack_and_slice():
    s = EpisodeSampler(_indexed_dataset(), ways=3, shots=2, queries=2, seed=0)
    eps = [s.episode(i) for i in range(5)]
    b = TaskBatch.stack(eps)
    assert b.size == 5
    assert b.support_x.shape == (5, 6, 1) and b.support_y.shape == (5, 6)
    assert b.query_x.shape == (5, 6, 1) and b.query_y.shape == (5, 6)
    part = b.slice(1, 4)
    assert isinstance(part, TaskBatch) and part.size == 3
    for j in range(3):
        assert _episode_equal(Episode(part.support_x[j], part.support_y[j], part.query_x[j], part.query_y[j]),
                              eps[1 + j])
    with pytest.raises(ValueError, match="Expected at least one episode"):
        TaskBatch.stack([])


def test_task_batch_bad_shapes_and_values():
    sx, sy = np.zeros((2, 4, 3)), np.zeros((2, 4), dtype=int)
    qx, qy = np.zeros((2, 6, 3)), np.zeros((2, 6), dtype=int)
    TaskBatch(sx, sy, qx, qy)  # fine
    with pytest.raises(ValueError, match="Expected the same meta-batch size.*Received"):
        TaskBatch(sx, sy, np.zeros((3, 6, 3)), np.zeros((3, 6), dtype=int))
    with pytest.raises(ValueError, match="Expected as many support_y as support_x.*Received"):
        TaskBatch(sx, np.zeros((2, 5), dtype=int), qx, qy)
    with pytest.raises(ValueError, match="Expected as many query_y as query_x.*Received"):
        TaskBatch(sx, sy, qx, np.zeros((2, 5), dtype=int))
    with pytest.raises(ValueError, match="at least 2-D.*Received"):
        TaskBatch(sx, np.zeros(2, dtype=int), qx, qy)
    for bad in (np.nan, np.inf, -np.inf):
        x = sx.copy()
        x[1, 2, 0] = bad
        with pytest.raises(ValueError, match="Expected finite values in support_x. Received"):
            TaskBatch(x, sy, qx, qy)
        x = qx.copy()
        x[0, 0, 1] = bad
        with pytest.raises(ValueError, match="Expected finite values in query_x. Received"):
            TaskBatch(sx, sy, x, qy)


def test_array_dataset_bad_input():
    with pytest.raises(ValueError, match="Expected integer labels"):
        ArrayDataset(np.zeros((3, 2)), np.array([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="Received"):
        ArrayDataset(np.zeros((3, 2)), np.array([0, 1]))


# ---- backend registry ---------------------------------------------------------------------------------
def test_unknown_backend_lists_valid_names():
    for call in (mb.set_backend, lambda n: mb.use_backend(n).__enter__()):
        with pytest.raises(ValueError) as info:
            call("jax")
        msg = str(info.value)
        assert "Expected" in msg and "Received: backend='jax'" in msg
        for name in ("torch", "pytorch", "tf", "tensorflow"):
            assert repr(name) in msg


@pytest.mark.parametrize("alias, canonical", [("torch", "torch"), ("pytorch", "torch"), ("PyTorch", "torch"),
                                              ("tf", "tensorflow"), ("tensorflow", "tensorflow"),
                                              ("TF", "tensorflow")])
def test_backend_aliases(alias, canonical):
    assert mb.config.canonical_backend_name(alias) == canonical
    if canonical not in BACKENDS:
        pytest.skip(f"{canonical} not installed")
    with mb.use_backend(alias) as name:
        assert name == canonical and mb.get_backend() == canonical
        assert mb.ops.is_tensor(mb.ops.asarray([1.0]))


def test_use_backend_is_per_thread():
    if set(BACKENDS) != {"torch", "tensorflow"}:
        pytest.skip("needs both backends")
    previous = mb.config._global_backend
    mb.config._global_backend = "torch"
    inside, release, seen = threading.Event(), threading.Event(), {}

    def worker():
        with mb.use_backend("tf"):
            seen["worker"] = mb.get_backend()
            inside.set()
            release.wait(30)
        seen["worker_after"] = mb.get_backend()

    try:
        t = threading.Thread(target=worker)
        t.start()
        assert inside.wait(30)
        seen["main_during"] = mb.get_backend()  # the worker is inside its block now
        with mb.use_backend("torch"):
            seen["main_block"] = mb.get_backend()
        release.set()
        t.join(30)
    finally:
        release.set()
        mb.config._global_backend = previous
    assert seen == {"worker": "tensorflow", "main_during": "torch", "main_block": "torch",
                    "worker_after": "torch"}


def test_use_backend_restores_on_exit_and_error():
    if not BACKENDS:
        pytest.skip("no backend installed")
    before = mb.get_backend()
    other = BACKENDS[-1]
    with pytest.raises(RuntimeError):
        with mb.use_backend(other):
            assert mb.get_backend() == other
            raise RuntimeError("boom")
    assert mb.get_backend() == before


# ---- subprocess checks: import hygiene, env var, missing framework ---------------------------------------
def _run(code: str, env: dict | None = None, timeout: int = 120) -> str:
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = ROOT + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    full_env.pop("METABRIDGE_BACKEND", None)
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, cwd=ROOT, timeout=timeout)
    assert proc.returncode == 0, f"subprocess failed:\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_import_metabridge_imports_no_framework():
    out = _run("""
        import sys
        import metabridge, metabridge.data, metabridge.algorithms, metabridge.nn, metabridge.optim, metabridge.ops
        from metabridge.algorithms import MAML, Siamese
        from metabridge.nn import MLP, Conv4
        from metabridge.data import load_digits, EpisodeSampler
        MLP([1, 4, 1]).init(seed=0)                                   # numpy only
        EpisodeSampler(load_digits("test"), 5, 1, 1, seed=0).episode(0)
        metabridge.available_backends()
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "tensorflow", "keras", "jax"))
        print("LOADED", bad)
    """)
    assert "LOADED []" in out


def test_selecting_torch_imports_only_torch():
    if "torch" not in BACKENDS:
        pytest.skip("torch not installed")
    out = _run("""
        import sys
        import metabridge as mb
        assert "torch" not in sys.modules
        mb.set_backend("torch")
        x = mb.ops.asarray([[1.0, -2.0]])
        print("RELU", mb.ops.to_numpy(mb.ops.relu(x)).tolist(), type(x).__module__.split(".")[0])
        print("HAS", "torch" in sys.modules, "tensorflow" in sys.modules)
    """)
    assert "RELU [[1.0, 0.0]] torch" in out
    assert "HAS True False" in out


def test_env_var_selects_tensorflow_which_imports_only_tensorflow():
    """METABRIDGE_BACKEND is honoured (lazily: resolving the name imports
    nothing), and using or selecting TensorFlow never imports torch."""
    if "tensorflow" not in BACKENDS:
        pytest.skip("tensorflow not installed")
    out = _run("""
        import sys
        import metabridge as mb
        print("BACKEND", mb.get_backend(), "tensorflow" in sys.modules)
        x = mb.ops.asarray([[1.0, -2.0]])
        print("RELU", mb.ops.to_numpy(mb.ops.relu(x)).tolist(), type(x).__module__.split(".")[0])
        mb.set_backend("tf")
        print("HAS", "tensorflow" in sys.modules, "torch" in sys.modules)
    """, env={"METABRIDGE_BACKEND": "tf"})
    assert "BACKEND tensorflow False" in out
    assert "RELU [[1.0, 0.0]] tensorflow" in out
    assert "HAS True False" in out


def test_env_var_aliases_and_invalid_value():
    out = _run("""
        import sys
        import metabridge as mb
        print("BACKEND", mb.get_backend())
        mb.config._global_backend = "tensorflow"   # what set_backend records
        print("GLOBAL WINS", mb.get_backend())
    """, env={"METABRIDGE_BACKEND": "PyTorch"})
    assert "BACKEND torch" in out and "GLOBAL WINS tensorflow" in out
    out = _run("""
        import metabridge as mb
        try:
            mb.get_backend()
        except ValueError as e:
            print("ERR", e)
    """, env={"METABRIDGE_BACKEND": "mxnet"})
    assert "ERR Expected backend to be one of" in out and "Received: backend='mxnet'" in out


_BOTH_BACKENDS_SCRIPT = """
    import numpy as np
    import metabridge as mb
    from metabridge.algorithms import MAML
    from metabridge.nn import MLP
    from metabridge.data import SinusoidTasks
    mb.set_floatx("float64")
    model = MLP([1, 8, 1])
    batch = SinusoidTasks(shots=4, queries=4, seed=0, dtype="float64").batch(0, 2)
    out = {}
    for name in ("torch", "tf"):
        with mb.use_backend(name):
            loss, grads = MAML(model, inner_lr=0.1, loss="mse").meta_value_and_grad(model.init(0), batch)
            out[name] = (float(mb.ops.to_numpy(loss)), mb.ops.to_numpy(grads["dense1.kernel"]))
    assert abs(out["torch"][0] - out["tf"][0]) <= 1e-12 * abs(out["torch"][0])
    assert np.allclose(out["torch"][1], out["tf"][1], rtol=0, atol=1e-12)
    print("BOTH OK", out["torch"][0])
"""


@pytest.mark.parametrize("order", [("torch", "tensorflow"), ("tensorflow", "torch")])
def test_both_frameworks_in_one_process_either_import_order(order, both_backends):
    pre = "\n".join(f"import {m}" for m in order)
    out = _run(pre + "\n" + textwrap.dedent(_BOTH_BACKENDS_SCRIPT))
    assert "BOTH OK" in out


def test_missing_framework_names_the_pip_extra():
    out = _run("""
        import sys
        import metabridge as mb
        # Simulate uninstalled frameworks: None in sys.modules makes the import fail.
        sys.modules["tensorflow"] = None
        sys.modules["torch"] = None
        print("AVAILABLE", mb.available_backends())
        for name in ("tf", "tensorflow", "torch", "pytorch"):
            try:
                mb.set_backend(name)
            except ImportError as e:
                print("ERR", name, "|", e)
        try:
            with mb.use_backend("tf"):
                pass
        except ImportError as e:
            print("ERR use_backend |", e)
        print("STILL", mb.get_backend(), mb.config._global_backend)
    """)
    lines = out.splitlines()
    assert "AVAILABLE []" in lines
    for name in ("tf", "tensorflow"):
        line = next(x for x in lines if x.startswith(f"ERR {name} |"))
        assert "pip install 'metabridge[tf]'" in line and "'tensorflow'" in line
    for name in ("torch", "pytorch"):
        line = next(x for x in lines if x.startswith(f"ERR {name} |"))
        assert "pip install 'metabridge[torch]'" in line and "'torch'" in line
    assert any(x.startswith("ERR use_backend |") and "metabridge[tf]" in x for x in lines)
    assert "STILL torch None" in lines  # a failed selection changes nothing


def test_missing_framework_via_meta_path_finder():
    out = _run("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "tensorflow" or name.startswith("tensorflow."):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None
        sys.meta_path.insert(0, Block())
        import metabridge as mb
        try:
            mb.set_backend("tensorflow")
        except ImportError as e:
            print("ERR |", e)
        print("TF", "tensorflow" in sys.modules)
    """)
    assert "pip install 'metabridge[tf]'" in out
    assert "TF False" in out


def test_atomic_file_replaces_only_on_success(tmp_path):
    from metabridge.utils.atomic import atomic_file

    target = tmp_path / "cache.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as fh:
            fh.write(b"half-")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["cache.bin"]
    with atomic_file(target) as fh:
        fh.write(b"new")
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["cache.bin"]
