"""The ``metabridge`` command.

    metabridge compare                      # the default experiments, both backends
    metabridge compare --algo maml --steps 500 --json
    metabridge train --algo siamese --backend tf
    metabridge train --config exp.toml --run-dir runs/a   # flags override the file
    metabridge resume runs/a                # continue a killed run from its last checkpoint
    metabridge train --config exp.toml --run-dir runs/b --workers 2   # data-parallel on 2 local workers
    metabridge eval runs/a --backend tf --episodes 600 --json
    metabridge plot runs/a runs/b -o curves.png
    metabridge export runs/a --to keras -o model.keras
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from metabridge import backend as _table
from metabridge import config
from metabridge.algorithms.siamese import (DISTANCES, SIAMESE_ENCODERS, SIAMESE_HEADS, SIAMESE_INITS,
                                          SIAMESE_LOSSES, SIAMESE_NORMS, SIAMESE_OPTIMIZERS, SIAMESE_PAIRS,
                                          SIAMESE_TEST_AUGMENTS)
from metabridge.recipes import DEFAULT_COMPARE, dataset_names, get_recipe, recipe_names
from metabridge.train import RunDir, RunOptions, evaluate_run, resume, run_experiment, train
from metabridge.train.baselines import compute_baselines
from metabridge.train.experiment import Experiment
from metabridge.train.config_file import RUN_KEYS, load_config_file, split_values
from metabridge.train.experiment import (ROTATIONS, SPLITS, TORCH_COMPILE_CHOICES, TORCH_COMPILE_MIN_STEPS,
                                         ExperimentConfig, parity)
from metabridge.train.export_run import EXTENSIONS, export_run
from metabridge.train.plot import plot_runs
from metabridge.train import distributed
from metabridge.train.distributed import split_check
from metabridge.train.launch import launch

WORKERS_HELP = ("data-parallel over N local worker processes (torch.distributed / tf.distribute on a loopback "
                "group; see README 'Scaling out'); default 1")
S = argparse.SUPPRESS  # flags not given stay absent, so a config file's values are not overridden


def _add_experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=S, help="TOML file with any of these flags as keys (flags override it)")
    p.add_argument("--algo", choices=recipe_names(), default=S,
                   help="algorithm (compare without one runs " + ", ".join(f"{a} on {d.get('dataset', 'its data set')}"
                                                              for a, d in DEFAULT_COMPARE) + ")")
    p.add_argument("--dataset", choices=dataset_names(), default=S,
                   help="data set (default: the algorithm's: " + ", ".join(
                       f"{n} {get_recipe(n).default_dataset}" for n in recipe_names()) + ")")
    p.add_argument("--steps", type=int, default=S, help="meta-training steps (default: the data set's)")
    p.add_argument("--meta-batch", type=int, default=S, help="tasks per meta-step (pairs per step for pair training)")
    p.add_argument("--ways", type=int, default=S, help="classes per training episode (default 5)")
    p.add_argument("--test-ways", type=int, default=S,
                   help="classes per test episode (" + ", ".join(n for n in recipe_names() if get_recipe(n).any_ways)
                   + ")")
    p.add_argument("--shots", type=int, default=S, help="support examples per class / per regression task")
    p.add_argument("--queries", type=int, default=S, help="query examples per class / per regression task")
    p.add_argument("--test-shots", type=int, default=S, help="support examples at test time (default: --shots)")
    p.add_argument("--test-tasks", type=int, default=S, help="test episodes for mean ± 95%% CI (default 600)")
    p.add_argument("--inner-lr", type=float, default=S, help="inner step size (default: the data set's)")
    p.add_argument("--inner-steps", type=int, default=S, help="inner steps (default 1)")
    p.add_argument("--test-inner-steps", type=int, default=S, help="inner steps at test time (default --inner-steps)")
    p.add_argument("--outer-lr", type=float, default=S, help="Adam learning rate (default 1e-3)")
    p.add_argument("--lr-decay-every", type=int, default=S, help="multiply the outer lr by --lr-decay this often")
    p.add_argument("--lr-decay", type=float, default=S, help="step-decay factor (default 0.5)")
    p.add_argument("--ema-decay", type=float, default=S,
                   help="evaluate an exponential moving average of the parameters with this decay, e.g. 0.998")
    p.add_argument("--seed", type=int, default=S)
    p.add_argument("--floatx", choices=config.FLOATX_CHOICES, default=S, help="default float32")
    p.add_argument("--eager", dest="compiled", action="store_const", const=False, default=S,
                   help="skip the compiled path (tf.function); in a file: compiled = false")
    p.add_argument("--torch-compile", choices=TORCH_COMPILE_CHOICES, default=S,
                   help="torch: compile the whole training step with torch.compile (20-40 s once; "
                        f"auto: runs of >= {TORCH_COMPILE_MIN_STEPS:,} steps of an MLP on small batches)")
    p.add_argument("--distance", choices=DISTANCES, default=S, help="Siamese pair distance")
    p.add_argument("--siamese-loss", choices=SIAMESE_LOSSES, default=S,
                   help="Siamese loss: bce (Koch's, default), contrastive (margin), softmax (ranks each image's "
                        "partner against the batch; needs --siamese-pairs all-in-batch)")
    p.add_argument("--siamese-head", choices=SIAMESE_HEADS, default=S,
                   help="Siamese weighted-L1 head: softplus (non-negative weights, default) or free (Koch's)")
    p.add_argument("--siamese-init", choices=SIAMESE_INITS, default=S,
                   help="Siamese start: default (head centred), koch (the paper's), glorot (the old one)")
    p.add_argument("--siamese-encoder", choices=SIAMESE_ENCODERS, default=S, help="Siamese encoder (default auto)")
    p.add_argument("--siamese-optimizer", choices=SIAMESE_OPTIMIZERS, default=S,
                   help="Siamese: adam or koch-sgd (per-layer lrs, momentum schedule, L2)")
    p.add_argument("--momentum", type=float, default=S, help="koch-sgd: final momentum (default 0.9)")
    p.add_argument("--momentum-steps", type=int, default=S,
                   help="koch-sgd: steps for momentum to rise from 0.5 (default: all)")
    p.add_argument("--l2", type=float, default=S, help="koch-sgd: L2 regularisation (default 0)")
    p.add_argument("--layer-lr", default=S, help="koch-sgd: per-layer lr factors, e.g. 'head=10,embed=1'")
    p.add_argument("--within-alphabet", type=float, default=S,
                   help="Siamese on Omniglot: fraction of different pairs from one alphabet (default 0.5)")
    p.add_argument("--alphabet-group", type=int, default=S,
                   help="Siamese on Omniglot, all-in-batch pairs: characters drawn from each alphabet (default 8)")
    p.add_argument("--augment", action="store_const", const=True, default=S,
                   help="Siamese: Koch's affine distortions of training pairs")
    p.add_argument("--val-alphabets", type=int, default=S,
                   help="Siamese on Omniglot: evaluation alphabets that validate (default 10; 0: none)")
    p.add_argument("--siamese-pairs", choices=SIAMESE_PAIRS, default=S,
                   help="Siamese: independent pairs (Koch) or all pairs among a batch's --meta-batch classes")
    p.add_argument("--siamese-norm", choices=SIAMESE_NORMS, default=S,
                   help="Siamese, batch-norm encoders: normalise a pair batch's two sets (an episode's support "
                        "and query sets) jointly (default) or per set")
    p.add_argument("--siamese-test-augment", choices=SIAMESE_TEST_AUGMENTS, default=S,
                   help="Siamese one-shot evaluation: none (default) or shifts (mean embedding of each image and "
                        "its four one-pixel shifts)")
    p.add_argument("--fce", action="store_const", const=True, default=S, help="Matching: full context embeddings")
    p.add_argument("--non-transductive", dest="transductive", action="store_const", const=False, default=S,
                   help="Reptile: each query in its own batch-norm batch; in a file: transductive = false")
    p.add_argument("--data-dir", default=S, help="where the data set's files are")
    p.add_argument("--download", action="store_const", const=True, default=S, help="fetch the data set's archives")
    p.add_argument("--split-file", default=S, help="class split of an image-tree data set (JSON or CSV, see ImageFolder)")
    p.add_argument("--allow-pickle", action="store_const", const=True, default=S,
                   help="read data sets stored as Python pickles (only from sources you trust)")
    p.add_argument("--split", choices=SPLITS, default=S, help=f"Omniglot split (default {ExperimentConfig.split})")
    p.add_argument("--rotations", choices=ROTATIONS, default=S,
                   help="Omniglot rotations (default: the algorithm's)")
    p.add_argument("--image-size", type=int, default=S, help="image side (default: the data set's)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


_NOT_CONFIG = {"config", "json", "quiet", "command", "func", "backends", "runs", "output", "metric", "workers",
               "argv"}


def _values(args: argparse.Namespace) -> tuple[dict, str]:
    """Config-file values overridden by the flags given, and where they came from."""
    path = getattr(args, "config", None)
    values = load_config_file(path) if path else {}
    values.update({k: v for k, v in vars(args).items() if k not in _NOT_CONFIG})
    return values, (f"{path} and the command line" if path else "the command line")


def _backends(text: str) -> list[str]:
    names = [config.canonical_backend_name(n) for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError(f"Expected at least one backend. Received: backends={text!r}")
    for n in names:
        _table.load(n)
    return list(dict.fromkeys(names))


def _fmt_metric(summary: dict) -> str:
    if summary["metric_name"] == "accuracy":
        return f"{100 * summary['metric']:.2f} ± {100 * summary['metric_ci95']:.2f} %"
    return f"{summary['metric']:.4f} ± {summary['metric_ci95']:.4f}"


def _print_table(cfg: ExperimentConfig, results: dict, par: dict | None, baselines: dict | None = None) -> None:
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
        if cfg.floatx == "float32" and par["max_rel_loss_diff"] > 1e-3:
            print("  (float32 curves drift apart: Adam's first steps turn rounding-level gradients, e.g. of "
                  "convolution biases ahead of batch norm, into full steps; with --floatx float64 the "
                  "backends agree to rounding)")
    if baselines:
        first = next(iter(results.values()))
        shown = ", ".join(f"{name} {_fmt_metric({**first, **b})}" for name, b in baselines.items())
        print(f"  baselines on the same {cfg.test_tasks} test episodes: {shown}")
    print()


def _report(cfg: ExperimentConfig, runs: dict) -> dict:
    out = {"config": asdict(cfg), "results": {b: r.summary() for b, r in runs.items()}}
    if len(runs) == 2:
        a, b = runs.values()
        out["parity"] = parity(a, b)
    return out


def cmd_compare(args: argparse.Namespace) -> int:
    values, source = _values(args)
    ignored = sorted(k for k in values if k in RUN_KEYS)
    if ignored:
        print(f"metabridge: note: compare records no run; ignoring {', '.join(ignored)} from {source}",
              file=sys.stderr)
        values = {k: v for k, v in values.items() if k not in RUN_KEYS}
    backends = _backends(args.backends)
    plan = [(values.pop("algo"), {})] if "algo" in values else list(DEFAULT_COMPARE)
    reports = []
    for algo, defaults in plan:
        cfg, _ = split_values({**defaults, **values, "algo": algo}, source)
        report = _report(cfg, {b: run_experiment(cfg, b, quiet=args.quiet) for b in backends})
        report["baselines"] = _baselines(cfg, backends[0])
        reports.append(report)
        if not args.json:
            _print_table(cfg, report["results"], report.get("parity"), report["baselines"])
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else {"experiments": reports}, indent=2))
    return 0


def _baselines(cfg: ExperimentConfig, backend: str) -> dict:
    """The untrained network and a data baseline on the run's test episodes (see train/baselines.py)."""
    with config.use_floatx(cfg.floatx), config.use_backend(backend):
        rows = compute_baselines(Experiment(cfg))
    return {name: {"metric": m, "metric_ci95": ci, "backend": backend} for name, (m, ci) in rows.items()}


