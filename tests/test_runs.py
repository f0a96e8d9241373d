"""Run directories: checkpoints, exact resume (also after SIGKILL), config files,
cross-backend evaluation, TensorBoard files and plots."""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import BACKENDS

from metabridge.cli import main
from metabridge.train import ExperimentConfig, RunDir, RunOptions, resume, train
from metabridge.train.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    save_checkpoint,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIN = dict(algo="maml", dataset="sinusoid", steps=12, meta_batch=3, test_tasks=10)


def _final_tensors(path: str) -> dict:
    tensors, meta = load_checkpoint(list_checkpoints(os.path.join(path, "checkpoints"))[-1])
    return tensors, meta


# ---- checkpoint files ------------------------------------------------------------------------------------
def test_checkpoint_round_trip_keeps_last_k(tmp_path):
    d = str(tmp_path / "ck")
    for step in (1, 2, 3, 4):
        save_checkpoint(d, step, {"params/w": np.full(3, step, np.float32), "opt/m.w": np.zeros(2)}, {"x": step},
                        keep=2)
    assert [os.path.basename(p) for p in list_checkpoints(d)] == ["step-00000003.json", "step-00000004.json"]
    assert sorted(os.listdir(d)) == ["step-00000003.json", "step-00000003.safetensors",
                                     "step-00000004.json", "step-00000004.safetensors"]
    tensors, meta = load_latest(d)
    assert meta["step"] == 4 and meta["x"] == 4
    np.testing.assert_array_equal(tensors["params/w"], np.full(3, 4, np.float32))
    assert tensors["params/w"].dtype == np.float32


