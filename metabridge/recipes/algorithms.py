"""The built-in algorithms as recipes: the MAML family, Reptile, Prototypical,
Matching and Siamese networks.

>>> get_recipe("protonet").any_ways
True
"""
from __future__ import annotations

from metabridge.algorithms import ANIL, MAML, MatchingNet, MetaSGD, ProtoNet, Reptile, Siamese
from metabridge.algorithms.siamese import (SIAMESE_ENCODERS, SIAMESE_HEAD_LOSSES, SIAMESE_HEADS, SIAMESE_INITS,
                                           SIAMESE_LOSSES, SIAMESE_NORMS, SIAMESE_OPTIMIZERS, SIAMESE_PAIRS,
                                           SIAMESE_TEST_AUGMENTS, KochSGD)
from metabridge.nn import KochEncoder, SmallConvEncoder
from metabridge.nn.siamese_encoders import Conv4Embedding
from metabridge.recipes.registry import Recipe, register_recipe


def classifier_model(c, input_shape: tuple, dataset):
    """The data set's network with one output per way (regression data sets: their own output)."""
    return dataset.backbone(input_shape, c.ways)


def embedding_model(c, input_shape: tuple, dataset):
    """The data set's network without a head: an embedding."""
    return dataset.backbone(input_shape, None)


def siamese_encoder(input_shape: tuple, kind: str = "auto", init: str = "glorot"):
    """The Siamese encoder for an input size: ``"auto"`` is the small Keras-example
    encoder for small images and Koch et al.'s otherwise (at its paper size for
    105×105; narrower kernels and a 1024-wide embedding for 28×28); ``"koch"``
    forces Koch's; ``"conv4"`` is Conv4 with batch norm (64 channels, the
    flattened features as embedding), ``"conv4-32"`` the same with 32 channels
    (about 3x faster on a CPU), ``"conv4-spatial"`` Conv4 without its last
    max-pool (the embedding keeps the 3×3 map: 576 wide at 28×28). ``init="koch"``:
    the paper's initialisation."""
    if kind in ("conv4", "conv4-32", "conv4-spatial"):
        return Conv4Embedding(input_shape, channels=32 if kind == "conv4-32" else 64, last_pool=kind != "conv4-spatial")
    if kind == "auto" and input_shape[0] < 28:
        return SmallConvEncoder(input_shape=input_shape)
    if input_shape[0] >= 105:
        return KochEncoder(input_shape=input_shape, init=init)
    return KochEncoder(input_shape=input_shape, filters=(64, 128, 128), kernels=(5, 3, 2), embedding=1024, init=init)


def _layer_lr(text: str | None) -> dict:
    """``"head=10,embed=1"`` -> ``{"head": 10.0, "embed": 1.0}``."""
    out = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, _, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"Expected layer_lr as 'layer=factor,...' (e.g. 'head=10,embed=1'). "
                             f"Received: layer_lr={text!r}") from None
    return out


def _siamese(c, encoder, dataset):
    koch_sgd = None
    if c.siamese_optimizer == "koch-sgd":
        koch_sgd = {"momentum": c.momentum, "momentum_steps": c.momentum_steps or c.steps, "l2": c.l2,
                    "layer_lr": {"*": 1.0, **_layer_lr(c.layer_lr)}}
    head_init = {"default": "centred", "koch": "koch", "glorot": "glorot"}[c.siamese_init]
    probe = None
    if head_init == "centred" and c.siamese_loss in SIAMESE_HEAD_LOSSES:
        def probe():  # the head starts centred on the first training batch's pairs (see Siamese)
            return dataset.sources(c, "pairs").train.batch(0)[:2]
    return Siamese(encoder, c.distance, c.siamese_loss, head=c.siamese_head, head_init=head_init,
                   optimizer=c.siamese_optimizer, koch_sgd=koch_sgd, probe=probe, pairs=c.siamese_pairs,
                   norm=c.siamese_norm, test_augment=c.siamese_test_augment)


