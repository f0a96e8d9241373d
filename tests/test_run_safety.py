"""Hostile and careless input against run directories and checkpoints (issue #14).

Each numbered case of the issue that concerns runs has a test here: the command
fails with a clear error naming the file or key, exits non-zero, and every file
the user saved keeps its sha256 (the lock file, which only records the last
writer's pid, is not user data)."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from metabridge.cli import main
from metabridge.train import ExperimentConfig, RunDir, RunOptions, resume, train
from metabridge.train.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint
from metabridge.train.lock import LOCK_NAME, RunLock, RunLockedError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CKPT = "step-{:08d}.json"


def _cli(backend: str, steps: int = 4, seed: int = 0, extra=()) -> list[str]:
    return ["--algo", "maml", "--dataset", "sinusoid", "--steps", str(steps), "--meta-batch", "2", "--test-tasks",
            "3", "--checkpoint-every", "2", "--keep", "5", "--quiet", "--backend", backend, "--seed", str(seed),
            *extra]


def _make(tmp_path, name: str, backend: str, **kw) -> str:
    path = str(tmp_path / name)
    assert main(["train", *_cli(backend, **kw), "--run-dir", path]) == 0
    return path


def hashes(root) -> dict:
    """sha256 of every file under ``root`` (links by their target name), lock file excluded."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            p = os.path.join(folder, name)
            if name == LOCK_NAME:
                continue
            if os.path.islink(p):
                out[os.path.relpath(p, root)] = "link:" + os.readlink(p)
            elif not os.path.isfile(p):
                out[os.path.relpath(p, root)] = "special:" + str(os.stat(p).st_ino)
            else:
                out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def _fails(argv, capsys, *fragments) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("metabridge: error: Expected") and "Received" in err, err
    for f in fragments:
        assert f in err, (f, err)
    return err


# ---- case 1: a new run never adopts or overwrites what is in its directory --------------------------
def test_train_refuses_a_directory_holding_another_runs_checkpoints(tmp_path, capsys, backend):
    old = _make(tmp_path, "old", backend)
    os.unlink(os.path.join(old, "config.json"))                     # config.json gone, checkpoints left
    before = hashes(old)
    _fails(["train", *_cli(backend, seed=7), "--run-dir", old], capsys, old, "checkpoints", "metrics.jsonl")
    assert hashes(old) == before


@pytest.mark.parametrize("name", ["result.json", "metrics.jsonl", "tb"])
def test_train_refuses_a_directory_holding_a_file_it_would_write(tmp_path, capsys, name):
    target = tmp_path / "mine"
    target.mkdir()
    (target / name).write_text("my own notes\n") if name != "tb" else (target / name).mkdir()
    before = hashes(target)
    _fails(["train", *_cli("torch"), "--run-dir", str(target)], capsys, name)
    assert hashes(target) == before and not (target / "config.json").exists()


def test_checkpoints_symlinked_to_another_run_are_never_written_or_pruned(tmp_path, capsys):
    other = _make(tmp_path, "other", "torch", steps=6)
    run = _make(tmp_path, "run", "torch", steps=6)
    before = hashes(other)
    import shutil
    shutil.rmtree(os.path.join(run, "checkpoints"))
    os.symlink(os.path.join(other, "checkpoints"), os.path.join(run, "checkpoints"))
    _fails(["resume", run], capsys, os.path.join(run, "checkpoints"), "symbolic link")
    assert hashes(other) == before


def test_keep_prunes_only_this_runs_checkpoints(tmp_path):
    d = str(tmp_path)
    save_checkpoint(d, 1, {"params/w": np.ones(2)}, {"run_id": "other"}, keep=1)
    foreign = hashes(d)
    for step in (2, 3, 4):
        save_checkpoint(d, step, {"params/w": np.ones(2)}, {"run_id": "mine"}, keep=1)
    left = sorted(os.listdir(d))
    assert left == ["step-00000001.json", "step-00000001.safetensors", "step-00000004.json",
                    "step-00000004.safetensors"]
    assert {k: v for k, v in hashes(d).items() if "00000001" in k} == foreign
    with pytest.raises(CheckpointError, match="Expected no checkpoint of another run at .*step-00000001.json"):
        save_checkpoint(d, 1, {"params/w": np.ones(2)}, {"run_id": "mine"})
    assert {k: v for k, v in hashes(d).items() if "00000001" in k} == foreign