def cmd_train(args: argparse.Namespace) -> int:
    values, source = _values(args)
    cfg, run_values = split_values(values, source)
    backends = _backends(run_values.pop("backend", config.get_backend()))
    if len(backends) != 1:
        raise ValueError(f"Expected one backend for train (compare runs several). Received: backend={backends}")
    run_dir = run_values.pop("run_dir", None)
    if run_dir is None and run_values:
        raise ValueError(f"Expected --run-dir with {', '.join('--' + k.replace('_', '-') for k in run_values)}. "
                         "Received: no run directory")
    args.run_dir = run_dir  # for the Ctrl-C hint
    if _launching(args):
        if get_recipe(cfg.algo).trains_on == "episodes":
            split_check(cfg.meta_batch, args.workers)
        return launch(_without_workers(args.argv), args.workers, backends[0])
    result = train(cfg, backends[0], run_dir=run_dir, options=RunOptions(**run_values) if run_dir else None,
                   quiet=args.quiet)
    return _print_result(cfg, {backends[0]: result}, args.json, run_dir)


def _launching(args: argparse.Namespace) -> bool:
    """Whether this command should start ``--workers`` local workers (rather than be one)."""
    workers = args.workers
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"Expected --workers >= 1. Received: --workers {workers}")
    spec = distributed.from_env()
    if spec is not None and workers > 1:
        raise ValueError(f"Expected no --workers inside a group that is already started ({spec.source} makes "
                         f"this worker {spec.rank} of {spec.world}). Received: --workers {workers}")
    return workers > 1


