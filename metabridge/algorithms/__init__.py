"""Meta-learning algorithms, written once with :mod:`metabridge.ops`."""
from metabridge.algorithms.maml import MAML
from metabridge.algorithms.protonet import ProtoNet
from metabridge.algorithms.siamese import Siamese

__all__ = ["MAML", "ProtoNet", "Siamese"]