def _siamese_checks(c) -> None:
    for name, choices in (("siamese_head", SIAMESE_HEADS), ("siamese_init", SIAMESE_INITS),
                          ("siamese_encoder", SIAMESE_ENCODERS), ("siamese_optimizer", SIAMESE_OPTIMIZERS),
                          ("siamese_pairs", SIAMESE_PAIRS), ("siamese_loss", SIAMESE_LOSSES),
                          ("siamese_norm", SIAMESE_NORMS), ("siamese_test_augment", SIAMESE_TEST_AUGMENTS)):
        if getattr(c, name) not in choices:
            raise ValueError(f"Expected {name} in {choices}. Received: {name}={getattr(c, name)!r}")
    if c.siamese_loss == "softmax" and c.siamese_pairs != "all-in-batch":
        raise ValueError("Expected siamese_pairs='all-in-batch' for siamese_loss='softmax' (it ranks each image's "
                         f"partner against the step's other images). Received: siamese_pairs={c.siamese_pairs!r}")
    if c.momentum_steps is not None and (not isinstance(c.momentum_steps, int) or c.momentum_steps < 1):
        raise ValueError(f"Expected momentum_steps >= 1. Received: momentum_steps={c.momentum_steps!r}")
    _layer_lr(c.layer_lr)
    if c.siamese_optimizer == "koch-sgd":
        KochSGD(1.0, momentum=c.momentum, l2=c.l2, layer_lr={"*": 1.0, **_layer_lr(c.layer_lr)})


def _maml_family(kind, first_order: bool = False):
    def build(c, model, dataset):
        return kind(model, c.inner_lr, c.inner_steps, first_order=first_order, loss=dataset.loss,
                    compiled=c.compiled)
    return build


def _reptile(c, model, dataset):
    # The paper's Omniglot set-up: Adam (beta1 = 0) inner loop, epsilon annealed 1 -> 0.
    return Reptile(model, c.inner_lr, c.inner_steps, loss=dataset.loss, outer_stepsize=1.0,
                   final_outer_stepsize=0.0, total_steps=c.steps, inner_optimizer="adam",
                   transductive=c.transductive, compiled=c.compiled)


def _reptile_checks(c) -> None:
    if c.lr_decay_every is not None:
        raise ValueError("Expected no lr_decay_every for reptile (its outer step size is annealed linearly "
                         f"from 1 to 0 instead). Received: lr_decay_every={c.lr_decay_every}")


# MAML rotated Omniglot per task, Prototypical networks made rotations classes (Reptile too).
_PER_TASK = {"omniglot": {"rotations": "per-task"}}
_AS_CLASSES = {"omniglot": {"rotations": "classes"}}

for _name, _kind, _first_order, _about in (
        ("maml", MAML, False, "MAML, second order (Finn et al. 2017)"),
        ("fomaml", MAML, True, "first-order MAML"),
        ("metasgd", MetaSGD, False, "Meta-SGD: learned per-parameter inner rates (Li et al. 2017)"),
        ("anil", ANIL, False, "ANIL: only the head adapts (Raghu et al. 2020)")):
    register_recipe(Recipe(_name, _kind, classifier_model, _maml_family(_kind, _first_order), "sinusoid",
                           dataset_defaults=_PER_TASK, description=_about))

register_recipe(Recipe("reptile", Reptile, classifier_model, _reptile, "sinusoid", dataset_defaults=_AS_CLASSES,
                       options=("transductive",), validate=_reptile_checks,
                       description="Reptile (Nichol et al. 2018), Adam inner loop"))
register_recipe(Recipe("siamese", Siamese, lambda c, shape, dataset: siamese_encoder(
                           shape, c.siamese_encoder, "koch" if c.siamese_init == "koch" else "glorot"),
                       _siamese, "digits", tasks=("classification",), defaults={"meta_batch": 32},
                       validate=_siamese_checks,
                       description="Siamese networks on pairs (Koch et al. 2015; contrastive)"))
register_recipe(Recipe("protonet", ProtoNet, embedding_model, lambda c, model, dataset: ProtoNet(
                           model, compiled=c.compiled), "digits", tasks=("classification",),
                       dataset_defaults=_AS_CLASSES, description="Prototypical networks (Snell et al. 2017)"))
register_recipe(Recipe("matching", MatchingNet, embedding_model, lambda c, model, dataset: MatchingNet(
                           model, fce=c.fce, compiled=c.compiled), "digits", tasks=("classification",),
                       dataset_defaults=_AS_CLASSES, description="Matching networks (Vinyals et al. 2016)"))

#: The algorithm of an ExperimentConfig that names none.
DEFAULT_ALGO = "maml"
#: What ``metabridge compare`` runs when no --algo is given: ``(algorithm, config defaults)``
#: pairs on real data (the embedded Omniglot copy), small enough for a few CPU minutes;
#: the command line's own flags override these defaults.
DEFAULT_COMPARE = (
    ("protonet", {"dataset": "omniglot", "steps": 80, "meta_batch": 4, "test_tasks": 200}),
    ("maml", {"dataset": "sinusoid", "steps": 300, "test_tasks": 200}),
)
