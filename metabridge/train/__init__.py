"""Training and evaluation around the algorithms: experiments, run directories, checkpoints."""
from metabridge.train.evaluation import evaluate_run
from metabridge.train.experiment import Experiment, ExperimentConfig, RunResult, parity
from metabridge.train.loop import resume, run_experiment, train
from metabridge.train.run_dir import RunDir, RunOptions
from metabridge.utils.stats import mean_ci95

__all__ = ["Experiment", "ExperimentConfig", "evaluate_run", "RunDir", "RunOptions", "RunResult", "mean_ci95", "parity", "resume",
           "run_experiment", "train"]