def test_a_checkpoint_copied_from_another_run_is_refused_named_and_the_previous_used(tmp_path, backend):
    run = _make(tmp_path, "run", backend, steps=4)
    other = _make(tmp_path, "other", backend, steps=6, seed=3)      # same model, another seed
    for meta in list_checkpoints(os.path.join(run, "checkpoints"))[1:]:
        os.unlink(meta)                                              # back to step 2
    import shutil
    for ext in (".json", ".safetensors"):
        shutil.copy(os.path.join(other, "checkpoints", "step-00000004" + ext),
                    os.path.join(run, "checkpoints", "step-00000004" + ext))
    with pytest.warns(UserWarning, match=r"Skipping checkpoint step-00000004.json: Expected a checkpoint of this "
                                         r"run \(id [0-9a-f]+\) in .*step-00000004.json"):
        with pytest.raises(CheckpointError, match="step-00000004.json belongs to run"):
            resume(run, quiet=True)                                  # and it would be overwritten: refused
    # a foreign checkpoint where this run writes nothing is only skipped
    os.rename(os.path.join(run, "checkpoints", "step-00000004.json"),
              os.path.join(run, "checkpoints", "step-00000003.json"))
    with pytest.warns(UserWarning, match="Skipping checkpoint step-00000003.json"):
        result = resume(run, quiet=True)
    ref = _make(tmp_path, "ref", backend, steps=4)
    t_run, _ = load_checkpoint(os.path.join(run, "checkpoints", CKPT.format(4)))
    t_ref, _ = load_checkpoint(os.path.join(ref, "checkpoints", CKPT.format(4)))
    assert all(np.array_equal(t_run[k], t_ref[k]) for k in t_ref) and len(result.losses) == 4


# ---- case 2: resume with every checkpoint damaged changes nothing -------------------------------------
def test_resume_with_every_checkpoint_damaged_exits_non_zero_and_changes_nothing(tmp_path, capsys, backend):
    run = _make(tmp_path, "run", backend)
    for meta in list_checkpoints(os.path.join(run, "checkpoints")):
        tensor = meta[:-5] + ".safetensors"
        raw = bytearray(open(tensor, "rb").read())
        raw[-3] ^= 0x55
        open(tensor, "wb").write(bytes(raw))
    before = hashes(run)
    err = _fails(["resume", run], capsys, "Expected a checkpoint of this run that verifies in",
                 "nothing was changed", "--restart", "step-00000004.json", "step-00000002.json")
    assert "sha256" in err
    assert hashes(run) == before
    assert main(["resume", "--restart", run]) == 0                  # explicit: train again from step 0
    assert [m["step"] for m in RunDir.open(run).read_metrics()] == [0, 1, 2, 3]


# ---- case 3: one writer ---------------------------------------------------------------------------------
def _spawn(args, log):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", "PYTHONPATH": ROOT}
    env.pop("METABRIDGE_FAULT_PAUSE", None)
    return subprocess.Popen([sys.executable, "-m", "metabridge", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(log, "w"))


def test_two_concurrent_resumes_the_second_is_refused_at_once(tmp_path, capsys):
    steps = 60
    args = ["--algo", "maml", "--dataset", "sinusoid", "--steps", str(steps), "--meta-batch", "4", "--test-tasks",
            "5", "--checkpoint-every", "1", "--keep", "1", "--quiet", "--backend", "torch"]
    log = str(tmp_path / "log")
    ref = _spawn(["train", *args, "--run-dir", str(tmp_path / "ref")], log)
    assert ref.wait(timeout=600) == 0, open(log).read()
    run = str(tmp_path / "run")
    RunDir.create(run, ExperimentConfig(algo="maml", dataset="sinusoid", steps=steps, meta_batch=4,
                                        test_tasks=5).resolved(),
                  RunOptions(checkpoint_every=1, keep=1), "torch", input_shape=(1,))
    first = _spawn(["resume", run, "--quiet"], log)
    deadline = time.time() + 300
    while not list_checkpoints(os.path.join(run, "checkpoints")):     # the first is writing
        assert first.poll() is None and time.time() < deadline, open(log).read()
        time.sleep(0.01)
    # The first is stopped (not ended: it keeps its lock) while the others try, so a slow start of the
    # second process on a loaded machine cannot let the first finish first.
    os.kill(first.pid, signal.SIGSTOP)
    try:
        t0 = time.perf_counter()
        with pytest.raises(RunLockedError, match=rf"Expected no other process writing the run {run}.* is held by "
                                                 rf"pid {first.pid} on host"):
            resume(run, quiet=True)
        assert time.perf_counter() - t0 < 1.0
        second = _spawn(["resume", run, "--quiet"], str(tmp_path / "log2"))
        assert second.wait(timeout=120) == 2
        assert f"is held by pid {first.pid}" in open(tmp_path / "log2").read()
        assert first.poll() is None                                   # refused while the first still runs
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=600) == 0, open(log).read()
    strip = lambda p: [{k: v for k, v in m.items() if k != "seconds"} for m in RunDir.open(p).read_metrics()]
    assert strip(run) == strip(str(tmp_path / "ref"))
    a, _ = load_checkpoint(list_checkpoints(os.path.join(run, "checkpoints"))[-1])
    b, _ = load_checkpoint(list_checkpoints(str(tmp_path / "ref" / "checkpoints"))[-1])
    assert all(np.array_equal(a[k], b[k]) for k in b)


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    run = _make(tmp_path, "run", "torch")
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'pid 1 on host x'); print('held', flush=True); "
            "time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, os.path.join(run, LOCK_NAME)], stdout=subprocess.PIPE)
    assert holder.stdout.readline() == b"held\n"
    with pytest.raises(RunLockedError, match="held by pid 1 on host x"):
        RunLock(run).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    with RunLock(run) as lock:                                         # the OS released it
        assert lock.held
    resume(run, quiet=True)