def _without_workers(argv: list[str]) -> list[str]:
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == "--workers":
            skip = True
        elif not token.startswith("--workers="):
            out.append(token)
    return out


def _print_result(cfg, runs: dict, as_json: bool, run_dir: str | None) -> int:
    spec = distributed.from_env()
    if spec is not None and spec.rank != 0:
        return 0  # worker 0 reports for the group
    report = _report(cfg, runs)
    if run_dir:
        report["run_dir"] = run_dir
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(cfg, report["results"], None)
        for backend, summary in report["results"].items():
            if summary.get("tested_step") not in (None, cfg.steps):
                print(f"tested: the parameters of step {summary['tested_step']} (the best validation; --keep-best)")
        if run_dir:
            print(f"run directory: {run_dir}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    run = RunDir.open(args.run_dir)
    if _launching(args):
        return launch(_without_workers(args.argv), args.workers, run.backend)
    result = resume(args.run_dir, quiet=args.quiet, restart=args.restart)
    return _print_result(run.config.resolved(), {run.backend: result}, args.json, args.run_dir)


def cmd_eval(args: argparse.Namespace) -> int:
    backend = _backends(args.backend)[0] if args.backend else None
    out = evaluate_run(args.run_dir, backend=backend, episodes=args.episodes, floatx=args.floatx)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{args.run_dir} (step {out['step']}, trained on {out['trained_on']}) on {out['backend']}: "
              f"{out['metric_name']} {_fmt_metric(out)} over {out['episodes']} episodes")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    path = plot_runs(args.runs, args.output, smooth=args.smooth)
    print(f"wrote {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    path = export_run(args.run_dir, args.to, args.output)
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metabridge", description="Meta-learning on PyTorch or TensorFlow.")
    sub = parser.add_subparsers(dest="command", required=True)
    compare = sub.add_parser("compare", help="run one experiment on both backends and compare")
    _add_experiment_args(compare)
    compare.add_argument("--backends", default=",".join(_table.NAMES),
                         help=f"comma-separated (default {','.join(_table.NAMES)})")
    compare.set_defaults(func=cmd_compare)
    train_p = sub.add_parser("train", help="run one experiment on one backend")
    _add_experiment_args(train_p)
    train_p.add_argument("--backend", default=S, help=f"one of {', '.join(_table.NAMES)} or an alias "
                         f"(default: METABRIDGE_BACKEND or {_table.NAMES[0]})")
    train_p.add_argument("--run-dir", default=S, help="record the run here (config, metrics, checkpoints)")
    train_p.add_argument("--checkpoint-every", type=int, default=S, help="steps between checkpoints (default 100)")
    train_p.add_argument("--keep", type=int, default=S, help="checkpoints kept (default 3)")
    train_p.add_argument("--eval-every", type=int, default=S, help="steps between validation evaluations (default 0)")
    train_p.add_argument("--eval-episodes", type=int, default=S, help="episodes per validation (default 100)")
    train_p.add_argument("--tensorboard", action="store_const", const=True, default=S,
                       help="also write TensorBoard event files to RUN_DIR/tb")
    train_p.add_argument("--keep-best", action="store_const", const=True, default=S,
                         help="early stopping: keep the best validated parameters in RUN_DIR/best and test "
                              "those (needs --eval-every)")
    train_p.add_argument("--workers", type=int, default=1, help=WORKERS_HELP)
    train_p.set_defaults(func=cmd_train)
    resume_p = sub.add_parser("resume", help="continue a run from its newest valid checkpoint")
    resume_p.add_argument("run_dir")
    resume_p.add_argument("--json", action="store_true")
    resume_p.add_argument("--quiet", action="store_true")
    resume_p.add_argument("--restart", action="store_true",
                          help="when no checkpoint of the run verifies, train again from step 0 (rewrites metrics)")
    resume_p.add_argument("--workers", type=int, default=1, help=WORKERS_HELP)
    resume_p.set_defaults(func=cmd_resume)
    ev = sub.add_parser("eval", help="evaluate a run's newest checkpoint (on any backend)")
    ev.add_argument("run_dir")
    ev.add_argument("--backend", help="a backend name or alias (default: the backend that trained it)")
    ev.add_argument("--episodes", type=int, help="test episodes (default: the run's test_tasks)")
    ev.add_argument("--floatx", choices=config.FLOATX_CHOICES, help="evaluate in this precision (default: the run's)")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=cmd_eval)
    plot = sub.add_parser("plot", help="learning curves of one or more runs (needs the 'plot' extra)")
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR")
    plot.add_argument("-o", "--output", required=True, help="image file (.png, .pdf, .svg)")
    plot.add_argument("--smooth", type=int, default=20, help="moving-average window over steps (default 20)")
    plot.set_defaults(func=cmd_plot)
    export = sub.add_parser("export", help="write a run's parameters into a plain torch or Keras model")
    export.add_argument("run_dir")
    export.add_argument("--to", choices=tuple(EXTENSIONS), required=True)
    export.add_argument("-o", "--output", required=True,
                        help="output file (" + ", ".join(f"{e[0]} for {k}" for k, e in EXTENSIONS.items()) + ")")
    export.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``metabridge`` console script."""
    try:
        parser = build_parser()  # reads the recipe registry, which imports plugins
    except (ValueError, ImportError) as exc:
        print(f"metabridge: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except (ValueError, ImportError, FloatingPointError, OSError) as exc:
        print(f"metabridge: error: {exc}", file=sys.stderr)
        return 2
    except distributed.WorkerLost as exc:
        run_dir = getattr(args, "run_dir", None)
        hint = f"; the run directory keeps its last checkpoint: `metabridge resume {run_dir}`" if run_dir else ""
        print(f"metabridge: error: {exc}{hint}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        run_dir = getattr(args, "run_dir", None)
        hint = f"; continue with `metabridge resume {run_dir}`" if run_dir else ""
        print(f"metabridge: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
