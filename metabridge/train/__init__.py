"""Training and evaluation around the algorithms: experiments, run directories, checkpoints."""
from metabridge.train.evaluation import mean_ci95
from metabridge.train.experiment import ExperimentConfig, RunResult, parity, run_experiment
from metabridge.train.loop import resume, train
from metabridge.train.run_dir import RunDir, RunOptions

__all__ = ["ExperimentConfig", "RunDir", "RunOptions", "RunResult", "mean_ci95", "parity", "resume",
           "run_experiment", "train"]