def test_safetensors_file_holds_no_pickle(tmp_path):
    save_checkpoint(str(tmp_path), 1, {"params/w": np.ones(2)}, {})
    raw = open(tmp_path / "step-00000001.safetensors", "rb").read()
    header_len = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + header_len])                     # the format: JSON header + raw bytes
    assert header["params/w"]["dtype"] == "F64" and header["params/w"]["shape"] == [2]


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_newest_checkpoint_is_refused_and_the_previous_used(tmp_path, damage):
    d = str(tmp_path)
    for step in (1, 2):
        save_checkpoint(d, step, {"params/w": np.full(64, step, np.float64)}, {})
    target = os.path.join(d, "step-00000002.safetensors")
    if damage == "truncate":
        with open(target, "r+b") as fh:
            fh.truncate(os.path.getsize(target) // 2)
    elif damage == "flip":
        raw = bytearray(open(target, "rb").read())
        raw[-1] ^= 0xFF
        open(target, "wb").write(bytes(raw))
    else:
        os.unlink(target)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(os.path.join(d, "step-00000002.json"))
    assert "Expected" in str(info.value) and "Received" in str(info.value)
    with pytest.warns(UserWarning, match="Skipping checkpoint step-00000002.json"):
        tensors, meta = load_latest(d)
    assert meta["step"] == 1 and tensors["params/w"][0] == 1


def test_tensor_file_without_metadata_is_not_a_checkpoint(tmp_path):
    save_checkpoint(str(tmp_path), 1, {"params/w": np.ones(2)}, {})
    shutil.copy(tmp_path / "step-00000001.safetensors", tmp_path / "step-00000002.safetensors")
    assert load_latest(str(tmp_path))[1]["step"] == 1


# ---- exact resume, in process ----------------------------------------------------------------------------
@pytest.mark.parametrize("algo", ["maml", "reptile", "protonet"])
def test_resume_from_a_middle_checkpoint_is_bit_identical(tmp_path, backend, algo):
    fields = {"maml": dict(SIN, lr_decay_every=5), "reptile": dict(SIN, algo="reptile"),
              "protonet": dict(algo="protonet", dataset="digits", steps=12, meta_batch=2, test_tasks=10,
                               lr_decay_every=5)}[algo]
    cfg = ExperimentConfig(**fields)
    options = RunOptions(checkpoint_every=4, keep=10, eval_every=3, eval_episodes=4, tensorboard=True)
    train(cfg, backend, run_dir=str(tmp_path / "a"), options=options, quiet=True)
    train(cfg, backend, run_dir=str(tmp_path / "b"), options=options, quiet=True)
    a, b = RunDir.open(str(tmp_path / "a")), RunDir.open(str(tmp_path / "b"))
    for meta_path in list_checkpoints(b.checkpoints)[1:]:          # back to the state after step 4
        os.unlink(meta_path)
    result = resume(b.path, quiet=True)
    ta, _ = _final_tensors(a.path)
    tb, meta = _final_tensors(b.path)
    assert meta["step"] == 12 and set(ta) == set(tb)
    for k in ta:
        assert np.array_equal(ta[k], tb[k]), k
    assert [m["loss"] for m in a.read_metrics() if "loss" in m] == result.losses
    strip = [{k: v for k, v in m.items() if k != "seconds"} for m in a.read_metrics()]
    assert strip == [{k: v for k, v in m.items() if k != "seconds"} for m in b.read_metrics()]
    assert [m["step"] for m in a.read_metrics() if "monitor_ci95" in m] == [2, 5, 8, 11]
    assert _event_steps(b.path) == _event_steps(a.path)     # the resumed run's TensorBoard file: no overlap


def _event_steps(path: str) -> list:
    """(tag, step) of every scalar in a run's TensorBoard file, decoded by hand (format: TFRecord of Event)."""
    [name] = os.listdir(os.path.join(path, "tb"))
    raw, out, i = open(os.path.join(path, "tb", name), "rb").read(), [], 0
    while i < len(raw):
        n = struct.unpack("<Q", raw[i:i + 8])[0]
        data = raw[i + 12:i + 12 + n]
        i += 16 + n
        if b"brain.Event" in data:
            continue
        step_at = data.index(b"\x10", 9) + 1                     # field 2 (step), after the 9-byte wall time
        step, shift = 0, 0
        while True:
            byte = data[step_at]
            step |= (byte & 0x7F) << shift
            step_at, shift = step_at + 1, shift + 7
            if not byte & 0x80:
                break
        tag_len = data[step_at + 4]                               # field 5 > field 1 > field 1 (tag)
        out.append((data[step_at + 5:step_at + 5 + tag_len].decode(), step))
    return out


def test_step_decay_reaches_the_training_loop(backend):
    base = dict(algo="protonet", dataset="digits", steps=3, meta_batch=2, test_tasks=5, outer_lr=0.1)
    plain = train(ExperimentConfig(**base), backend, quiet=True)
    decayed = train(ExperimentConfig(**base, lr_decay_every=1, lr_decay=0.01), backend, quiet=True)
    assert plain.losses[:2] == decayed.losses[:2]                 # steps 0 and 1 see lr 0.1 and lr 0.001 ...
    assert plain.losses[2] != decayed.losses[2]                   # ... so step 2 starts from different params


def test_reptile_trains_on_digits(backend):
    res = train(ExperimentConfig(algo="reptile", dataset="digits", steps=2, meta_batch=2, test_tasks=4,
                                 inner_steps=2, inner_lr=0.01), backend, quiet=True)
    assert len(res.losses) == 2 and 0 <= res.metric <= 1


def test_failed_start_leaves_no_run_directory(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--algo", "maml", "--dataset", "omniglot", "--data-dir", str(tmp_path / "nowhere"),
                 "--run-dir", str(run), "--quiet"]) == 2
    assert "Received" in capsys.readouterr().err and not run.exists()


@pytest.mark.parametrize("meta, fragment", [
    ({"format": 1}, "Expected tensors, bytes, sha256, step in the checkpoint metadata"),
    ({"format": 1, "tensors": "../x", "bytes": 1, "sha256": "0", "step": 1}, "Expected a file name beside"),
    ({"format": 2}, "Expected a metabridge checkpoint (format 1)"),
])
def test_bad_checkpoint_metadata_is_a_clear_error(tmp_path, meta, fragment):
    path = tmp_path / "step-00000001.json"
    path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=re.escape(fragment)):
        load_checkpoint(str(path))
    with pytest.warns(UserWarning, match="Skipping checkpoint"):
        assert load_latest(str(tmp_path)) is None


