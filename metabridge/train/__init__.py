"""Training and evaluation around the algorithms."""
from metabridge.train.evaluation import mean_ci95
from metabridge.train.experiment import ExperimentConfig, RunResult, parity, run_experiment

__all__ = ["ExperimentConfig", "RunResult", "mean_ci95", "parity", "run_experiment"]
