"""Trainers with another schedule, made on demand from their name, in nnU-Net's ``_NNepochs`` naming style.

    nnUNetTrainerMulModSeg_50epochs                 50 epochs of nnU-Net's 250 iterations
    nnUNetTrainerMulModSeg_40epochs_100it           40 epochs of 100 iterations (4,000 optimizer steps)
    nnUNetTrainer_40epochs_100it_10val              ... with 10 validation iterations per epoch

nnU-Net ships a fixed set of such variants as classes (``nnUNetTrainer_250epochs`` ...). Any schedule is
useful here (a step budget for a CPU benchmark, a short run to try a recipe), so the classes are made when
asked for: the trainer modules that nnU-Net's ``-tr`` search imports (``nnunet_mulmod/nnunet_trainers``) answer
unknown attribute names with :func:`trainer_class_for_name` (a module ``__getattr__``, PEP 562). A made class is
cached and its ``__module__`` is this module, whose own ``__getattr__`` gives the same object back, so it
pickles like any class and a checkpoint's ``trainer_name`` finds it again at prediction.

The base is any trainer of this package, nnU-Net's own ``nnUNetTrainer`` or ``nnUNetTrainerNoMirroring`` (the
vanilla baseline for datasets with left/right classes, as TotalSegmentator trains); the class name (and so nnU-Net's
results folder) says the schedule. Validation iterations default to nnU-Net's 50, or to at most the training
iterations when those are given (50 validation batches would dominate a 10-iteration epoch). Short schedules
save ``checkpoint_latest.pth`` every tenth of the run (nnU-Net: every 50 epochs), so ``--c`` has one to resume from.
"""
from __future__ import annotations

import re
from typing import Dict, Mapping, Optional, Tuple

import torch

SCHEDULE_NAME = re.compile(r"^(?P<base>nnUNetTrainer\w*?)_(?P<epochs>\d+)epochs?(?:_(?P<iterations>\d+)it)?"
                           r"(?:_(?P<val>\d+)val)?$")

_made: Dict[str, type] = {}


def schedule_name(base_name: str, epochs: int, iterations: Optional[int] = None,
                  val_iterations: Optional[int] = None) -> str:
    """The class name of ``base_name`` with this schedule (the inverse of :data:`SCHEDULE_NAME`)."""
    name = f"{base_name}_{int(epochs)}epochs"
    if iterations is not None:
        name += f"_{int(iterations)}it"
    if val_iterations is not None:
        name += f"_{int(val_iterations)}val"
    return name


def parse_schedule_name(name: str) -> Optional[Tuple[str, int, Optional[int], Optional[int]]]:
    """'nnUNetTrainerALT_40epochs_100it' -> ('nnUNetTrainerALT', 40, 100, None); None for other names."""
    match = SCHEDULE_NAME.match(name)
    if match is None:
        return None
    optional = (match.group("iterations"), match.group("val"))
    return (match.group("base"), int(match.group("epochs")),
            *(int(v) if v is not None else None for v in optional))


def schedulable_trainers() -> Dict[str, type]:
    """Base trainers a schedule can be put on: this package's trainers and nnU-Net's nnUNetTrainer and
    nnUNetTrainerNoMirroring."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import \
        nnUNetTrainerNoMirroring

    from nnunet_mulmod.nnunet_trainers import registered_trainers
    return {"nnUNetTrainer": nnUNetTrainer, "nnUNetTrainerNoMirroring": nnUNetTrainerNoMirroring,
            **registered_trainers()}


def with_schedule(base: type, epochs: Optional[int], iterations: Optional[int] = None,
                  val_iterations: Optional[int] = None, *, name: Optional[str] = None, module: Optional[str] = None,
                  namespace: Optional[Mapping[str, object]] = None) -> type:
    """``base`` with ``epochs`` x ``iterations`` training and ``val_iterations`` validation iterations per epoch.

    The one way this package makes "trainer X with another schedule". By default the class is named
    :func:`schedule_name` and lives in this module (its ``__getattr__`` makes it again from the name). A trainer
    with a name of its own (``nnUNetTrainerZeus_debug``, ``nnUNetTrainerMulModSeg_demo``, an experiment's
    trainers) gives ``name`` and the ``module`` that holds it under that name, so that pickle and nnU-Net's
    trainer search find it there. ``epochs`` None keeps the base's epochs (with a ``name``: an experiment's trainer
    that changes only its split). ``namespace``: further class attributes (method overrides).
    """
    if (epochs is not None and epochs < 1) or (iterations is not None and iterations < 1) or \
            (val_iterations is not None and val_iterations < 1):
        raise ValueError(f"schedule of {base.__name__}: epochs, iterations and validation iterations must be >= 1")
    if name is None:
        if epochs is None:
            raise ValueError(f"schedule of {base.__name__}: a class without a name of its own needs epochs")
        name = schedule_name(base.__name__, epochs, iterations, val_iterations)
    if name in _made:
        return _made[name]
    if val_iterations is None and iterations is not None:
        val_iterations = min(50, iterations)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        base.__init__(self, plans, configuration, fold, dataset_json, device)
        if epochs is not None:
            self.num_epochs = epochs
            # nnU-Net writes checkpoint_latest every 50 epochs: a short schedule would never write one to resume from
            self.save_every = max(1, min(self.save_every, epochs // 10))
        if iterations is not None:
            self.num_iterations_per_epoch = iterations
        if val_iterations is not None:
            self.num_val_iterations_per_epoch = val_iterations

    doc = f"{base.__name__}, " + (f"{epochs} epochs" if epochs is not None else "its own epochs") + \
        (f" x {iterations} iterations" if iterations else "") + \
        (f", {val_iterations} validation iterations" if val_iterations else "")
    attributes = {"__init__": __init__, "__module__": module or __name__, "__qualname__": name, "__doc__": doc,
                  **(namespace or {})}
    cls = type(name, (base,), attributes)
    _made[name] = cls
    return cls


def trainer_class_for_name(name: str) -> Optional[type]:
    """The trainer class a schedule name asks for, or None when the name is not one (or its base is unknown)."""
    parsed = parse_schedule_name(name)
    if parsed is None:
        return None
    base_name, epochs, iterations, val_iterations = parsed
    base = schedulable_trainers().get(base_name)
    if base is None:
        return None
    return with_schedule(base, epochs, iterations, val_iterations)


def __getattr__(name: str):
    # pickle and nnU-Net find made classes under this module's name
    cls = trainer_class_for_name(name) if not name.startswith("__") else None
    if cls is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return cls
