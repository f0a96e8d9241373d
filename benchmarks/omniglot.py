"""Train and evaluate on the real Omniglot and record a BENCHMARKS.md row.

    python benchmarks/omniglot.py run --algo maml --backend torch --steps 800
    python benchmarks/omniglot.py run --algo fomaml --backend tf --steps 800
    python benchmarks/omniglot.py run --algo siamese --backend torch --steps 2000 --ways 20
    python benchmarks/omniglot.py table          # rewrite BENCHMARKS.md's Omniglot table from benchmarks/results/

Each run writes one JSON file to benchmarks/results/ (atomically), holding the
config, the data protocol (split, rotations), wall time, the machine and the
accuracy as mean ± 95% CI over the test episodes. ``table`` renders every
result file into the marked section of BENCHMARKS.md, beside the published number.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "omniglot")

# (algo, ways, shots) -> published accuracy (%) and its source.
PUBLISHED = {
    ("maml", 5, 1): "98.7 ± 0.4 (Finn et al. 2017, Table 1, 60k steps)",
    ("fomaml", 5, 1): "98.3 ± 0.5 (Finn et al. 2017, Table 1)",
    ("maml", 20, 1): "95.8 ± 0.3 (Finn et al. 2017, Table 1)",
    ("fomaml", 20, 1): "89.4 ± 0.5 (Finn et al. 2017, Table 1)",
    ("siamese", 20, 1): "92.0 (Koch et al. 2015, Lake's 20 runs, 105×105, far larger net)",
    ("protonet", 5, 1): "98.8 (Snell et al. 2017, Table 1, trained 60-way)",
    ("protonet", 20, 1): "96.0 (Snell et al. 2017, Table 1, trained 60-way)",
    ("matching", 5, 1): "98.1 (Vinyals et al. 2016, Table 1)",
    ("matching", 20, 1): "93.8 (Vinyals et al. 2016, Table 1)",
    ("metasgd", 5, 1): "99.53 ± 0.26 (Li et al. 2017, Table 2)",
    ("metasgd", 20, 1): "95.93 ± 0.38 (Li et al. 2017, Table 2)",
    ("anil", 5, 1): "not reported (Raghu et al. 2020 give Omniglot 20-way only)",
    ("anil", 20, 1): "96.2 ± 0.5 (Raghu et al. 2020, Table 2; ± is std over 3 seeds)",
    ("reptile", 5, 1): "97.68 ± 0.04 transductive (Nichol et al. 2018, Table 1)",
    ("reptile", 20, 1): "89.43 ± 0.14 transductive (Nichol et al. 2018, Table 1)",
}


BEGIN, END = "<!-- omniglot-results:begin -->", "<!-- omniglot-results:end -->"


def _machine() -> str:
    return f"{platform.machine()} {os.cpu_count()}-core CPU, {platform.python_implementation()} {platform.python_version()}"


def _write_atomic(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def cmd_run(args) -> int:
    sys.path.insert(0, ROOT)
    from metabridge.train import ExperimentConfig, run_experiment

    cfg = ExperimentConfig(
        algo=args.algo, dataset="omniglot", data_dir=args.data_dir, steps=args.steps, meta_batch=args.meta_batch,
        ways=args.ways, test_ways=args.test_ways, shots=args.shots, queries=args.queries,
        test_shots=args.test_shots or args.shots, test_tasks=args.episodes, inner_lr=args.inner_lr,
        inner_steps=args.inner_steps, test_inner_steps=args.test_inner_steps, outer_lr=args.outer_lr,
        lr_decay_every=args.lr_decay_every, seed=args.seed, split=args.split, rotations=args.rotations,
        image_size=args.image_size, transductive=not args.non_transductive,
    ).resolved()
    start = time.perf_counter()
    result = run_experiment(cfg, args.backend, quiet=args.quiet)
    wall = time.perf_counter() - start
    record = {
        "config": asdict(cfg), "backend": result.backend, "wall_seconds": wall,
        "seconds_per_step": result.seconds_per_step, "final_loss": result.final_loss,
        "accuracy": 100 * result.metric, "ci95": 100 * result.metric_ci95, "episodes": cfg.test_tasks,
        "data": result.data, "machine": _machine(), "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/omniglot.py " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "",
    }
    name = f"{cfg.algo}-{cfg.test_ways}w{cfg.test_shots}s-{cfg.split}-{cfg.steps}steps-{result.backend}.json"
    _write_atomic(os.path.join(RESULTS, name), json.dumps(record, indent=2))
    print(f"{cfg.algo} {cfg.test_ways}-way {cfg.test_shots}-shot [{result.backend}]: {record['accuracy']:.2f} ± "
          f"{record['ci95']:.2f} % over {cfg.test_tasks} episodes, {wall / 60:.1f} min")
    return 0


def cmd_table(args) -> int:
    rows = []
    for path in sorted(glob.glob(os.path.join(RESULTS, "*.json"))):
        with open(path) as f:
            r = json.load(f)
        c = r["config"]
        split = c["split"] if c["algo"] != "siamese" else "lake (background pairs → evaluation, within-alphabet)"
        rot = c.get("rotations", "none")
        ways, shots = c.get("test_ways") or c["ways"], c.get("test_shots") or c["shots"]
        trained = [f"{c['ways']}-way {c['shots']}-shot"] if (ways, shots) != (c["ways"], c["shots"]) else []
        if c["algo"] in ("maml", "fomaml", "metasgd", "anil", "reptile"):
            n = c["inner_steps"]
            trained.append(f"{n} inner step{'s' if n != 1 else ''} (test {c.get('test_inner_steps') or n})")
        if c.get("lr_decay_every"):
            trained.append(f"lr ×{c['lr_decay']} every {c['lr_decay_every']}")
        if c["algo"] == "reptile":
            trained.append("transductive" if c.get("transductive", True) else "non-transductive")
        rows.append(
            f"| {c['algo']} | {r['backend']} | {split}, rotations {rot} | {ways}-way {shots}-shot "
            f"| {', '.join(trained) or '—'} | {c['steps']} | {c['meta_batch']} | {r['wall_seconds'] / 60:.1f} min "
            f"| {r['accuracy']:.2f} ± {r['ci95']:.2f} ({r['episodes']}) "
            f"| {PUBLISHED.get((c['algo'], ways, shots), '—')} |"
        )
    machines = sorted({json.load(open(p))["machine"] for p in glob.glob(os.path.join(RESULTS, "*.json"))})
    section = "\n".join([
        BEGIN,
        f"Machine: {'; '.join(machines) or '—'}. Wall time includes data loading, the TensorFlow trace "
        "and the evaluation. Raw results: `benchmarks/results/*.json`.",
        "",
        "| method | backend | split | test task | training | steps | meta-batch | wall time "
        "| accuracy % ± 95% CI (episodes) | published |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        END,
    ])
    path = os.path.join(ROOT, "BENCHMARKS.md")
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n\n" + BEGIN + "\n" + END + "\n"
    if BEGIN not in text or END not in text:
        raise SystemExit(f"Expected the markers {BEGIN} and {END} in BENCHMARKS.md. Received: a file without them")
    before, rest = text.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    _write_atomic(path, before + section + after)
    print(f"wrote {len(rows)} Omniglot rows into BENCHMARKS.md")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument("--algo", choices=("maml", "fomaml", "metasgd", "anil", "reptile", "siamese", "protonet",
                                        "matching"), required=True)
    run.add_argument("--backend", default="torch")
    run.add_argument("--steps", type=int, required=True)
    run.add_argument("--meta-batch", type=int, default=32)
    run.add_argument("--ways", type=int, default=5)
    run.add_argument("--test-ways", type=int, help="ways at test time (default --ways; protonet/matching)")
    run.add_argument("--shots", type=int, default=1)
    run.add_argument("--test-shots", type=int, help="shots at test time (default --shots)")
    run.add_argument("--queries", type=int, default=15)
    run.add_argument("--inner-lr", type=float, default=0.4)
    run.add_argument("--inner-steps", type=int, default=1)
    run.add_argument("--test-inner-steps", type=int, help="inner steps at test time (default --inner-steps)")
    run.add_argument("--outer-lr", type=float, default=1e-3)
    run.add_argument("--lr-decay-every", type=int, help="halve the outer learning rate every this many steps")
    run.add_argument("--non-transductive", action="store_true", help="reptile: one query per batch-norm batch")
    run.add_argument("--episodes", type=int, default=600)
    run.add_argument("--split", default="vinyals", choices=("vinyals", "lake"))
    run.add_argument("--rotations", choices=("classes", "per-task", "none"))
    run.add_argument("--image-size", type=int)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--data-dir", default=DEFAULT_DATA)
    run.add_argument("--quiet", action="store_true")
    run.set_defaults(func=cmd_run)
    table = sub.add_parser("table")
    table.set_defaults(func=cmd_table)
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
