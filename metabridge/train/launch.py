"""``metabridge train --workers N``: N local workers on a loopback group.

Starts ``python -m metabridge <the same command>`` N times with the variables
the backend's engine reads (``torch.distributed``: ``MASTER_ADDR``,
``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, as ``torchrun``
sets them; TensorFlow: a ``TF_CONFIG`` listing N loopback workers), on free
ports. Worker 0's output is this command's output; the others' goes to log
files that are shown when they fail. When a worker dies, the others are
stopped (they also stop by themselves when their next all-reduce fails) and
the command exits non-zero naming the lost worker; the run directory keeps
its last checkpoint for ``metabridge resume``.

>>> launch(["train", "--algo", "maml", "--steps", "10"], workers=2, backend="torch")   # doctest: +SKIP
0
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from metabridge import backend as backends

GRACE_S = 5.0  # after one worker fails, how long the others get to stop by themselves (and say why)
_GROUP_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TF_CONFIG",
               "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now.

    >>> len(set(free_ports(2)))
    2
    """
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def worker_env(rank: int, workers: int, backend: str, ports: list[int], base: dict | None = None) -> dict:
    """The environment of worker ``rank``: the engine's group variables and a
    share of the machine's cores (unless the caller set thread counts).

    >>> worker_env(1, 2, "torch", [29500], base={})["RANK"]
    '1'
    """
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _GROUP_VARS}
    if backends.canonical_name(backend) == "torch":
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[0]), RANK=str(rank), WORLD_SIZE=str(workers),
                   LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(workers))
    else:
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports[:workers]]},
                                       "task": {"type": "worker", "index": rank}})
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for name in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        env.setdefault(name, threads)
    env.setdefault("TF_NUM_INTEROP_THREADS", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _describe_exit(rc: int) -> str:
    if rc < 0:
        try:
            return f"was killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"was killed by signal {-rc}"
    return f"exited with code {rc}"


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def launch(argv: list[str], workers: int, backend: str, grace_s: float = GRACE_S,
           program: list[str] | None = None) -> int:
    """Run ``python -m metabridge *argv`` (or ``program + argv``) as ``workers``
    local workers of ``backend``; the exit code is 0 when all succeed, else the
    first failure's."""
    if not isinstance(workers, int) or workers < 2:
        raise ValueError(f"Expected workers >= 2 for a launch. Received: workers={workers!r}")
    name = backends.canonical_name(backend)
    if name not in backends.available():
        raise ImportError(f"The {name!r} backend needs the {backends.record(name).framework_module!r} package, "
                          f"which is not installed. Install it with: pip install "
                          f"'metabridge[{backends.record(name).pip_extra}]'")
    ports = free_ports(workers if name == "tensorflow" else 1)
    logs = tempfile.mkdtemp(prefix="metabridge-workers-")
    procs, files = [], []
    try:
        for rank in range(workers):
            env = worker_env(rank, workers, name, ports)
            if rank == 0:
                out = err = None
            else:
                log = open(os.path.join(logs, f"worker-{rank}.log"), "wb")
                files.append(log)
                out = err = log
            command = [sys.executable, "-m", "metabridge"] if program is None else list(program)
            procs.append(subprocess.Popen([*command, *argv], env=env,
                                          stdout=out, stderr=err, stdin=subprocess.DEVNULL))
        return _supervise(procs, logs, grace_s)
    except BaseException:
        _stop(procs)
        raise
    finally:
        for f in files:
            f.close()


def _supervise(procs: list, logs: str, grace_s: float) -> int:
    failed = None
    while True:
        codes = [p.poll() for p in procs]
        if failed is None:
            for rank, rc in enumerate(codes):
                if rc is not None and rc != 0:
                    failed = (rank, rc, time.monotonic())
                    break
        if all(rc is not None for rc in codes):
            break
        if failed is not None and time.monotonic() - failed[2] > grace_s:
            _stop(procs)
            break
        time.sleep(0.1)
    if failed is None:
        return 0
    rank, rc, _ = failed
    msg = f"metabridge: error: worker {rank} of {len(procs)} (pid {procs[rank].pid}) {_describe_exit(rc)}"
    others = [r for r, p in enumerate(procs) if r != rank and p.returncode not in (None, 0)]
    msg += f"; the other workers stopped ({', '.join(map(str, others)) or 'none was left running'})."
    if rank != 0:
        tail = _tail(os.path.join(logs, f"worker-{rank}.log"))
        if tail:
            msg += f"\nlast lines of worker {rank}'s output:\n" + "\n".join("  " + ln for ln in tail.splitlines())
    msg += f"\nworker logs: {logs}"
    print(msg, file=sys.stderr, flush=True)
    return rc if rc > 0 else 128 + (-rc)


def _stop(procs: list) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + 5
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
