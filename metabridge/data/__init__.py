"""Datasets and samplers. Numpy only: this package imports no framework."""
from metabridge.data.digits import load_digits
from metabridge.data.episodes import ArrayDataset, Episode, EpisodeSampler, PairSampler, TaskBatch
from metabridge.data.lake_runs import (
    LakeRun,
    embedding_similarity,
    load_lake_runs,
    preprocess_omniglot_image,
    score_lake_runs,
    siamese_similarity,
)
from metabridge.data.miniimagenet import MiniImageNet
from metabridge.data.omniglot import OMNIGLOT_MD5, OMNIGLOT_URL, DownloadError, Omniglot
from metabridge.data.omniglot_splits import FastEpisodeSampler, OmniglotSplit, RotatedImages, omniglot_split
from metabridge.data.sinusoid import SinusoidTasks
from metabridge.data.within_alphabet import WithinAlphabetEpisodeSampler, score_episodes

__all__ = [
    "ArrayDataset", "Episode", "EpisodeSampler", "PairSampler", "TaskBatch", "SinusoidTasks", "load_digits",
    "Omniglot", "DownloadError", "OMNIGLOT_URL", "OMNIGLOT_MD5", "omniglot_split", "OmniglotSplit",
    "RotatedImages", "FastEpisodeSampler", "LakeRun", "load_lake_runs", "score_lake_runs",
    "embedding_similarity", "siamese_similarity", "preprocess_omniglot_image", "MiniImageNet",
    "WithinAlphabetEpisodeSampler", "score_episodes",
]
