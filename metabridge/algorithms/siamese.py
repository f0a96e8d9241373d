"""Siamese networks: Koch et al. (2015) and the contrastive-margin formulation.

* ``loss="bce"``: a learned head on the pair's distance gives the logit of
  "same class" (Koch: weighted L1 distance → sigmoid), trained with binary
  cross-entropy. ``head="softplus"`` (default): the logit is
  ``b - softplus(v) · d``, the weights kept non-negative so similarity falls
  as distance grows; ``head="free"`` is Koch's ``b + w · d`` with weights of
  any sign. On few training classes a free head learns mixed signs that invert
  similarity on unseen classes (held-out digits, 5-way one-shot after 300
  steps: 12% free, 50% constrained; chance 20%).
* ``loss="contrastive"`` (Hadsell, Chopra & LeCun 2006):
  ``0.5 * [y d² + (1 - y) max(margin - d, 0)²]`` with ``d`` the distance.
* ``loss="softmax"`` (with ``pairs="all-in-batch"`` only): the same head's
  logits, but each image's partner is *ranked* against the step's other
  images — softmax cross-entropy of ``x1[i]`` against every ``x2[j]`` (target
  ``j = i``), and of ``x2[j]`` against every ``x1[i]``, averaged: the N-pair
  loss of Sohn (2016) with Koch's weighted-L1 head as the score. One-shot
  recognition is a ranking of the support examples, and this loss trains that
  ranking directly; the head's bias cancels in it (zero gradient). Measured on
  28×28 Omniglot (Conv4, 64 characters a step, same seeds, validation episodes
  within alphabets): 71.8 / 76.7 / 79.4 / 80.4 % at 500 … 2,000 steps against
  65.8 / 70.3 / 73.3 / 75.4 % with the balanced BCE over the same pairs.

Why the head's starting point matters (measured on Omniglot, 28×28, Koch's
encoder with a 1024-wide sigmoid embedding): with ``v`` near 0 every weight is
``softplus(0) ≈ 0.69`` and the bias 0, so the initial logit is about
``-0.69 · 1024 · 0.005 ≈ -3.5``: every pair, same or not, is "different" with
p ≈ 0.97. The quickest way down the loss is then to shrink *all* distances,
which collapses the embedding (its spread fell from 0.005 to 0.002) and the
network learned nothing: 19% on 20-way within-alphabet one-shot, what pixel
nearest neighbour gets, below the untrained encoder's 36%. With a ``probe``
pair batch the head starts centred (``head_init="centred"``): the bias is
minus the mean initial logit over the probe (rounded to 1e-3, so both backends
start from the same numbers), so the first decisions are at even odds and the
loss must separate same from different pairs instead of shrinking every
distance. ``head_init="koch"`` is the paper's: head weights N(0, 0.2) and
bias N(0.5, 0.01) — centred too for the free head, whose weights have mean 0.
``head_init="glorot"`` (default without a probe) is the generic start.

``pairs="all-in-batch"``: a batch ``(x1, x2)`` holds two examples of each of
``k`` distinct classes, and every ``x1[i]`` is paired with every ``x2[j]``:
``k`` same pairs (``i == j``) and ``k (k - 1)`` different ones, the two halves
weighted equally — each image then serves in ``k`` pairs for one pass through
the encoder (Koch draws independent pairs, ``"independent"``).

Evaluation is N-way one-shot: each query goes to the most similar support
example.

A Siamese network is both the model (its parameters are the encoder's plus the
head's) and the :class:`~metabridge.algorithms.Algorithm` that trains it on
pair batches (``trains_on = "pairs"``) and evaluates it on episodes. Its
outer optimizer is Adam, or Koch et al.'s SGD (:class:`KochSGD`: per-layer
learning rates, momentum rising to a per-layer final value, per-layer L2) with
``optimizer="koch-sgd"``.
"""
from __future__ import annotations

import numpy as np

from metabridge import ops
from metabridge.algorithms.base import Algorithm
from metabridge.algorithms.common import l2_norm
from metabridge.data.episodes import Episode, PairBatch, TaskBatch
from metabridge.nn.base import Model
from metabridge.optim import update_via_apply