# ---- case 4: checkpoints checked against the model -------------------------------------------------------
def _forge(run: str, step: int, change) -> None:
    """Rewrite checkpoint ``step`` of ``run`` with ``change(tensors, meta)`` applied, keeping this
    run's id and config hash and a correct sha256 (what a careful forger would do)."""
    tensors, meta = load_checkpoint(os.path.join(run, "checkpoints", CKPT.format(step)))
    tensors = dict(tensors)
    change(tensors, meta)
    keep = {k: v for k, v in meta.items() if k not in ("format", "tensors", "sha256", "bytes", "saved", "step")}
    os.unlink(os.path.join(run, "checkpoints", CKPT.format(step)))
    save_checkpoint(os.path.join(run, "checkpoints"), meta["step"], tensors, keep, keep=None)


def _first(tensors, prefix):
    return next(k for k in sorted(tensors) if k.startswith(prefix))


FORGERIES = {
    "float16": (lambda t, m: t.update({k: v.astype(np.float16) for k, v in t.items()}), "dtype float16"),
    "float64": (lambda t, m: t.update({k: v.astype(np.float64) for k, v in t.items()}),
                "what this run's model needs"),           # twice the bytes: refused before it is read
    "int32": (lambda t, m: t.update({k: v.astype(np.int32) for k, v in t.items()}), "dtype int32"),
    "missing slot": (lambda t, m: t.pop(_first(t, "opt/")), "missing ['opt/"),
    "slot shape": (lambda t, m: t.update({_first(t, "opt/"): np.zeros((2, 2), np.float32)}), "shape (2, 2)"),
    "extra tensor": (lambda t, m: t.update({"params/evil": np.zeros(1, np.float32)}), "unexpected ['params/evil']"),
    "nan": (lambda t, m: t.update({_first(t, "params/"): t[_first(t, "params/")] * np.nan}), "NaN or inf"),
    "opt_step": (lambda t, m: m.update(opt_step=99), "opt_step=4"),
    "floatx": (lambda t, m: m.update(floatx="float64"), "floatx='float32'"),
    "algo": (lambda t, m: m.update(algo="other"), "algo="),
    "seconds": (lambda t, m: m.update(seconds=-1.0), "seconds >= 0"),
}


@pytest.mark.parametrize("kind", sorted(FORGERIES))
def test_a_forged_checkpoint_is_refused_naming_the_file_and_the_previous_used(tmp_path, backend, kind):
    run = _make(tmp_path, "run", backend)
    _forge(run, 4, FORGERIES[kind][0])
    before = hashes(run)
    with pytest.warns(UserWarning, match="Skipping checkpoint step-00000004.json") as info:
        result = resume(run, quiet=True)                               # falls back to step 2, then redoes 3, 4
    assert any(FORGERIES[kind][1] in str(w.message) and "step-00000004" in str(w.message) for w in info), \
        [str(w.message) for w in info]
    ref = _make(tmp_path, "ref", backend)
    a, _ = load_checkpoint(os.path.join(run, "checkpoints", CKPT.format(4)))
    b, _ = load_checkpoint(os.path.join(ref, "checkpoints", CKPT.format(4)))
    assert all(np.array_equal(a[k], b[k]) for k in b) and len(result.losses) == 4
    assert hashes(run)["checkpoints/step-00000002.safetensors"] == before["checkpoints/step-00000002.safetensors"]


