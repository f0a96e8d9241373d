"""The ``metabridge`` command: ``compare`` (both backends side by side) and ``train``.

    metabridge compare                      # MAML on sinusoid + Siamese on digits, both backends
    metabridge compare --algo maml --steps 500 --json
    metabridge train --algo siamese --backend tf
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from metabridge import backend as _registry
from metabridge import config
from metabridge.train.experiment import ALGOS, DATASETS, ROTATIONS, SPLITS, ExperimentConfig, parity, run_experiment


def _add_experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--algo", choices=ALGOS, help="algorithm (compare with none runs maml/sinusoid and siamese/digits)")
    p.add_argument("--dataset", choices=DATASETS, help="default: sinusoid for maml/fomaml, digits for siamese")
    p.add_argument("--steps", type=int, help="meta-training steps (default 300 sinusoid, 200 digits)")
    p.add_argument("--meta-batch", type=int, help="tasks per meta-step (pairs per step for siamese)")
    p.add_argument("--ways", type=int, default=5, help="classes per episode (digits)")
    p.add_argument("--shots", type=int, help="support examples per class / per sinusoid task")
    p.add_argument("--queries", type=int, help="query examples per class / per sinusoid task")
    p.add_argument("--test-shots", type=int, help="support examples at test time (default: --shots)")
    p.add_argument("--test-tasks", type=int, default=600, help="test tasks for mean ± 95%% CI")
    p.add_argument("--inner-lr", type=float, help="MAML inner step size (default 0.01 sinusoid, 0.4 digits)")
    p.add_argument("--inner-steps", type=int, default=1)
    p.add_argument("--outer-lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--floatx", choices=config.FLOATX_CHOICES, default="float32")
    p.add_argument("--eager", action="store_true", help="skip the compiled path (tf.function)")
    p.add_argument("--distance", choices=("l1", "l2", "cosine"), default="l1", help="siamese distance")
    p.add_argument("--siamese-loss", choices=("bce", "contrastive"), default="bce")
    p.add_argument("--fce", action="store_true", help="matching networks: full context embeddings")
    p.add_argument("--data-dir", help="folder of the omniglot / miniimagenet files")
    p.add_argument("--download", action="store_true", help="fetch Omniglot's archives into --data-dir")
    p.add_argument("--split", choices=SPLITS, default="vinyals", help="omniglot split (default vinyals)")
    p.add_argument("--rotations", choices=ROTATIONS,
                   help="omniglot rotations (default per-task for maml/fomaml, none for siamese)")
    p.add_argument("--image-size", type=int, help="image side (default 28 omniglot, 84 miniimagenet)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _config(args: argparse.Namespace, algo: str) -> ExperimentConfig:
    return ExperimentConfig(
        algo=algo, dataset=args.dataset, steps=args.steps, meta_batch=args.meta_batch, ways=args.ways,
        shots=args.shots, queries=args.queries, test_shots=args.test_shots, test_tasks=args.test_tasks,
        inner_lr=args.inner_lr, inner_steps=args.inner_steps, outer_lr=args.outer_lr, seed=args.seed,
        floatx=args.floatx, compiled=not args.eager, distance=args.distance, siamese_loss=args.siamese_loss,
        data_dir=args.data_dir, download=args.download, split=args.split, rotations=args.rotations,
        image_size=args.image_size, fce=args.fce,
    ).resolved()


def _backends(text: str) -> list[str]:
    names = [config.canonical_backend_name(n) for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError(f"Expected at least one backend. Received: backends={text!r}")
    for n in names:
        _registry.load(n)
    return list(dict.fromkeys(names))


def _fmt_metric(summary: dict) -> str:
    if summary["metric_name"] == "accuracy":
        return f"{100 * summary['metric']:.2f} ± {100 * summary['metric_ci95']:.2f} %"
    return f"{summary['metric']:.4f} ± {summary['metric_ci95']:.4f}"


def _print_table(cfg: ExperimentConfig, results: dict, par: dict | None) -> None:
    title = f"{cfg.algo} on {cfg.dataset}: {cfg.steps} steps, meta-batch {cfg.meta_batch}, {cfg.floatx}, seed {cfg.seed}"
    print(title)
    metric = next(iter(results.values()))["metric_name"]
    rows = [("backend", "final loss", f"test {metric} (mean ± 95% CI)", "s / step")]
    for name, s in results.items():
        rows.append((name, f"{s['final_loss']:.6g}", _fmt_metric(s), f"{s['seconds_per_step']:.4f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)))
    if par is not None:
        print(f"  parity: max |Δ param| = {par['max_abs_param_diff']:.3g}, "
              f"max relative Δ loss along the curve = {par['max_rel_loss_diff']:.3g}")
    print()


def _run_one(cfg: ExperimentConfig, backends: list[str], quiet: bool) -> dict:
    runs = {b: run_experiment(cfg, b, quiet=quiet) for b in backends}
    out = {"config": asdict(cfg), "results": {b: r.summary() for b, r in runs.items()}}
    if len(runs) == 2:
        a, b = runs.values()
        out["parity"] = parity(a, b)
    return out


def cmd_compare(args: argparse.Namespace) -> int:
    backends = _backends(args.backends)
    algos = [args.algo] if args.algo else ["maml", "siamese"]
    reports = []
    for algo in algos:
        cfg = _config(args, algo)
        report = _run_one(cfg, backends, args.quiet)
        reports.append(report)
        if not args.json:
            _print_table(cfg, report["results"], report.get("parity"))
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else {"experiments": reports}, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    backend = _backends(args.backend)[0]
    cfg = _config(args, args.algo or "maml")
    report = _run_one(cfg, [backend], args.quiet)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(cfg, report["results"], None)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metabridge", description="Meta-learning on PyTorch or TensorFlow.")
    sub = parser.add_subparsers(dest="command", required=True)
    compare = sub.add_parser("compare", help="run one experiment on both backends and compare")
    _add_experiment_args(compare)
    compare.add_argument("--backends", default="torch,tf", help="comma-separated (default torch,tf)")
    compare.set_defaults(func=cmd_compare)
    train = sub.add_parser("train", help="run one experiment on one backend")
    _add_experiment_args(train)
    train.add_argument("--backend", default=config.get_backend(), help="torch or tf (default: METABRIDGE_BACKEND or torch)")
    train.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``metabridge`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, ImportError, FloatingPointError, OSError) as exc:
        print(f"metabridge: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