DISTANCES = ("l1", "l2", "cosine")
SIAMESE_LOSSES = ("bce", "contrastive", "softmax")
SIAMESE_HEAD_LOSSES = ("bce", "softmax")  # the losses on the learned head's logit
SIAMESE_HEADS = ("softplus", "free")
SIAMESE_HEAD_INITS = ("centred", "koch", "glorot")  # None: centred with a probe
SIAMESE_OPTIMIZERS = ("adam", "koch-sgd")
SIAMESE_PAIRS = ("independent", "all-in-batch")
#: How a batch-norm encoder normalises the two sets of a pair batch or an episode.
SIAMESE_NORMS = ("joint", "per-set")
#: Test-time augmentation of one-shot evaluation.
SIAMESE_TEST_AUGMENTS = ("none", "shifts")
_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))  # (rows, columns) of the test_augment="shifts" copies
#: The recipe's choices (``--siamese-init``, ``--siamese-encoder``).
SIAMESE_INITS = ("default", "koch", "glorot")
SIAMESE_ENCODERS = ("auto", "koch", "conv4", "conv4-32", "conv4-spatial")
_EPS = 1e-12  # keeps sqrt and the cosine norm differentiable at zero distance


class Siamese(Model, Algorithm):
    """A Siamese network around an embedding ``encoder`` (any :class:`Model`).

    Its parameters are the encoder's plus, for ``loss="bce"`` or ``"softmax"``, a head
    (``head.kernel`` = ``v``, ``head.bias`` = ``b``; logit ``b - softplus(v) · d``,
    or ``b + v · d`` with ``head="free"``): ``[embedding, 1]`` for the weighted
    L1 distance, ``[1, 1]`` on the scalar L2 / cosine distance. ``head_init``:
    how the head starts (see the module docstring); ``optimizer``: ``"adam"``
    or ``"koch-sgd"`` (:class:`KochSGD`, options in ``koch_sgd``). ``norm``
    (batch-norm encoders): ``"joint"`` passes both images of a pair batch (and
    an episode's support and query sets) through the encoder as one batch, so
    batch norm normalises them with the same statistics; ``"per-set"`` passes
    each set as its own batch, as MAML's evaluation does with support and query
    sets. In Koch's and Lake's 20-way task each set is one drawer's drawings, so
    per-set statistics take out what is common to one drawer (see
    :meth:`embed_both`). ``test_augment="shifts"``: one-shot evaluation embeds
    every image as the mean embedding of the image and its four one-pixel shifts
    (see :meth:`embed_episode`); training is unchanged.

    >>> from metabridge.nn import SmallConvEncoder
    >>> net = Siamese(SmallConvEncoder(input_shape=(8, 8, 1)), distance="l1", loss="bce")
    >>> params = net.init(seed=0)
    >>> loss, grads = net.value_and_grad(params, x1, x2, same)   # doctest: +SKIP
    """

    trains_on = "pairs"
    adapts = False
    any_ways = True
    metric_name = "accuracy"

    def __init__(self, encoder: Model, distance: str = "l1", loss: str = "bce", margin: float = 1.0,
                 head: str = "softplus", head_init: str | None = None, optimizer: str = "adam",
                 koch_sgd: dict | None = None, probe=None, pairs: str = "independent", norm: str = "joint",
                 test_augment: str = "none"):
        if not isinstance(encoder, Model):
            raise ValueError(f"Expected a metabridge.nn.Model encoder. Received: {type(encoder).__name__}")
        if distance not in DISTANCES:
            raise ValueError(f"Expected distance in {DISTANCES}. Received: distance={distance!r}")
        if loss not in SIAMESE_LOSSES:
            raise ValueError(f"Expected loss in {SIAMESE_LOSSES}. Received: loss={loss!r}")
        if not isinstance(margin, (int, float)) or not np.isfinite(margin) or margin <= 0:
            raise ValueError(f"Expected margin > 0. Received: margin={margin!r}")
        if head_init is None:
            head_init = "centred" if probe is not None else "glorot"
        if head_init == "centred" and probe is None and loss in SIAMESE_HEAD_LOSSES:
            raise ValueError("Expected a probe pair batch (x1, x2) to centre the head on. Received: probe=None "
                             "with head_init='centred'")
        for name, value, choices in (("head", head, SIAMESE_HEADS), ("head_init", head_init, SIAMESE_HEAD_INITS),
                                     ("optimizer", optimizer, SIAMESE_OPTIMIZERS),
                                     ("pairs", pairs, SIAMESE_PAIRS), ("norm", norm, SIAMESE_NORMS),
                                     ("test_augment", test_augment, SIAMESE_TEST_AUGMENTS)):
            if value not in choices:
                raise ValueError(f"Expected {name} in {choices}. Received: {name}={value!r}")
        if loss == "softmax" and pairs != "all-in-batch":
            raise ValueError("Expected pairs='all-in-batch' for loss='softmax' (it ranks each image's partner "
                             f"against the batch's other images). Received: pairs={pairs!r}")
        self.encoder, self.distance, self.loss, self.margin = encoder, distance, loss, float(margin)
        self.head, self.head_init, self.optimizer, self.pairs, self.norm = head, head_init, optimizer, pairs, norm
        self.test_augment = test_augment
        self.probe = probe  # (x1, x2), or a function returning them (called by init only)
        self.koch_sgd = dict(koch_sgd or {})
        if optimizer == "koch-sgd":
            KochSGD(1.0, **self.koch_sgd)  # validates the options now
        self.input_shape = tuple(encoder.input_shape)
        self._batch_norm = any(k.split(".")[0].startswith("bn") for k in encoder.param_shapes())

    @property
    def model(self) -> "Siamese":
        """The network the algorithm trains: the Siamese network itself."""
        return self

    def param_shapes(self):
        shapes = dict(self.encoder.param_shapes())
        if self.loss in SIAMESE_HEAD_LOSSES:
            width = getattr(self.encoder, "embedding_dim", None) if self.distance == "l1" else 1
            if width is None:
                raise ValueError("Expected an encoder with an embedding_dim for the weighted L1 head. "
                                 f"Received: {type(self.encoder).__name__} without one")
            shapes["head.kernel"], shapes["head.bias"] = (width, 1), (1,)
        return shapes

    def _forward(self, params, x, state, training):
        return self.encoder._forward(params, x, state, training)

    def init(self, seed: int) -> dict:
        """The encoder's initial parameters (its own scheme) and the head's (``head_init``):
        ``"glorot"`` the generic start (softplus weights ≈ 0.69, bias 0); ``"centred"``
        the same weights and the bias that makes the mean logit over ``probe`` (pairs
        ``(x1, x2)``, or a function returning them) 0
        (rounded to 1e-3); ``"koch"`` weights N(0, 0.2) (the raw ``v`` for softplus)
        and bias N(0.5, 0.01)."""
        params = Model.init(self, seed)  # the generic start: encoder then head, one generator
        params.update(self.encoder.init(seed))
        if self.loss not in SIAMESE_HEAD_LOSSES or self.head_init == "glorot":
            return params
        shape, dtype = params["head.kernel"].shape, params["head.kernel"].dtype
        if self.head_init == "centred":
            params["head.bias"] = np.zeros((1,), dtype=dtype)
            tensors = {k: ops.asarray(v) for k, v in params.items()}
            probe = self.probe() if callable(self.probe) else self.probe
            x1, x2 = (np.asarray(x).reshape((len(x),) + self.input_shape).astype(dtype) for x in probe[:2])
            e1, e2 = self.embed_both(tensors, x1, x2)
            if self.pairs == "all-in-batch":  # the same and the different pairs weigh alike
                z = ops.to_numpy(self.pair_score_matrix(tensors, e1, e2))
                off = ~np.eye(len(z), dtype=bool)
                mean_logit = 0.5 * float(np.mean(np.diag(z))) + 0.5 * float(np.mean(z[off]))
            else:
                mean_logit = float(np.mean(ops.to_numpy(self._same_logit(tensors, e1, e2))))
            params["head.bias"] = np.array([-round(mean_logit, 3)], dtype=dtype)
        else:
            rng = np.random.default_rng([int(seed), 1])
            params["head.kernel"] = rng.normal(0.0, 0.2, size=shape).astype(dtype)
            params["head.bias"] = rng.normal(0.5, 0.01, size=(1,)).astype(dtype)
        return params

    def outer_optimizer(self, lr):
        """Adam, or :class:`KochSGD` with the ``koch_sgd`` options (``optimizer="koch-sgd"``)."""
        if self.optimizer == "koch-sgd":
            return KochSGD(lr, **self.koch_sgd)
        return Algorithm.outer_optimizer(self, lr)

    def batch_coupling(self) -> str | None:
        """All-in-batch pairs score every image against every other, and a
        batch-norm encoder normalises a step's images together: either couples the batch."""
        if self.pairs == "all-in-batch":
            return "siamese_pairs='all-in-batch' scores every pair of the step's images"
        if self._batch_norm:
            return "the Siamese encoder has batch norm over all of a step's pair images"
        return None

    def embed(self, params: dict, x):
        """Embeddings ``[n, d]`` of a batch of inputs."""
        return self(params, x)

    def embed_both(self, params: dict, a, b):
        """``(embed(a), embed(b))``. With a batch-norm encoder and ``norm="joint"``
        the two batches go through the encoder in one pass, so both are normalised
        with the same statistics; with ``norm="per-set"`` each with its own.

        Why per-set (measured, 28×28 Omniglot, the session-14 recipe's trained
        parameters, 600 validation episodes of 20-way within-alphabet one-shot):
        87.5 % with per-set statistics against 85.9 % with joint ones. In the task
        the support set is one drawer's drawings and the query set another's, and
        each set's own statistics take out that drawer's stroke width and size."""
        if not self._batch_norm or self.norm == "per-set":  # two calls (the same numbers without batch norm)
            return self.embed(params, a), self.embed(params, b)
        n = ops.shape(a)[0]
        e = self.embed(params, ops.concat([ops.asarray(a), ops.asarray(b)], 0))
        return e[:n], e[n:]

    def embed_episode(self, params: dict, support_x, query_x):
        """Support and query embeddings for one-shot evaluation: :meth:`embed_both`, or
        with ``test_augment="shifts"`` the mean of :meth:`embed_both` over the sets
        shifted by one pixel up, down, left and right and not at all (the vacated
        row or column repeats the edge, i.e. the background). Each shifted set is
        normalised as a set, as ``norm`` says.

        Measured (28×28 Omniglot, the session-14 recipe's trained parameters, per-set
        statistics, 600 validation episodes): 88.8 % with the shifts against 87.5 %.

        >>> es, eq = net.embed_episode(params, episode.support_x, episode.query_x)   # doctest: +SKIP
        """
        if self.test_augment == "none":
            return self.embed_both(params, support_x, query_x)
        support_x, query_x = ops.asarray(support_x), ops.asarray(query_x)
        es = eq = None
        for dy, dx in _SHIFTS:
            a, b = self.embed_both(params, _shift(support_x, dy, dx), _shift(query_x, dy, dx))
            es, eq = (a, b) if es is None else (es + a, eq + b)
        return es / len(_SHIFTS), eq / len(_SHIFTS)

    # ---- pair scores -----------------------------------------------------------------
    def _pair_distance(self, e1, e2):
        if self.distance == "l1":
            return ops.sum(ops.abs(e1 - e2), -1)
        if self.distance == "l2":
            return l2_norm(e1 - e2, _EPS, keepdims=False)
        n1, n2 = l2_norm(e1, _EPS, keepdims=False), l2_norm(e2, _EPS, keepdims=False)
        return 1.0 - ops.sum(e1 * e2, -1) / (n1 * n2)

    def _same_logit(self, params, e1, e2):
        if self.distance == "l1":
            feats = ops.abs(e1 - e2)
        else:
            feats = ops.reshape(self._pair_distance(e1, e2), (-1, 1))
        if self.head == "free":  # Koch: b + w · d, weights of any sign
            return ops.reshape(params["head.bias"] + ops.matmul(feats, params["head.kernel"]), (-1,))
        weights = ops.softplus(params["head.kernel"])
        return ops.reshape(params["head.bias"] - ops.matmul(feats, weights), (-1,))

    def pair_scores(self, params: dict, e1, e2):
        """Similarity of embedding pairs (higher = more alike): the head's logit of
        "same" for ``bce`` and ``softmax``, minus the distance for ``contrastive``."""
        if self.loss in SIAMESE_HEAD_LOSSES:
            return self._same_logit(params, e1, e2)
        return -self._pair_distance(e1, e2)

    def pair_loss(self, params: dict, x1, x2, same):
        """Mean loss over pairs; ``same`` is 1.0 for same-class pairs, 0.0 otherwise."""
        x1, x2, same = ops.asarray(x1), ops.asarray(x2), ops.asarray(same)
        params = {k: ops.asarray(v) for k, v in params.items()}
        e1, e2 = self.embed_both(params, x1, x2)
        if self.pairs == "all-in-batch":
            return self._all_pairs_loss(params, e1, e2)
        if self.loss == "bce":
            return ops.bce_with_logits(self._same_logit(params, e1, e2), same)
        d = self._pair_distance(e1, e2)
        return 0.5 * ops.mean(same * ops.square(d) + (1.0 - same) * ops.square(ops.relu(self.margin - d)))

    def _all_pairs_loss(self, params, e1, e2):
        """Every ``x1[i]`` with every ``x2[j]``: the ``k`` pairs ``i == j`` are the same class,
        the ``k (k - 1)`` others different; the two halves weigh equally (``bce``,
        ``contrastive``), or each row and each column is a softmax over ``k`` candidates
        whose target is the diagonal (``softmax``)."""
        k = int(ops.shape(e1)[0])
        eye = ops.asarray(np.eye(k))
        scores = self.pair_score_matrix(params, e1, e2)  # [k, k], row i: e1[i] against every e2[j]
        if self.loss == "softmax":
            rows = ops.sum(ops.log_softmax(scores, -1) * eye, -1)
            cols = ops.sum(ops.log_softmax(ops.transpose(scores, (1, 0)), -1) * eye, -1)
            return -0.5 * (ops.mean(rows) + ops.mean(cols))
        if self.loss == "bce":
            pos, neg = ops.softplus(-scores), ops.softplus(scores)  # -log σ(z), -log(1 - σ(z))
        else:
            d = -scores
            pos, neg = 0.5 * ops.square(d), 0.5 * ops.square(ops.relu(self.margin - d))
        return 0.5 * ops.sum(pos * eye) / k + 0.5 * ops.sum(neg * (1.0 - eye)) / (k * (k - 1))

    def value_and_grad(self, params: dict, x1, x2, same):
        """``(loss, grads)`` of :meth:`pair_loss` with respect to ``params``."""
        self._check_pairs(x1, x2, same)
        params = {k: ops.asarray(v) for k, v in params.items()}
        return ops.value_and_grad(self.pair_loss)(params, x1, x2, same)

    def meta_value_and_grad(self, params: dict, batch: PairBatch):
        """``(loss, grads)`` of a :class:`~metabridge.data.PairBatch` (the protocol's training step)."""
        x1, x2, same = batch
        return self.value_and_grad(params, x1, x2, same)

    def meta_gradient_function(self, batch: PairBatch):
        """``(self._pairs_value_and_grad, (x1, x2, same) as tensors)`` for a checked
        pair batch, so the training loop compiles the gradient and the optimizer
        step as one function (see :meth:`Algorithm.meta_gradient_function`).
        Without it the pair loss ran eagerly: on TensorFlow the 28×28 Omniglot
        recipe's step (128 images, Conv4-64, 2 CPU threads) took 0.38 s, compiled
        0.24 s (a hand-written ``tf.function`` Conv4 step: 0.23 s)."""
        x1, x2, same = batch
        self._check_pairs(x1, x2, same)
        return self._pairs_value_and_grad, tuple(ops.asarray(a) for a in (x1, x2, same))

    def _pairs_value_and_grad(self, params: dict, x1, x2, same):
        return ops.value_and_grad(self.pair_loss)(params, x1, x2, same)

    def _check_pairs(self, x1, x2, same) -> None:
        s1, s2, ss = (tuple(getattr(a, "shape", np.shape(a))) for a in (x1, x2, same))
        if s1 != s2 or len(s1) < 1 or ss != s1[:1]:
            raise ValueError(
                f"Expected x1 and x2 of equal shape [n, ...] and same of shape [n]. "
                f"Received: x1.shape={s1}, x2.shape={s2}, same.shape={ss}"
            )
        if self.pairs == "all-in-batch" and (s1[0] < 2 or (isinstance(same, np.ndarray) and not np.all(same == 1))):
            raise ValueError(f"Expected at least 2 pairs, all of one class each (same = 1), for "
                             f"pairs='all-in-batch'. Received: {s1[0]} pairs, same={np.asarray(same)[:4]}...")
        for name, arr in (("x1", x1), ("x2", x2)):
            if isinstance(arr, np.ndarray) and arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                raise ValueError(f"Expected finite values in {name}. Received: NaN or inf in {name}")
        if isinstance(same, np.ndarray) and not np.all((same == 0) | (same == 1)):
            raise ValueError("Expected same to hold only 0.0 and 1.0. Received: other values in same")

    # ---- N-way one-shot evaluation --------------------------------------------------------
    def pair_score_matrix(self, params: dict, eq, es):
        """``[queries, support]`` :meth:`pair_scores` of every query embedding with every support one."""
        ns, nq = ops.shape(es)[0], ops.shape(eq)[0]
        d = ops.shape(es)[1]
        eq_rep = ops.reshape(ops.stack([eq] * ns, axis=1), (nq * ns, d))
        es_rep = ops.reshape(ops.stack([es] * nq, axis=0), (nq * ns, d))
        return ops.reshape(self.pair_scores(params, eq_rep, es_rep), (nq, ns))

    def one_shot_predictions(self, params: dict, support_x, support_y, query_x):
        """Label of the most similar support example, for each query."""
        params = {k: ops.asarray(v) for k, v in params.items()}
        es, eq = self.embed_episode(params, support_x, query_x)
        scores = self.pair_score_matrix(params, eq, es)
        nearest = ops.to_numpy(ops.argmax(scores, -1))
        return np.asarray(ops.to_numpy(ops.asarray(support_y)))[nearest]

    def predict_episode(self, params: dict, episode: Episode, steps: int | None = None):
        """``[queries, ways]`` scores: for each class, the best pair score of a
        query against that class's support examples."""
        if steps is not None:
            raise ValueError(f"Expected no inner steps for Siamese (it does not adapt). Received: steps={steps!r}")
        tensors = {k: ops.asarray(v) for k, v in params.items()}
        es, eq = self.embed_episode(tensors, episode.support_x, episode.query_x)
        scores = ops.to_numpy(self.pair_score_matrix(tensors, eq, es))
        labels = np.asarray(ops.to_numpy(ops.asarray(episode.support_y))).astype(np.int64)
        out = np.full((scores.shape[0], int(labels.max()) + 1), -np.inf, dtype=scores.dtype)
        for c in range(out.shape[1]):
            out[:, c] = scores[:, labels == c].max(axis=1)
        return ops.asarray(out)

    def evaluate(self, params: dict, batch: TaskBatch, steps: int | None = None) -> dict:
        """Per-episode N-way one-shot accuracy (numpy ``[episodes]``)."""
        if steps is not None:
            raise ValueError(f"Expected no inner steps for Siamese (it does not adapt). Received: steps={steps!r}")
        accs = [self.one_shot_accuracy(params, Episode(batch.support_x[t], batch.support_y[t], batch.query_x[t],
                                                       batch.query_y[t])) for t in range(batch.size)]
        return {"accuracy": np.asarray(accs)}

    def one_shot_accuracy(self, params: dict, episode: Episode) -> float:
        """Fraction of the episode's queries matched to a support example of their class."""
        pred = self.one_shot_predictions(params, episode.support_x, episode.support_y, episode.query_x)
        return float(np.mean(pred == np.asarray(ops.to_numpy(ops.asarray(episode.query_y)))))


