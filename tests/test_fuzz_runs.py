"""Seeded fuzzing of everything a run reads back (issue #14): checkpoint tensor files,
their metadata, config.json and TOML experiment files, with random truncations,
byte changes, insertions and structured edits of JSON values.

Every case must end in a clean error (a ValueError or OSError with "Expected ...
Received ..."), or a valid fallback: the loaded checkpoint holds exactly the
run's own tensors of that step. No other exception, no hang (each case runs
under an alarm), and no success with weights other than the run's own.
"""
from __future__ import annotations

import json
import os
import random
import signal
import time
import warnings

import numpy as np
import pytest

from metabridge import config
from metabridge.cli import main
from metabridge.train import RunDir
from metabridge.train.checkpoint import load_checkpoint, load_latest
from metabridge.train.config_file import load_config_file, split_values
from metabridge.train.experiment import Experiment
from metabridge.train.loop import expected_checkpoint
from metabridge.train.run_dir import seal_of

CASES = 1200
SEED = 20240614
TOML = ('algo = "maml"\ndataset = "sinusoid"\nsteps = 4\nmeta-batch = 2\ntest-tasks = 3\nshots = 5\n'
        'inner-lr = 0.01\nouter-lr = 0.001\nseed = 3\nfloatx = "float32"\ncheckpoint-every = 2\nkeep = 5\n'
        'run-dir = "runs/x"\n')
ODD_VALUES = [None, True, -1, 0, 1, 2, 4, 5, 10 ** 30, -(10 ** 30), 1.5, float("inf"), "x", "", [], {}, [1, 2],
              {"a": 1}, "../../etc/passwd", "0" * 64, [[[[[]]]]]]


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    kind = rng.randrange(5)
    if kind == 0 or not data:                                   # truncate
        return data[:rng.randrange(len(data) + 1)]
    raw = bytearray(data)
    if kind == 1:                                               # flip bits
        for _ in range(rng.randint(1, 8)):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    elif kind == 2:                                             # insert bytes
        at = rng.randrange(len(raw) + 1)
        raw[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif kind == 3:                                             # overwrite a span
        at = rng.randrange(len(raw))
        n = rng.randint(1, 32)
        raw[at:at + n] = bytes(rng.randrange(256) for _ in range(n))
    else:                                                       # delete a span
        at = rng.randrange(len(raw))
        del raw[at:at + rng.randint(1, 64)]
    return bytes(raw)


def _mutate_json(rng: random.Random, data: bytes) -> bytes:
    obj = json.loads(data)
    target = obj
    keys = list(target)
    if "config" in target and rng.random() < 0.5:
        target = target["config"]
        keys = list(target)
    key = rng.choice(keys + ["new_key"])
    if rng.random() < 0.2 and key in target:
        del target[key]
    else:
        target[key] = rng.choice(ODD_VALUES)
    return json.dumps(obj).encode()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("fuzz") / "run")
    assert main(["train", "--algo", "maml", "--dataset", "sinusoid", "--steps", "4", "--meta-batch", "2",
                 "--test-tasks", "3", "--checkpoint-every", "2", "--keep", "5", "--quiet", "--backend", "torch",
                 "--run-dir", path]) == 0
    return path


def _alarm(signum, frame):
    raise TimeoutError("a fuzz case hung")


def test_fuzzed_run_files_give_clean_errors_or_the_runs_own_weights(run, tmp_path):
    rd = RunDir.open(run)
    c = rd.config.resolved()
    with config.use_backend("torch"):
        expected = expected_checkpoint(rd, Experiment(c), c)
    ck = rd.checkpoints
    files = {name: open(os.path.join(ck, name), "rb").read() for name in os.listdir(ck)}
    own = {step: load_checkpoint(os.path.join(ck, f"step-{step:08d}.json"), expected)[0] for step in (2, 4)}
    config_bytes = open(rd.config_path, "rb").read()
    sealed = seal_of(json.loads(config_bytes))["sha256"]
    toml_path = str(tmp_path / "exp.toml")
    rng = random.Random(SEED)
    outcomes: dict[str, int] = {}
    previous = signal.signal(signal.SIGALRM, _alarm)
    t0 = time.perf_counter()
    try:
        for case in range(CASES):
            target = rng.choice(["tensors", "meta", "meta", "config", "toml"])
            for name, data in files.items():                    # restore the run
                with open(os.path.join(ck, name), "wb") as fh:
                    fh.write(data)
            with open(rd.config_path, "wb") as fh:
                fh.write(config_bytes)
            signal.alarm(10)
            try:
                outcome = _case(rng, target, rd, ck, files, expected, own, sealed, config_bytes, toml_path)
            except (ValueError, OSError) as exc:
                assert "Expected" in str(exc) and "Received" in str(exc), (case, target, str(exc))
                outcome = f"{target}: clean error"
            finally:
                signal.alarm(0)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    finally:
        signal.signal(signal.SIGALRM, previous)
    seconds = time.perf_counter() - t0
    print(f"{CASES} fuzz cases in {seconds:.1f} s: {outcomes}")
    assert seconds < 120
    assert outcomes.get("tensors: fallback to step 2", 0) > 50 and outcomes.get("meta: fallback to step 2", 0) > 50
    assert outcomes.get("config: clean error", 0) > 50 and outcomes.get("toml: clean error", 0) > 20


def _case(rng, target, rd, ck, files, expected, own, sealed, config_bytes, toml_path) -> str:
    if target in ("tensors", "meta"):
        name = "step-00000004.safetensors" if target == "tensors" else "step-00000004.json"
        data = files[name]
        mutated = _mutate_json(rng, data) if target == "meta" and rng.random() < 0.4 else _mutate_bytes(rng, data)
        with open(os.path.join(ck, name), "wb") as fh:
            fh.write(mutated)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            saved = load_latest(ck, expected)
        assert saved is not None, "the undamaged step-2 checkpoint must always remain usable"
        tensors, meta = saved
        step = meta["step"]
        assert step in own, step
        assert set(tensors) == set(own[step]) and all(np.array_equal(tensors[k], own[step][k]) for k in tensors)
        return f"{target}: {'fallback to step 2' if step == 2 else 'step 4 unchanged'}"
    if target == "config":
        mutated = _mutate_json(rng, config_bytes) if rng.random() < 0.5 else _mutate_bytes(rng, config_bytes)
        with open(rd.config_path, "wb") as fh:
            fh.write(mutated)
        opened = RunDir.open(rd.path)
        opened.check_unchanged()
        opened.config.resolved()
        assert seal_of(opened.record)["sha256"] == sealed     # only non-identity bytes changed
        return "config: accepted unchanged identity"
    mutated = _mutate_bytes(rng, TOML.encode())
    with open(toml_path, "wb") as fh:
        fh.write(mutated)
    split_values(load_config_file(toml_path), toml_path)
    return "toml: accepted"
