"""Record, then compare, every algorithm's 20-step float64 run on both backends.

Issue #9 asks that the architecture refactor changes nothing numerically. Run
``record`` on the commit before the change and again after it, then ``compare``:

    python benchmarks/refactor_parity.py record before.npz --data-dir ../shared/data/omniglot
    python benchmarks/refactor_parity.py record after.npz  --data-dir ../shared/data/omniglot
    python benchmarks/refactor_parity.py compare before.npz after.npz

``record`` runs ``metabridge compare --algo A --dataset D --steps 20 --floatx
float64 --json`` for every algorithm on every data set it supports (sinusoid for
the MAML family and Reptile; digits and Omniglot for all classifiers) and keeps
the final parameters, the loss curve and the test metric of each backend.
``compare`` prints, per run, whether both are bit-identical (exit 1 if not).
It uses only the Python API that both commits share: ``ExperimentConfig`` and
``run_experiment`` from ``metabridge.train``.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

FAMILY = ("maml", "fomaml", "metasgd", "anil", "reptile")
CLASSIFIERS = ("maml", "fomaml", "metasgd", "anil", "reptile", "protonet", "matching", "siamese")


def cases(data_dir: str | None) -> list[tuple[str, str, dict]]:
    out = [(a, "sinusoid", {}) for a in FAMILY]
    out += [(a, "digits", {}) for a in CLASSIFIERS]
    out.append(("matching", "digits", {"fce": True}))
    if data_dir:
        small = {"data_dir": data_dir, "test_tasks": 20, "meta_batch": 2}
        out += [(a, "omniglot", dict(small)) for a in CLASSIFIERS if a != "siamese"]
        out.append(("siamese", "omniglot", {**small, "meta_batch": 16, "split": "lake"}))
    return out


def record(path: str, data_dir: str | None, only: str | None) -> None:
    from metabridge.train import ExperimentConfig, run_experiment

    arrays = {}
    for algo, dataset, extra in cases(data_dir):
        name = f"{algo}-{dataset}" + ("-fce" if extra.get("fce") else "")
        if only and only not in name:
            continue
        cfg = ExperimentConfig(algo=algo, dataset=dataset, steps=20, floatx="float64", **extra)
        for backend in ("torch", "tensorflow"):
            res = run_experiment(cfg, backend, quiet=True)
            arrays[f"{name}/{backend}/losses"] = np.asarray(res.losses, np.float64)
            arrays[f"{name}/{backend}/metric"] = np.asarray([res.metric, res.metric_ci95], np.float64)
            for k, v in res.params.items():
                arrays[f"{name}/{backend}/params/{k}"] = np.asarray(v)
            print(f"{name:24s} {backend:10s} final loss {res.losses[-1]:.12g}  {res.metric_name} {res.metric:.6f}",
                  flush=True)
    np.savez(path, **arrays)
    print(f"wrote {path} ({len(arrays)} arrays)")


def compare(a_path: str, b_path: str) -> int:
    a, b = np.load(a_path), np.load(b_path)
    runs = sorted({"/".join(k.split("/")[:2]) for k in a.files} | {"/".join(k.split("/")[:2]) for k in b.files})
    bad = 0
    for run in runs:
        ka = sorted(k for k in a.files if k.startswith(run + "/"))
        kb = sorted(k for k in b.files if k.startswith(run + "/"))
        if ka != kb:
            print(f"{run:36s} DIFFERENT KEYS: {sorted(set(ka) ^ set(kb))[:4]}")
            bad += 1
            continue
        diffs = [k for k in ka if a[k].shape != b[k].shape or a[k].dtype != b[k].dtype
                 or not np.array_equal(a[k], b[k])]
        n_params = sum(1 for k in ka if "/params/" in k)
        status = "bit-identical" if not diffs else f"DIFFERS in {diffs[:3]}"
        print(f"{run:36s} {len(a[run + '/losses'])} losses, {n_params} parameter tensors, metric: {status}")
        bad += bool(diffs)
    print(f"{len(runs) - bad} of {len(runs)} runs bit-identical")
    return 1 if bad else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("output")
    r.add_argument("--data-dir", help="Omniglot archives (adds the Omniglot runs)")
    r.add_argument("--only", help="only runs whose name contains this")
    c = sub.add_parser("compare")
    c.add_argument("before")
    c.add_argument("after")
    args = p.parse_args()
    if args.cmd == "record":
        record(args.output, args.data_dir, args.only)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
