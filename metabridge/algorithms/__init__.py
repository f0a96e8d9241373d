"""Meta-learning algorithms, written once with :mod:`metabridge.ops`."""
from metabridge.algorithms.anil import ANIL
from metabridge.algorithms.learner import Learner
from metabridge.algorithms.maml import MAML
from metabridge.algorithms.matching import MatchingNet
from metabridge.algorithms.meta_sgd import MetaSGD
from metabridge.algorithms.protonet import ProtoNet
from metabridge.algorithms.reptile import Reptile
from metabridge.algorithms.siamese import Siamese

__all__ = ["ANIL", "Learner", "MAML", "MatchingNet", "MetaSGD", "ProtoNet", "Reptile", "Siamese"]