@pytest.mark.parametrize("step, fragment", [(3, "Expected step=4 in"), (999, "Expected step=4 in")])
def test_edited_step_is_refused(tmp_path, capsys, step, fragment):
    run = _make(tmp_path, "run", "torch")
    path = os.path.join(run, "checkpoints", CKPT.format(4))
    meta = json.load(open(path))
    meta["step"] = step
    json.dump(meta, open(path, "w"))
    with pytest.raises(CheckpointError, match=fragment):
        load_checkpoint(path)
    capsys.readouterr()
    assert main(["eval", run, "--json"]) == 0                          # the previous checkpoint is used
    assert json.loads(capsys.readouterr().out)["step"] == 2


def test_step_beyond_the_runs_steps_is_refused(tmp_path):
    run = _make(tmp_path, "run", "torch")
    _forge(run, 4, lambda t, m: m.update(step=6))                     # a consistent file name, step 6 of 4
    with pytest.warns(UserWarning, match=r"Expected step in \[1, 4\] in .*step-00000006.json"):
        result = resume(run, quiet=True)
    assert len(result.losses) == 4


# ---- case 5: an edited config.json is refused, naming the keys ---------------------------------------------
@pytest.mark.parametrize("edit, keys", [
    ({"config": {"inner_lr": 0.5}}, "['config.inner_lr']"),
    ({"config": {"seed": 1, "steps": 8}}, "['config.seed', 'config.steps']"),
    ({"run": {"keep": 1}}, "['run.keep']"),
    ({"input_shape": [2]}, "['input_shape']"),
])
def test_resume_refuses_an_edited_config(tmp_path, capsys, edit, keys):
    run = _make(tmp_path, "run", "torch")
    record = json.load(open(os.path.join(run, "config.json")))
    for section, values in edit.items():
        if isinstance(values, dict):
            record[section].update(values)
        else:
            record[section] = values
    json.dump(record, open(os.path.join(run, "config.json"), "w"))
    before = hashes(run)
    _fails(["resume", run], capsys, os.path.join(run, "config.json"), f"Received: edited keys {keys}")
    assert hashes(run) == before


def test_resume_refuses_an_edited_algo_on_both_backends(tmp_path, capsys, backend):
    run = _make(tmp_path, "run", backend)
    record = json.load(open(os.path.join(run, "config.json")))
    record["config"]["algo"] = "reptile"
    json.dump(record, open(os.path.join(run, "config.json"), "w"))
    before = hashes(run)
    _fails(["resume", run], capsys, "edited keys ['config.algo']")
    assert hashes(run) == before


# ---- case 6: bounded reads -------------------------------------------------------------------------------
def _replace(path: str, make) -> None:
    os.unlink(path)
    make(path)


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "directory", "sparse"])
def test_checkpoint_files_that_are_not_regular_or_too_large_are_refused_unread(tmp_path, kind):
    run = _make(tmp_path, "run", "torch")
    tensor = os.path.join(run, "checkpoints", "step-00000004.safetensors")
    meta_path = tensor[:-len(".safetensors")] + ".json"
    if kind == "dev-zero":
        _replace(tensor, lambda p: os.symlink("/dev/zero", p))
        fragment = "symbolic link"
    elif kind == "fifo":
        _replace(tensor, os.mkfifo)
        fragment = "a FIFO"
    elif kind == "directory":
        _replace(tensor, os.mkdir)
        fragment = "a directory"
    else:
        with open(tensor, "r+b") as fh:
            fh.truncate(3 << 30)                                        # 3 GB, sparse
        meta = json.load(open(meta_path))
        meta["bytes"] = 3 << 30
        json.dump(meta, open(meta_path, "w"))
        fragment = "what this run's model needs"
    t0 = time.perf_counter()
    if kind in ("directory", "fifo"):              # skipped, and where step 4 is written: refused up front
        with pytest.warns(UserWarning, match="Skipping checkpoint step-00000004.json"):
            with pytest.raises(CheckpointError, match=f"Expected a regular file or nothing at {tensor}"):
                resume(run, quiet=True)
        return
    with pytest.warns(UserWarning, match="Skipping checkpoint step-00000004.json") as info:
        result = resume(run, quiet=True)
    assert any(fragment in str(w.message) and "step-00000004" in str(w.message) for w in info)
    assert time.perf_counter() - t0 < 60 and len(result.losses) == 4


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "huge", "deep"])
def test_config_json_that_is_not_a_small_regular_file_is_a_clear_error(tmp_path, capsys, kind):
    run = _make(tmp_path, "run", "torch")
    cfg = os.path.join(run, "config.json")
    if kind == "dev-zero":
        _replace(cfg, lambda p: os.symlink("/dev/zero", p))
        fragment = "symbolic link"
    elif kind == "fifo":
        _replace(cfg, os.mkfifo)
        fragment = "a FIFO"
    elif kind == "huge":
        open(cfg, "a").write(" " * (2 << 20))
        fragment = "of at most 1048576 bytes"
    else:
        open(cfg, "w").write("[" * 100000 + "]" * 100000)
        fragment = "nesting too deep"
    before = hashes(run)
    for argv in (["resume", run], ["eval", run], ["plot", run, "-o", str(tmp_path / "x.png")]):
        _fails(argv, capsys, cfg, fragment)
    assert hashes(run) == before and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("flag, value", [("--meta-batch", "1000000000"), ("--shots", "1000000000"),
                                         ("--queries", "1000000000")])
