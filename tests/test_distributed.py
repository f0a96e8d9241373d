"""Data-parallel meta-training (issue 11): two workers on a loopback group
against one process, on torch.distributed (gloo) and tf.distribute
(MultiWorkerMirroredStrategy); a killed worker; resume; clear errors."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import BACKENDS, rel_diff
from metabridge.train import ExperimentConfig, RunOptions, train
from metabridge.train import distributed, launch as launch_mod
from metabridge.train.checkpoint import latest_params
from metabridge.train.experiment import Experiment

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="loopback groups tested on Linux")

WORKER = os.path.join(os.path.dirname(__file__), "distributed_worker.py")
F64 = dict(floatx="float64", test_tasks=100)
RUNS = {
    "maml": dict(algo="maml", dataset="digits", steps=6, meta_batch=4, **F64),  # second order
    "reptile": dict(algo="reptile", dataset="digits", steps=6, meta_batch=4, **F64),
    "protonet": dict(algo="protonet", dataset="digits", steps=6, meta_batch=4, **F64),
    "siamese": dict(algo="siamese", dataset="digits", steps=6, meta_batch=8, **F64),  # 8 pairs, 4 per worker
    "fomaml": dict(algo="fomaml", dataset="digits", steps=6, meta_batch=4, **F64),
    "metasgd": dict(algo="metasgd", dataset="digits", steps=6, meta_batch=4, **F64),
    "anil": dict(algo="anil", dataset="digits", steps=6, meta_batch=4, **F64),
    "matching": dict(algo="matching", dataset="digits", steps=6, meta_batch=4, **F64),
    "maml32": dict(algo="maml", dataset="digits", steps=20, meta_batch=4, test_tasks=100),
    "maml_best": dict(algo="maml", dataset="digits", steps=6, meta_batch=4, outer_lr=0.05, **F64),
}
FLOOR_STEPS = {"protonet": RUNS["protonet"]["steps"]}  # see _assert_params_equal
# Validation every 3 steps on 60 episodes (chunks of 50 and 10: one per worker); test on 100 (50 + 50).
OPTIONS = dict(checkpoint_every=3, eval_every=3, eval_episodes=60)
RUN_OPTIONS = {name: OPTIONS for name in RUNS} | {"maml_best": {**OPTIONS, "keep_best": True}}


@pytest.fixture(scope="module", params=BACKENDS)
def group(request, tmp_path_factory):
    """Every run of RUNS trained once by 2 workers (one launch), and what each worker saw."""
    backend = request.param
    out = tmp_path_factory.mktemp(f"group-{backend}")
    plan = out / "plan.json"
    plan.write_text(json.dumps({"backend": backend, "runs": [
        {"name": name, "config": cfg, "options": RUN_OPTIONS[name]} for name, cfg in RUNS.items()]}))
    rc = launch_mod.launch([str(plan), str(out)], 2, backend, program=[sys.executable, WORKER])
    assert rc == 0
    seen = [json.loads((out / f"rank-{r}.json").read_text()) for r in range(2)]
    return backend, out, seen


def _one_process(backend, name, tmp_path):
    return train(ExperimentConfig(**RUNS[name]), backend, run_dir=str(tmp_path / name),
                 options=RunOptions(**RUN_OPTIONS[name]), quiet=True)


def _assert_params_equal(ref: dict, got: dict, tol: float, steps: int = 0, lr: float = 1e-3) -> None:
    """Every element equal to ``tol`` relative to its array's size, plus Adam's
    floor: where a gradient entry is exactly zero in exact arithmetic (dead
    units; ProtoNet's last bias, since distances ignore a shared shift), the
    computed entry is rounding noise that depends on the summation order, and
    Adam divides it by its epsilon (1e-8), so each step may move the entry by
    ``lr * noise / 1e-8``. Noise here is at most 1e-16 (a few ulps of gradients
    of size <= 0.25, measured), so the floor is ``steps * lr * 1e-8``; it is
    granted (``steps > 0``) only to ProtoNet, where it is measured (9e-12 after
    6 steps) and structural; the others must meet ``tol`` alone."""
    floor = steps * lr * 1e-16 / 1e-8
    for k in ref:
        r, g = np.asarray(ref[k], np.float64), np.asarray(got[k], np.float64)
        scale = max(float(np.max(np.abs(r))), float(np.max(np.abs(g))), 1e-300)
        excess = np.abs(r - g) - tol * scale
        assert float(excess.max()) <= floor, (k, rel_diff(r, g), float(np.abs(r - g).max()))


def _val_records(path):
    lines = [json.loads(x) for x in open(os.path.join(path, "metrics.jsonl"))]
    return [r for r in lines if any(k.startswith(("val_", "monitor_")) and not k.endswith("ci95") for k in r)]


@pytest.mark.parametrize("name", ["maml", "reptile", "protonet", "siamese", "fomaml", "metasgd", "anil", "matching",
                                  "maml_best"])
def test_two_workers_equal_one_process_in_float64(group, name, tmp_path):
    backend, out, seen = group
    ref = _one_process(backend, name, tmp_path)
    for rank in range(2):  # every worker ends with the same parameters, equal to one process's
        got = dict(np.load(out / f"{name}-rank-{rank}.npz"))
        _assert_params_equal(ref.params, got, 1e-12, FLOOR_STEPS.get(name, 0))
    got_losses = np.asarray(seen[0]["runs"][name]["losses"])
    assert rel_diff(ref.losses, got_losses) <= 1e-12
    assert seen[0]["runs"][name]["metric"] == pytest.approx(ref.metric, rel=1e-12)  # test split over workers
    ref_val, got_val = _val_records(tmp_path / name), _val_records(out / name)
    assert len(ref_val) == len(got_val) == 2
    for a, b in zip(ref_val, got_val):  # validation split over workers
        key = next(k for k in a if k.startswith(("val_", "monitor_")) and not k.endswith("ci95"))
        assert b[key] == pytest.approx(a[key], rel=1e-12)
    # worker 0 wrote the run directory; its final checkpoint holds the same parameters
    saved, meta = latest_params(str(out / name / "checkpoints"))
    assert meta["workers"] == 2 and meta["step"] == RUNS[name]["steps"]
    _assert_params_equal(ref.params, saved, 1e-12, FLOOR_STEPS.get(name, 0))
    if RUN_OPTIONS[name].get("keep_best"):  # early stopping chose the same step and tested it
        best, best_meta = latest_params(str(out / name / "best"))
        ref_best, ref_meta = latest_params(str(tmp_path / name / "best"))
        assert best_meta["step"] == ref_meta["step"]
        _assert_params_equal(ref_best, best, 1e-12)


def test_two_workers_float32_loss_curve(group, tmp_path):
    backend, out, seen = group
    ref = _one_process(backend, "maml32", tmp_path)
    got = np.asarray(seen[0]["runs"]["maml32"]["losses"], np.float64)
    assert len(got) == 20
    rel = np.abs(got - ref.losses) / np.abs(np.asarray(ref.losses))
    assert float(rel.max()) <= 1e-5


def test_the_all_reduce_is_the_framework_s(group):
    backend, out, seen = group
    for rank in range(2):
        engine = seen[rank]["engine"]
        assert engine["initialized"] and engine["world"] == 2
        if backend == "torch":
            assert engine["name"] == "gloo"
        else:  # tf.distribute.MultiWorkerMirroredStrategy's class, reducing with TensorFlow's collective op
            assert engine["name"] == "CollectiveAllReduceStrategy"
            assert "CollectiveReduceV2" in engine["ops"] and engine["summed"] == [2.0, 4.0]
        for name, cfg in RUNS.items():
            # one per step, one per validation (2) and one for the test set; TensorFlow's
            # start-up broadcast is a sum too (torch uses dist.broadcast)
            broadcasts = 2 + 2 * RUN_OPTIONS[name].get("keep_best", False)
            expected = cfg["steps"] + cfg["steps"] // OPTIONS["eval_every"] + 1 + (
                broadcasts if backend == "tensorflow" else 0)
            assert seen[rank]["runs"][name]["all_reduce_calls"] == expected


# ---- a killed worker, and resume --------------------------------------------------------------
FAULT_STEPS = {"torch": 150, "tensorflow": 50}


def _cli(backend, run_dir, *extra):
    return [sys.executable, "-m", "metabridge", "train", "--algo", "maml", "--dataset", "digits",
            "--steps", str(FAULT_STEPS[backend]), "--meta-batch", "4", "--floatx", "float64", "--test-tasks", "50",
            "--checkpoint-every", "5", "--quiet", "--backend", backend, "--run-dir", str(run_dir), *extra]


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def _rank_of(pid: int) -> int | None:
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(x.split(b"=", 1) for x in f.read().split(b"\0") if b"=" in x)
    if b"RANK" in env:
        return int(env[b"RANK"])
    if b"TF_CONFIG" in env:
        return int(json.loads(env[b"TF_CONFIG"])["task"]["index"])
    return None


@pytest.mark.parametrize("backend", BACKENDS)
def test_killed_worker_stops_the_group_and_resume_is_exact(backend, tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    done = subprocess.run(_cli(backend, ref_dir, "--workers", "2"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    ref, _ = latest_params(str(ref_dir / "checkpoints"))

    proc = subprocess.Popen(_cli(backend, run_dir, "--workers", "2"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = run_dir / "checkpoints" / "step-00000005.json"
        deadline = time.monotonic() + 300
        while not first.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.05)
        victim = next(pid for pid in _children(proc.pid) if _rank_of(pid) == 1)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        _, err = proc.communicate(timeout=90)
        elapsed = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert elapsed < 60
    assert "worker 1 of 2" in err and "SIGKILL" in err, err[-2000:]
    assert not _children(proc.pid)
    saved, meta = latest_params(str(run_dir / "checkpoints"))  # the last good checkpoint is there and verifies
    assert 5 <= meta["step"] < FAULT_STEPS[backend]

    shutil.copytree(run_dir, tmp_path / "run1")
    again = subprocess.run([sys.executable, "-m", "metabridge", "resume", str(run_dir), "--workers", "2", "--quiet"],
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    final, meta = latest_params(str(run_dir / "checkpoints"))
    assert meta["step"] == FAULT_STEPS[backend]
    for k in ref:  # same worker count: bit for bit
        assert np.array_equal(final[k], ref[k]), k
    one = subprocess.run([sys.executable, "-m", "metabridge", "resume", str(tmp_path / "run1"), "--quiet"],
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    final1, _ = latest_params(str(tmp_path / "run1" / "checkpoints"))
    _assert_params_equal(ref, final1, 1e-12)  # another worker count: the same run up to summation order


# ---- clear errors before anything runs -------------------------------------------------------
def _metabridge(*args, env=None):
    return subprocess.run([sys.executable, "-m", "metabridge", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_uneven_meta_batch_is_refused_before_launch(tmp_path):
    r = _metabridge("train", "--algo", "maml", "--dataset", "digits", "--meta-batch", "5", "--workers", "2",
                    "--run-dir", str(tmp_path / "a"))
    assert r.returncode == 2
    assert "Expected meta_batch divisible by the number of workers" in r.stderr
    assert "Received: meta_batch=5, workers=2" in r.stderr
    assert not (tmp_path / "a").exists()


def test_more_workers_than_tasks_is_refused(tmp_path):
    r = _metabridge("train", "--algo", "maml", "--dataset", "digits", "--meta-batch", "4", "--workers", "8")
    assert r.returncode == 2 and "Expected workers <= meta_batch" in r.stderr and "workers=8" in r.stderr


def test_zero_workers_is_refused():
    r = _metabridge("train", "--algo", "maml", "--dataset", "digits", "--workers", "0")
    assert r.returncode == 2 and "Expected --workers >= 1. Received: --workers 0" in r.stderr


def test_workers_flag_inside_a_started_group_is_refused():
    env = dict(os.environ, RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="1")
    r = _metabridge("train", "--algo", "maml", "--dataset", "digits", "--workers", "2", env=env)
    assert r.returncode == 2 and "Expected no --workers inside a group that is already started" in r.stderr


@pytest.mark.parametrize("options", [dict(siamese_pairs="all-in-batch", meta_batch=4),
                                     dict(siamese_encoder="conv4", dataset="omniglot")])
def test_coupled_siamese_batches_are_refused(options):
    cfg = ExperimentConfig(**{"algo": "siamese", "dataset": "digits", "steps": 2, **options}).resolved()
    with pytest.raises(ValueError, match="Expected a training batch whose tasks or pairs are independent"):
        Experiment(cfg).check_split(2)
    Experiment(cfg).check_split(1)


def test_group_variables_are_read_and_checked():
    spec = distributed.from_env({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "5"})
    assert (spec.rank, spec.world, spec.engine) == (1, 2, "torch")
    tf_config = json.dumps({"cluster": {"worker": ["a:1", "b:2", "c:3"]}, "task": {"type": "worker", "index": 2}})
    spec = distributed.from_env({"TF_CONFIG": tf_config})
    assert (spec.rank, spec.world, spec.engine) == (2, 3, "tensorflow")
    assert distributed.from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    with pytest.raises(ValueError, match="Expected MASTER_ADDR beside WORLD_SIZE=2"):
        distributed.from_env({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="Expected 0 <= RANK < WORLD_SIZE"):
        distributed.from_env({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "5"})
    with pytest.raises(ValueError, match="Expected TF_CONFIG as JSON"):
        distributed.from_env({"TF_CONFIG": "{not json"})
    with pytest.raises(ValueError, match="Expected an integer in the environment variable WORLD_SIZE"):
        distributed.from_env({"WORLD_SIZE": "two"})


def test_backend_and_engine_must_match():
    spec = distributed.WorldSpec(0, 2, 0, "torch", "torchrun variables (RANK/WORLD_SIZE)")
    with pytest.raises(ValueError, match="Expected the tensorflow backend's launcher variables"):
        distributed.Workers.connect(spec, "tf")


def test_missing_backend_is_refused_before_launch(monkeypatch):
    monkeypatch.setattr(launch_mod.backends, "available", lambda: ["torch"])
    with pytest.raises(ImportError, match="pip install 'metabridge\\[tf\\]'"):
        launch_mod.launch(["train"], 2, "tensorflow")


def test_worker_environment_for_each_engine():
    env = launch_mod.worker_env(1, 2, "torch", [29400], base={"OMP_NUM_THREADS": "1", "TF_CONFIG": "x"})
    assert (env["RANK"], env["WORLD_SIZE"], env["MASTER_ADDR"], env["MASTER_PORT"]) == ("1", "2", "127.0.0.1", "29400")
    assert "TF_CONFIG" not in env and env["OMP_NUM_THREADS"] == "1"
    env = launch_mod.worker_env(0, 2, "tf", [1, 2], base={"RANK": "3"})
    assert json.loads(env["TF_CONFIG"]) == {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                                            "task": {"type": "worker", "index": 0}}
    assert "RANK" not in env


@pytest.mark.skipif("torch" not in BACKENDS, reason="torchrun comes with torch")
def test_torchrun_launches_the_cli(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "metabridge"]
    args = ["train", "--algo", "maml", "--dataset", "digits", "--steps", "6", "--meta-batch", "4", "--floatx",
            "float64", "--test-tasks", "100", "--quiet", "--backend", "torch", "--run-dir", str(tmp_path / "tr")]
    done = subprocess.run(torchrun + args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("maml on digits") == 1  # worker 0 reports for the group
    saved, meta = latest_params(str(tmp_path / "tr" / "checkpoints"))
    assert meta["workers"] == 2
    ref = train(ExperimentConfig(**RUNS["maml"]), "torch", quiet=True)
    _assert_params_equal(ref.params, saved, 1e-12)


@pytest.mark.skipif("torch" not in BACKENDS, reason="needs torch")
def test_an_error_on_worker_0_stops_the_group_at_once(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "config.json").write_text("{}")
    started = time.monotonic()
    r = _metabridge("train", "--algo", "maml", "--dataset", "digits", "--meta-batch", "4", "--steps", "3",
                    "--backend", "torch", "--workers", "2", "--run-dir", str(tmp_path / "taken"))
    assert r.returncode == 2
    assert "Expected a new run directory" in r.stderr and "worker 0 of 2" in r.stderr
    assert time.monotonic() - started < 120  # not the collective timeout (300 s)
    assert (tmp_path / "taken" / "config.json").read_text() == "{}"


@pytest.mark.skipif("torch" not in BACKENDS, reason="torchrun comes with torch")
def test_two_node_torchrun_on_one_machine(tmp_path):
    """``torchrun --nnodes 2`` as two nodes would run it, both on loopback."""
    port = launch_mod.free_ports(1)[0]
    args = ["train", "--algo", "maml", "--dataset", "digits", "--steps", "6", "--meta-batch", "4", "--floatx",
            "float64", "--test-tasks", "100", "--quiet", "--backend", "torch", "--run-dir", str(tmp_path / "mn")]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(r),
                               "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
                               "-m", "metabridge", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    outs = [p.communicate(timeout=300) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], [o[1][-1500:] for o in outs]
    assert "maml on digits" in outs[0][0] and "maml on digits" not in outs[1][0]  # node 0 holds worker 0
    saved, meta = latest_params(str(tmp_path / "mn" / "checkpoints"))
    assert meta["workers"] == 2
    ref = train(ExperimentConfig(**RUNS["maml"]), "torch", quiet=True)
    _assert_params_equal(ref.params, saved, 1e-12)


@pytest.mark.parametrize("raw", ["soon", "0", "-5", "inf", "nan"])
def test_a_bad_collective_timeout_is_a_clear_error(raw):
    with pytest.raises(ValueError, match=f"Expected METABRIDGE_COLLECTIVE_TIMEOUT > 0 \\(seconds\\). "
                                         f"Received: METABRIDGE_COLLECTIVE_TIMEOUT='{raw}'"):
        distributed.collective_timeout({"METABRIDGE_COLLECTIVE_TIMEOUT": raw})
    assert distributed.collective_timeout({}) == 300.0