def _shift(x, dy: int, dx: int):
    """``x`` ``[n, H, W, C]`` moved ``dy`` rows down and ``dx`` columns right by one pixel at most,
    the vacated row or column a copy of the edge."""
    if dy == 1:
        x = ops.concat([x[:, :1], x[:, :-1]], 1)
    elif dy == -1:
        x = ops.concat([x[:, 1:], x[:, -1:]], 1)
    if dx == 1:
        x = ops.concat([x[:, :, :1], x[:, :, :-1]], 2)
    elif dx == -1:
        x = ops.concat([x[:, :, 1:], x[:, :, -1:]], 2)
    return x


class KochSGD:
    """Koch et al.'s optimizer: SGD with momentum, per-layer learning rates,
    momentum rising linearly from ``momentum_start`` to a per-layer final value
    over ``momentum_steps`` updates, and per-layer L2 regularisation (``l2 * p``
    added to the gradient); the base rate ``lr`` may be a schedule, e.g.
    ``StepDecay(lr, steps_per_epoch, 0.99)`` for the paper's 1 % per epoch.

    ``layer_lr``, ``momentum`` and ``l2`` are a number for every layer, or a dict
    from a layer name (the part of a parameter name before the dot: ``"conv1"``,
    ``"embed"``, ``"head"``) to a number, ``"*"`` for the others. Per parameter:
    ``buf = mu(t) * buf + grad + l2 * p``; ``p -= lr(t) * layer_lr * buf``.

    >>> opt = KochSGD(0.01, layer_lr={"head": 10.0, "*": 1.0}, momentum=0.9, l2={"*": 1e-4})
    """

    def __init__(self, lr, layer_lr=1.0, momentum=0.9, momentum_start: float = 0.5,
                 momentum_steps: int = 1000, l2=0.0):
        self.lr = lr if callable(lr) else _positive("lr", lr)
        self.layer_lr = _per_layer("layer_lr", layer_lr, lambda v: v > 0, "> 0")
        self.momentum = _per_layer("momentum", momentum, lambda v: 0 <= v < 1, "in [0, 1)")
        self.l2 = _per_layer("l2", l2, lambda v: v >= 0, ">= 0")
        if not (isinstance(momentum_start, (int, float)) and 0 <= momentum_start < 1):
            raise ValueError(f"Expected momentum_start in [0, 1). Received: momentum_start={momentum_start!r}")
        if not isinstance(momentum_steps, int) or isinstance(momentum_steps, bool) or momentum_steps < 1:
            raise ValueError(f"Expected momentum_steps >= 1. Received: momentum_steps={momentum_steps!r}")
        self.momentum_start, self.momentum_steps = float(momentum_start), momentum_steps

    @staticmethod
    def _of(table: dict, name: str) -> float:
        return table.get(name.split(".", 1)[0], table["*"])

    def momentum_at(self, name: str, step: int) -> float:
        """Momentum of parameter ``name`` at update ``step`` (0-based)."""
        frac = min(step / self.momentum_steps, 1.0)
        return self.momentum_start + frac * (self._of(self.momentum, name) - self.momentum_start)

    def init(self, params: dict) -> dict:
        state = {"step": 0}
        state.update({f"momentum.{k}": ops.zeros_like(ops.asarray(v)) for k, v in params.items()})
        return state

    def scalars(self, step: int) -> dict:
        """The step-dependent numbers of update ``step`` (0-based): the base rate and
        each layer's momentum."""
        out = {"lr": self.lr(step) if callable(self.lr) else self.lr}
        out.update({f"mu.{layer}": self.momentum_at(f"{layer}.", step) for layer in self.momentum})
        return out

    def apply(self, params: dict, grads: dict, slots: dict, scalars: dict) -> tuple[dict, dict]:
        """One update with ``scalars`` given: ``(new params, new slots)``; tensors only, so it compiles."""
        new_params, new_slots = {}, {}
        for k, p in params.items():
            p, g = ops.asarray(p), ops.asarray(grads[k])
            l2 = self._of(self.l2, k)
            if l2:
                g = g + p * l2
            layer = k.split(".", 1)[0]
            mu = scalars[f"mu.{layer}"] if layer in self.momentum else scalars["mu.*"]
            buf = slots[f"momentum.{k}"] * mu + g
            new_slots[f"momentum.{k}"] = buf
            new_params[k] = p - (scalars["lr"] * self._of(self.layer_lr, k)) * buf
        return new_params, new_slots

    def update(self, params: dict, grads: dict, state: dict) -> tuple[dict, dict]:
        return update_via_apply(self, params, grads, state)


def _positive(name: str, value) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"Expected {name} > 0. Received: {name}={value!r}")
    return float(value)


def _per_layer(name: str, value, ok, bound: str) -> dict:
    table = dict(value) if isinstance(value, dict) else {"*": value}
    table.setdefault("*", 1.0 if name == "layer_lr" else 0.0)
    for layer, v in table.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v) or not ok(v):
            raise ValueError(f"Expected {name} {bound} for every layer. Received: {name}[{layer!r}]={v!r}")
    return {k: float(v) for k, v in table.items()}
