"""Training OM-Net and the MC baselines: curriculum, online data transfer,
resumable checkpoints, DDP. ``train(config) -> run_dir`` is the entry point
for Python callers; ``omkit train`` is the command line.

Modules, one job each:

* :mod:`.config`      ``TrainConfig`` (defaults from ``omkit.protocol``), ``RECIPES``
* :mod:`.curriculum`  ``Stage``, ``plan_stages``, the plateau rule
* :mod:`.data`        cases (found, split, validated, cached), samplers, regions
* :mod:`.patches`     ``TaskPatches``: per-task batches from (seed, rank, epoch, step)
* :mod:`.transfer`    online training-data transfer (``TransferRule``)
* :mod:`.optim`       model, optimiser, lr schedule, AMP scaler, seeds
* :mod:`.state`       ``TrainState``: where a run stands, its loss windows
* :mod:`.checkpoints` ``checkpoints/last.pt`` (weights-only loadable), model metadata
* :mod:`.distributed` DDP: ranks, process group, collectives
* :mod:`.run_folder`  what a run folder holds; its lock, marker, --force and --resume policy
* :mod:`.report`      metrics CSV/JSON and the loss curve
* :mod:`.guards`      allocation failures named by their settings; a non-finite loss stops the run
* :mod:`.trainer`     ``Trainer``: the loop; ``train``

What a run folder holds: :mod:`.run_folder`.
"""
from .checkpoints import weights_digest
from .config import RECIPES, TrainConfig, recipe_settings
from .curriculum import Stage, plan_stages
from .patches import TaskPatches
from .state import TrainState
from .trainer import Trainer, TrainingDiverged, train
from .transfer import TransferRule, class_fraction, task3_target, task_targets

__all__ = [
    "RECIPES", "Stage", "TaskPatches", "TrainConfig", "TrainState", "Trainer", "TrainingDiverged", "TransferRule",
    "class_fraction", "plan_stages", "recipe_settings", "task3_target", "task_targets", "train", "weights_digest",
]
