"""The built-in algorithms as recipes: the MAML family, Reptile, Prototypical,
Matching and Siamese networks.

>>> get_recipe("protonet").any_ways
True
"""
from __future__ import annotations

from metabridge.algorithms import ANIL, MAML, MatchingNet, MetaSGD, ProtoNet, Reptile, Siamese
from metabridge.nn import KochEncoder, SmallConvEncoder
from metabridge.recipes.registry import Recipe, register_recipe


def classifier_model(c, input_shape: tuple, dataset):
    """The data set's network with one output per way (regression data sets: their own output)."""
    return dataset.backbone(input_shape, c.ways)


def embedding_model(c, input_shape: tuple, dataset):
    """The data set's network without a head: an embedding."""
    return dataset.backbone(input_shape, None)


def siamese_encoder(input_shape: tuple):
    """The Siamese encoder for an input size: the small Keras-example encoder for
    small images, Koch et al.'s (at its paper size for 105×105; narrower kernels
    and a 1024-wide embedding for 28×28) otherwise."""
    if input_shape[0] < 28:
        return SmallConvEncoder(input_shape=input_shape)
    if input_shape[0] >= 105:
        return KochEncoder(input_shape=input_shape)
    return KochEncoder(input_shape=input_shape, filters=(64, 128, 128), kernels=(5, 3, 2), embedding=1024)


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
register_recipe(Recipe("siamese", Siamese, lambda c, shape, dataset: siamese_encoder(shape),
                       lambda c, encoder, dataset: Siamese(encoder, c.distance, c.siamese_loss), "digits",
                       tasks=("classification",), defaults={"meta_batch": 32},
                       description="Siamese networks on pairs (Koch et al. 2015; contrastive)"))
register_recipe(Recipe("protonet", ProtoNet, embedding_model, lambda c, model, dataset: ProtoNet(
                           model, compiled=c.compiled), "digits", tasks=("classification",),
                       dataset_defaults=_AS_CLASSES, description="Prototypical networks (Snell et al. 2017)"))
register_recipe(Recipe("matching", MatchingNet, embedding_model, lambda c, model, dataset: MatchingNet(
                           model, fce=c.fce, compiled=c.compiled), "digits", tasks=("classification",),
                       dataset_defaults=_AS_CLASSES, description="Matching networks (Vinyals et al. 2016)"))

#: The algorithm of an ExperimentConfig that names none.
DEFAULT_ALGO = "maml"
#: What ``metabridge compare`` runs when no --algo is given.
DEFAULT_COMPARE = ("maml", "siamese")
