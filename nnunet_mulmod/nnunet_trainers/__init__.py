"""Folder that nnU-Net's trainer search scans (registered via nnUNet_extTrainer at interpreter start).

nnU-Net imports every module here as a top-level module. Each module only re-exports trainer classes
from their real home inside ``nnunet_mulmod``, so the class objects (and everything pickled by
nnU-Net's worker processes) stay those of the installed package. Trainers with another schedule
(``<Trainer>_<E>epochs[_<I>it][_<V>val]``) are made on demand: see nnunet_mulmod/training/schedules.py.
"""
import importlib
from typing import Dict

TRAINER_MODULES = ("mulmodseg_trainers", "primus_trainers", "zeus_trainers")


def registered_trainers() -> Dict[str, type]:
    """Every trainer class this folder offers nnU-Net, by name (schedule variants excepted)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    trainers = {}
    for module_name in TRAINER_MODULES:
        module = importlib.import_module(f"{__name__}.{module_name}")
        for name, value in vars(module).items():
            if isinstance(value, type) and issubclass(value, nnUNetTrainer) and value is not nnUNetTrainer:
                trainers[name] = value
    return trainers
