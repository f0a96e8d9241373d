"""Models written once with :mod:`metabridge.ops`; parameters are numpy dicts."""
from metabridge.nn.base import Model, batch_norm, conv, dense, glorot_uniform
from metabridge.nn.conv4 import Conv4
from metabridge.nn.mlp import MLP
from metabridge.nn.siamese_encoders import KochEncoder, SmallConvEncoder

__all__ = ["Model", "MLP", "Conv4", "SmallConvEncoder", "KochEncoder",
           "dense", "conv", "batch_norm", "glorot_uniform"]