def test_configs_that_cannot_fit_in_memory_are_refused_up_front(tmp_path, capsys, flag, value):
    t0 = time.perf_counter()
    _fails(["train", *_cli("torch"), flag, value, "--run-dir", str(tmp_path / "r")], capsys,
           "Expected a config whose inputs fit in memory", f"{flag[2:].replace('-', '_')}={value}")
    assert time.perf_counter() - t0 < 10 and not (tmp_path / "r").exists()


def test_a_huge_image_size_is_refused_up_front(tmp_path, capsys):
    _fails(["train", "--algo", "protonet", "--dataset", "digits", "--image-size", "100000", "--steps", "2",
            "--quiet", "--run-dir", str(tmp_path / "r")], capsys, "image_size=100000")
    assert not (tmp_path / "r").exists()


# ---- case 8: broken run files give clear errors -------------------------------------------------------------
@pytest.mark.parametrize("key", ["config", "backend"])
def test_config_json_without_a_key_is_a_clear_error(tmp_path, capsys, key):
    run = _make(tmp_path, "run", "torch")
    record = json.load(open(os.path.join(run, "config.json")))
    del record[key]
    json.dump(record, open(os.path.join(run, "config.json"), "w"))
    before = hashes(run)
    for argv in (["resume", run], ["eval", run], ["plot", run, "-o", str(tmp_path / "x.png")]):
        _fails(argv, capsys, f"Expected the key '{key}'", os.path.join(run, "config.json"))
    assert hashes(run) == before


@pytest.mark.parametrize("line", ["[1, 2]", '"text"', '{"step": "x", "loss": 1}', '{"step": 1, "loss": [1]}',
                                  "not json"])
def test_a_metrics_line_that_is_not_a_record_is_a_clear_error(tmp_path, capsys, line):
    run = _make(tmp_path, "run", "torch")
    with open(os.path.join(run, "metrics.jsonl"), "r+") as fh:
        lines = fh.readlines()
        lines[1] = line + "\n"
        fh.seek(0)
        fh.truncate()
        fh.writelines(lines)
    before = hashes(run)
    for argv in (["resume", run], ["plot", run, "-o", str(tmp_path / "x.png")]):
        _fails(argv, capsys, os.path.join(run, "metrics.jsonl"), "line 2")
    assert hashes(run) == before


def test_a_torn_last_metrics_line_is_still_skipped(tmp_path):
    run = _make(tmp_path, "run", "torch")
    with open(os.path.join(run, "metrics.jsonl"), "a") as fh:
        fh.write('{"step": 4, "lo')
    assert [m["step"] for m in RunDir.open(run).read_metrics()] == [0, 1, 2, 3]


# ---- case 10: messages that tell the truth ------------------------------------------------------------------
def test_non_finite_loss_before_any_checkpoint_says_none_was_written(tmp_path, capsys, backend):
    run = str(tmp_path / "run")
    err = _fails_plain(["train", *_cli(backend, steps=30, extra=("--outer-lr", "10000", "--checkpoint-every",
                                                                  "10")), "--run-dir", run], capsys)
    assert "Non-finite meta-loss inf at step 1; stopping. No checkpoint was written yet (the first is due at " \
           "step 10; --checkpoint-every)." in err
    assert "last good checkpoint" not in err and not list_checkpoints(os.path.join(run, "checkpoints"))


def test_non_finite_loss_after_a_checkpoint_names_it(tmp_path, capsys):
    cfg = ExperimentConfig(algo="maml", dataset="sinusoid", steps=30, meta_batch=3, test_tasks=3, outer_lr=1e4)
    run = RunDir.create(str(tmp_path / "r"), cfg, RunOptions(checkpoint_every=1, keep=2), "torch")
    with pytest.raises(FloatingPointError, match=r"The last good checkpoint \(step 1\) is kept in "):
        train(run.config, "torch", run, quiet=True)


def _fails_plain(argv, capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    return capsys.readouterr().err
