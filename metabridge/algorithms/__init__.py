"""Meta-learning algorithms, written once with :mod:`metabridge.ops`.

Every algorithm implements the :class:`Algorithm` protocol (see
:mod:`metabridge.algorithms.base`), which is all the training loop, the run
directories and the command line rely on.
"""
from metabridge.algorithms.anil import ANIL
from metabridge.algorithms.base import Algorithm
from metabridge.algorithms.learner import Learner
from metabridge.algorithms.maml import MAML
from metabridge.algorithms.matching import MatchingNet
from metabridge.algorithms.meta_sgd import MetaSGD
from metabridge.algorithms.protonet import ProtoNet
from metabridge.algorithms.reptile import Reptile
from metabridge.algorithms.siamese import Siamese
from metabridge.algorithms.similarity import embedding_similarity, siamese_similarity

__all__ = ["ANIL", "Algorithm", "Learner", "MAML", "MatchingNet", "MetaSGD", "ProtoNet", "Reptile", "Siamese",
           "embedding_similarity", "siamese_similarity"]
