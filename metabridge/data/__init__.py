"""Datasets and samplers. Numpy only: this package imports no framework.

- :mod:`~metabridge.data.episodes`: ``Episode``, ``TaskBatch``, ``PairBatch``, ``ArrayDataset``
- :mod:`~metabridge.data.samplers`: episode and pair samplers (``(seed, i)`` → the same episode)
- :mod:`~metabridge.data.prefetch`: building batches on a background thread
- data sets: :mod:`~metabridge.data.sinusoid`, :mod:`~metabridge.data.digits`,
  :mod:`~metabridge.data.omniglot` (+ :mod:`~metabridge.data.omniglot_splits`),
  :mod:`~metabridge.data.miniimagenet`
  and the few-shot benchmarks :mod:`~metabridge.data.cifar_fewshot` (CIFAR-FS, FC100),
  :mod:`~metabridge.data.tiered_imagenet`, :mod:`~metabridge.data.cub`
- your own data: :mod:`~metabridge.data.image_folder` (one folder per class),
  ``ArrayDataset`` (numpy arrays), :mod:`~metabridge.data.collect` (framework datasets,
  through ``metabridge.backends.<name>.datasets``); :mod:`~metabridge.data.lazy_images`
  decodes lazily with a bounded cache
- the embedded Omniglot copy: :mod:`~metabridge.data.embedded_omniglot`
- task transforms and augmentation: :mod:`~metabridge.data.task_transforms`,
  :mod:`~metabridge.data.augment`; variable-way episodes: :mod:`~metabridge.data.variable_episodes`
- Lake's one-shot runs: :mod:`~metabridge.data.lake_runs` (reading),
  :mod:`~metabridge.data.one_shot` (scoring)
"""
from metabridge.data.augment import koch_affine
from metabridge.data.cifar_fewshot import FC100, CifarFS
from metabridge.data.collect import collect_examples
from metabridge.data.cub import CUB
from metabridge.data.digits import load_digits
from metabridge.data.embedded_omniglot import EmbeddedOmniglot, load_embedded_omniglot
from metabridge.data.episodes import ArrayDataset, Episode, PairBatch, TaskBatch
from metabridge.data.image_folder import ImageFolder
from metabridge.data.lake_runs import LakeRun, load_lake_runs, preprocess_omniglot_image
from metabridge.data.miniimagenet import MiniImageNet
from metabridge.data.omniglot import OMNIGLOT_MD5, OMNIGLOT_URL, DownloadError, Omniglot
from metabridge.data.omniglot_splits import OmniglotSplit, RotatedImages, omniglot_split
from metabridge.data.one_shot import pairwise_similarity, score_episodes, score_lake_runs
from metabridge.data.prefetch import Prefetcher
from metabridge.data.samplers import EpisodeSampler, FastEpisodeSampler, PairSampler, WithinAlphabetEpisodeSampler
from metabridge.data.sinusoid import SinusoidTasks
from metabridge.data.task_transforms import TransformedSampler, compose, flip, remap_labels, rotate90
from metabridge.data.tiered_imagenet import TieredImageNet
from metabridge.data.variable_episodes import VariableEpisodeSampler

__all__ = [
    "ArrayDataset", "Episode", "EpisodeSampler", "PairBatch", "PairSampler", "TaskBatch", "SinusoidTasks",
    "load_digits", "Omniglot", "DownloadError", "OMNIGLOT_URL", "OMNIGLOT_MD5", "omniglot_split", "OmniglotSplit",
    "RotatedImages", "FastEpisodeSampler", "Prefetcher", "LakeRun", "load_lake_runs", "score_lake_runs",
    "pairwise_similarity", "preprocess_omniglot_image", "MiniImageNet", "WithinAlphabetEpisodeSampler",
    "score_episodes", "ImageFolder", "CifarFS", "FC100", "TieredImageNet", "CUB", "collect_examples",
    "EmbeddedOmniglot", "load_embedded_omniglot", "koch_affine", "TransformedSampler", "compose", "flip",
    "remap_labels", "rotate90", "VariableEpisodeSampler",
]