# ---- exact resume after SIGKILL --------------------------------------------------------------------------
def _spawn(args: list[str], log: str, fault: str | None = None) -> subprocess.Popen:
    """``python -m metabridge ARGS`` with one thread per framework (same float sums in
    every process) and stderr to a file (a pipe could fill up and block the child)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
           "PYTHONPATH": ROOT}
    env.pop("METABRIDGE_FAULT_PAUSE", None)
    if fault:
        env["METABRIDGE_FAULT_PAUSE"] = fault
    with open(log, "w") as err:
        return subprocess.Popen([sys.executable, "-m", "metabridge", *args], env=env, stdout=subprocess.DEVNULL,
                                stderr=err)


def _wait_for(predicate, proc, log: str, what: str, timeout: float = 300.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"process ended before {what}: {open(log).read()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _kill(proc) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_sigkill_mid_run_and_mid_checkpoint_then_resume_is_bit_identical(tmp_path, backend_name):
    steps = 120
    args = ["train", "--algo", "maml", "--dataset", "sinusoid", "--steps", str(steps), "--meta-batch", "4",
            "--test-tasks", "5", "--backend", backend_name, "--checkpoint-every", "10", "--keep", "2", "--quiet"]
    log = str(tmp_path / "stderr.txt")
    ref = _spawn([*args, "--run-dir", str(tmp_path / "ref")], log)
    assert ref.wait(timeout=600) == 0, open(log).read()[-2000:]
    reference, _ = _final_tensors(str(tmp_path / "ref"))

    # 1. SIGKILL at a random step: as soon as a randomly chosen checkpoint is on disk,
    #    so the process dies somewhere in the next 10 steps
    killed = tmp_path / "killed"
    target = random.Random().choice(range(20, 100, 10))
    proc = _spawn([*args, "--run-dir", str(killed)], log)
    marker = killed / "checkpoints" / f"step-{target:08d}.json"
    _wait_for(marker.exists, proc, log, f"checkpoint {target}")
    _kill(proc)
    last = json.load(open(list_checkpoints(str(killed / "checkpoints"))[-1]))["step"]
    assert target <= last < steps

    # 2. SIGKILL while the tensors of checkpoint 60 are on their way to disk, then inside the commit gap
    for point in ("tensors@60", "between@60"):
        run = tmp_path / point.replace("@", "-")
        proc = _spawn([*args, "--run-dir", str(run)], log, fault=point)
        signal_line = f"metabridge-fault-pause:{point.split('@')[0]}"
        _wait_for(lambda: signal_line in open(log).read(), proc, log, signal_line)
        _kill(proc)
        names = os.listdir(run / "checkpoints")
        if point.startswith("tensors"):
            assert any(n.endswith(".tmp") for n in names) and "step-00000060.safetensors" not in names
        else:
            assert "step-00000060.safetensors" in names and "step-00000060.json" not in names
        assert json.load(open(list_checkpoints(str(run / "checkpoints"))[-1]))["step"] == 50

    ref_losses = [m["loss"] for m in RunDir.open(str(tmp_path / "ref")).read_metrics()]
    for path in (killed, tmp_path / "tensors-60", tmp_path / "between-60"):
        out = _spawn(["resume", str(path), "--quiet"], log)
        assert out.wait(timeout=600) == 0, open(log).read()[-2000:]
        final, meta = _final_tensors(str(path))
        assert meta["step"] == steps
        assert not [n for n in os.listdir(path / "checkpoints") if n.endswith(".tmp")]
        for k in reference:
            assert np.array_equal(final[k], reference[k]), (path, k)
        assert [m["loss"] for m in RunDir.open(str(path)).read_metrics()] == ref_losses


# ---- non-finite loss ---------------------------------------------------------------------------------------
def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, backend):
    # an absurd outer learning rate: the first update sends the meta-loss to inf at step 1
    cfg = ExperimentConfig(**dict(SIN, steps=30, outer_lr=1e4))
    run = RunDir.create(str(tmp_path / "r"), cfg, RunOptions(checkpoint_every=1, keep=2), backend)
    with pytest.raises(FloatingPointError, match=r"Non-finite meta-loss inf at step 1; stopping"):
        train(run.config, backend, run, quiet=True)
    tensors, meta = load_latest(run.checkpoints)
    assert all(np.all(np.isfinite(v)) for v in tensors.values())
    assert meta["step"] == len(run.read_metrics()) == 1


# ---- config files --------------------------------------------------------------------------------------------
def _write(tmp_path, text: str) -> str:
    path = tmp_path / "exp.toml"
    path.write_text(text)
    return str(path)


def test_config_file_runs_and_flags_override_it(tmp_path, capsys):
    path = _write(tmp_path, 'algo = "maml"\ndataset = "sinusoid"\nsteps = 50\nmeta-batch = 3\ntest_tasks = 5\n'
                            f'run-dir = "{tmp_path / "run"}"\ncheckpoint-every = 2\n')
    assert main(["train", "--config", path, "--steps", "4", "--quiet", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["config"]["steps"] == 4 and report["config"]["meta_batch"] == 3
    run = RunDir.open(str(tmp_path / "run"))
    assert run.config.steps == 4 and run.options.checkpoint_every == 2
    assert [os.path.basename(p) for p in list_checkpoints(run.checkpoints)] == [
        "step-00000002.json", "step-00000004.json"]


@pytest.mark.parametrize("text, fragment", [
    ("inner_lrr = 0.1\n", "Received: unknown key 'inner_lrr'"),
    ('steps = "many"\n', "Expected steps to be int in"),
    ("steps = 2.5\n", "Expected steps to be int in"),
    ("fce = 1\n", "Expected fce to be bool in"),
    ("ways = 1\ndataset = 'digits'\n", "Expected ways >= 2. Received: ways=1"),
    ("inner_lr = -1.0\n", "Expected inner_lr > 0. Received: inner_lr=-1.0"),
    ("checkpoint_every = 0\n", "Expected checkpoint_every >= 1. Received: checkpoint_every=0"),
    ("steps = [1\n", "Expected valid TOML in"),
    ('algo = "reptile"\nlr_decay_every = 10\n', "Expected no lr_decay_every for reptile"),
    ("transductive = false\n", "Expected transductive = true for maml"),
    ('algo = "protonet"\ntest_inner_steps = 5\n', "Expected no test_inner_steps for protonet"),
])
def test_bad_config_files_are_rejected_before_training(tmp_path, capsys, text, fragment):
    path = _write(tmp_path, text + f'run-dir = "{tmp_path / "never"}"\n')
    assert main(["train", "--config", path, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Received" in err, err
    assert not (tmp_path / "never").exists()


def test_not_a_run_directory_and_existing_run_dir_are_clear_errors(tmp_path, capsys):
    assert main(["resume", str(tmp_path)]) == 2
    assert "Expected a run directory" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    run = tmp_path / "run"
    assert main(["train", *_cli_sin(), "--run-dir", str(run)]) == 0
    capsys.readouterr()
    assert main(["train", *_cli_sin(), "--run-dir", str(run)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def _cli_sin():
    return ["--algo", "maml", "--dataset", "sinusoid", "--steps", "2", "--meta-batch", "2", "--test-tasks", "3",
            "--quiet"]


def test_checkpoint_of_another_model_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *_cli_sin(), "--run-dir", str(run)]) == 0
    record = json.load(open(run / "config.json"))
    record["config"]["dataset"] = "digits"                         # now the model is a digits classifier
    json.dump(record, open(run / "config.json", "w"))
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert "Expected a checkpoint of this run's model" in err and "Received" in err


# ---- cross-backend evaluation ---------------------------------------------------------------------------
def test_checkpoint_from_one_backend_evaluates_identically_on_the_other(tmp_path, both_backends):
    from metabridge import config, ops
    from metabridge.train.checkpoint import split_tensors
    from metabridge.train.evaluation import evaluate_run
    from metabridge.train.experiment import Experiment

    for trained_on in both_backends:
        path = str(tmp_path / trained_on)
        cfg = ExperimentConfig(algo="protonet", dataset="digits", steps=6, meta_batch=2, test_tasks=60)
        run = RunDir.create(path, cfg, RunOptions(checkpoint_every=3), trained_on)
        train(run.config, trained_on, run, quiet=True)
        results = {b: evaluate_run(path, backend=b) for b in both_backends}
        assert results["torch"]["metric"] == results["tensorflow"]["metric"]
        assert results["torch"]["trained_on"] == trained_on and results["tensorflow"]["episodes"] == 60
        wide = {b: evaluate_run(path, backend=b, floatx="float64") for b in both_backends}
        assert wide["torch"]["metric"] == wide["tensorflow"]["metric"] and wide["torch"]["floatx"] == "float64"
        params, _, _ = split_tensors(load_latest(run.checkpoints)[0])
        logits = {}
        for b in both_backends:
            with config.use_backend(b):
                setup = Experiment(run.config.resolved())
                ep = setup.sources.test.episode(0)
                sx, qx = ep.support_x.reshape(len(ep.support_x), -1), ep.query_x.reshape(len(ep.query_x), -1)
                logits[b] = ops.to_numpy(setup.algorithm.logits(params, sx, ep.support_y, qx, 5))
        assert np.max(np.abs(logits["torch"] - logits["tensorflow"])) <= 1e-5 * np.max(np.abs(logits["torch"]))


def test_eval_command_prints_mean_and_ci(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *_cli_sin(), "--run-dir", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "7", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["episodes"] == 7 and out["metric_name"] == "mse" and out["metric_ci95"] > 0
    assert main(["eval", str(run), "--episodes", "0"]) == 2
    assert "Expected episodes >= 1. Received: episodes=0" in capsys.readouterr().err


# ---- TensorBoard and plots --------------------------------------------------------------------------------
def test_crc32c_known_answer():
    from metabridge.train.tensorboard import crc32c

    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0


def test_tensorboard_events_read_back_with_tensorflow(tmp_path):
    tf = pytest.importorskip("tensorflow")
    from tensorflow.core.util import event_pb2

    run = tmp_path / "run"
    assert main(["train", *_cli_sin(), "--steps", "5", "--run-dir", str(run), "--tensorboard"]) == 0
    files = os.listdir(run / "tb")
    assert len(files) == 1 and "tfevents" in files[0]
    records = [event_pb2.Event.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(run / "tb" / files[0]))]
    assert records[0].file_version == "brain.Event:2"
    scalars = [(e.step, e.summary.value[0].tag, e.summary.value[0].simple_value) for e in records[1:]]
    losses = [m["loss"] for m in RunDir.open(str(run)).read_metrics()]
    assert [s[0] for s in scalars] == list(range(5)) and {s[1] for s in scalars} == {"train/loss"}
    np.testing.assert_allclose([s[2] for s in scalars], losses, rtol=1e-6)   # stored as float32


def test_plot_overlays_runs(tmp_path):
    pytest.importorskip("matplotlib")
    paths = []
    for name in ("a", "b"):
        run = tmp_path / name
        assert main(["train", *_cli_sin(), "--steps", "6", "--run-dir", str(run), "--eval-every", "3",
                     "--eval-episodes", "4"]) == 0
        paths.append(str(run))
    out = tmp_path / "curves.png"
    assert main(["plot", *paths, "-o", str(out)]) == 0
    assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    metrics = RunDir.open(paths[0]).read_metrics()
    assert [m["step"] for m in metrics if "monitor_mse" in m] == [2, 5]   # sinusoid has no validation part


# ---- export ---------------------------------------------------------------------------------------------
def test_export_command_writes_native_models_that_predict_like_metabridge(tmp_path, capsys, both_backends):
    import keras
    import torch

    from metabridge import config, ops
    from metabridge.nn import MLP
    from metabridge.train.checkpoint import split_tensors

    run = tmp_path / "run"
    assert main(["train", "--algo", "protonet", "--dataset", "digits", "--steps", "3", "--meta-batch", "2",
                 "--test-tasks", "3", "--quiet", "--backend", "torch", "--run-dir", str(run)]) == 0
    assert main(["export", str(run), "--to", "torch", "-o", str(tmp_path / "m.pt")]) == 0
    assert main(["export", str(run), "--to", "keras", "-o", str(tmp_path / "m.keras")]) == 0
    params, _, _ = split_tensors(load_latest(str(run / "checkpoints"))[0])
    x = np.random.default_rng(0).standard_normal((7, 64)).astype(np.float32)
    with config.use_backend("torch"):
        expected = ops.to_numpy(MLP([64, 64, 64]).__call__(params, x))
    got_torch = torch.jit.load(str(tmp_path / "m.pt"))(torch.from_numpy(x)).detach().numpy()
    got_keras = np.asarray(keras.models.load_model(str(tmp_path / "m.keras"))(x, training=True))
    scale = np.max(np.abs(expected))
    assert np.max(np.abs(got_torch - expected)) <= 1e-5 * scale
    assert np.max(np.abs(got_keras - expected)) <= 1e-5 * scale
    capsys.readouterr()
    assert main(["export", str(run), "--to", "keras", "-o", str(tmp_path / "m.h5")]) == 2
    assert "Expected an output file ending in .keras for --to keras. Received:" in capsys.readouterr().err


def test_the_readme_experiment_file_is_valid():
    from metabridge.train.config_file import load_config_file, split_values

    path = os.path.join(ROOT, "examples", "protonet_omniglot.toml")
    cfg, run = split_values(load_config_file(path), path)
    assert (cfg.algo, cfg.dataset, cfg.ways, cfg.steps, cfg.lr_decay_every) == ("protonet", "omniglot", 5, 300, 150)
    assert run == {"checkpoint_every": 25, "keep": 3, "eval_every": 25, "eval_episodes": 100}


def test_run_without_a_valid_checkpoint_is_a_clear_error(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *_cli_sin(), "--run-dir", str(run)]) == 0
    shutil.rmtree(run / "checkpoints")
    capsys.readouterr()
    for argv in (["eval", str(run)], ["export", str(run), "--to", "torch", "-o", str(tmp_path / "m.pt")]):
        assert main(argv) == 2
        assert "Expected at least one valid checkpoint in" in capsys.readouterr().err
