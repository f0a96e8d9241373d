"""``metabridge export RUN_DIR --to torch|keras -o PATH``: a run's trained network
as a plain framework model that loads without metabridge.

The exported network is the run's model (the embedding network for ProtoNet,
Matching and Siamese runs; Meta-SGD's learned rates and Matching's FCE LSTMs
are not part of it). It predicts what metabridge predicts with batch
statistics, as the meta-learned model was trained.

>>> export_run("runs/protonet-torch", "keras", "protonet.keras")   # doctest: +SKIP
'protonet.keras'
"""
from __future__ import annotations

from metabridge import backend, config
from metabridge.native import save_native, to_native
from metabridge.train.checkpoint import CheckpointError, latest_params
from metabridge.train.experiment import Experiment
from metabridge.train.loop import expected_checkpoint
from metabridge.train.run_dir import RunDir

#: ``--to`` formats and the file extension each is saved with (from the backend table).
EXTENSIONS = {r.native_format: (r.native_extension,) for r in backend.BACKENDS}


def export_run(path: str, to: str, output: str) -> str:
    """Write the newest valid checkpoint of run ``path`` as a TorchScript (``to="torch"``,
    ``.pt``) or Keras (``to="keras"``, ``.keras``) file at ``output``; returns ``output``."""
    if to not in EXTENSIONS:
        raise ValueError(f"Expected to in {tuple(EXTENSIONS)}. Received: to={to!r}")
    if not output.endswith(EXTENSIONS[to]):
        raise ValueError(f"Expected an output file ending in {EXTENSIONS[to][0]} for --to {to}. "
                         f"Received: {output}")
    run = RunDir.open(path)
    c = run.config.resolved()
    with config.use_floatx(c.floatx), config.use_backend(run.backend):
        experiment = Experiment(c, input_shape=run.input_shape)  # no data needed when the run recorded its shape
        params, _ = latest_params(run.checkpoints, expected_checkpoint(run, experiment, c))
        model = getattr(experiment.model, "encoder", experiment.model)
        names = set(model.param_shapes())
        own = {k: v for k, v in params.items() if k in names}
        if set(own) != names:
            raise CheckpointError(f"Expected the parameters of {type(model).__name__} in {run.checkpoints}. "
                                  f"Received: missing {sorted(names - set(own))[:5]}")
        save_native(to_native(model, own, to), output)
    return output
