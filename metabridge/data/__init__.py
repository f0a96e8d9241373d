"""Datasets and samplers. Numpy only: this package imports no framework."""
from metabridge.data.digits import load_digits
from metabridge.data.episodes import ArrayDataset, Episode, EpisodeSampler, PairSampler, TaskBatch
from metabridge.data.sinusoid import SinusoidTasks

__all__ = ["ArrayDataset", "Episode", "EpisodeSampler", "PairSampler", "TaskBatch",
           "SinusoidTasks", "load_digits"]
