"""Training steps one compiled call at a time, or several per call.

A call into a compiled TensorFlow graph costs about half a millisecond of
Python besides the graph itself, as much as a whole small meta-step (sinusoid
MAML: 1.4 ms of graph). For such steps :class:`Steps` runs up to
``STEPS_PER_CALL`` of them in one call (``Experiment.train_steps``, a loop
inside the graph) and hands them to the training loop one by one. A call never
crosses a step after which the loop evaluates or checkpoints, so the parameters
exist there; in between they are not materialised (and the ``seconds`` logged
for the steps of one call are taken when the call returns). The steps are the
same computation in the same order as one call a step, equal to rounding
(tests/test_train_steps.py).

>>> steps = Steps(setup, update, "tensorflow", total=1000, boundaries=(100,))   # doctest: +SKIP
>>> loss, new_params, new_state, finite = steps.step(params, state, 0)         # doctest: +SKIP
"""
from __future__ import annotations

STEPS_PER_CALL = 16
# Several steps per call only for small batches: the saving is per call, and
# the call holds every step's batch at once.
MAX_BATCH_BYTES = 1 << 20


class Steps:
    """Each training step's ``(loss, new params, new state, all finite)``.

    ``new params`` and ``new state`` are ``None`` for a step inside a call of
    several steps (the loop keeps its own until the call's last step).
    ``boundaries``: step counts (eval or checkpoint periods, ``None`` or 0 for
    none) that a call must end on; ``total`` the run's last step count.
    """

    def __init__(self, setup, update, backend: str, total: int, boundaries=()):
        self.setup, self.update, self.total = setup, update, total
        self.boundaries = [b for b in boundaries if b]
        self.per_call = setup.steps_per_call(backend) if hasattr(update, "fused_steps") else 1
        self._ahead: list = []

    def step(self, params: dict, state: dict, step: int):
        """Step ``step`` from ``params`` and ``state`` (the loop's, after step ``step - 1``)."""
        if self.per_call <= 1:
            return self.setup.train_step(params, state, step, self.update)
        if not self._ahead:
            out = self.setup.train_steps(params, state, step, self._room(step), self.update)
            if out is None:  # this algorithm or batch has no compiled step function
                self.per_call = 1
                return self.setup.train_step(params, state, step, self.update)
            losses, checks, done, new_params, new_state = out
            count = len(losses)
            for j in range(min(done + 1, count)):  # the applied steps, and the non-finite one if any
                last = j == done - 1
                self._ahead.append((float(losses[j]), new_params if last else None, new_state if last else None,
                                    j < done))
        return self._ahead.pop(0)

    def _room(self, step: int) -> int:
        """Steps from ``step`` up to the next boundary (at most ``per_call``)."""
        end = self.total
        for every in self.boundaries:
            end = min(end, (step // every + 1) * every)
        return max(1, min(self.per_call, end - step))
