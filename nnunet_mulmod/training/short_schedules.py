"""Shorter schedules of the MulModSeg trainers and baselines, in nnU-Net's naming style (_NNepochs).

Useful for quick first runs and for the demo; the class name (and so the results folder) says the
schedule, as with nnU-Net's own nnUNetTrainer_5epochs etc.
"""
import torch

from nnunet_mulmod.training.mulmodseg_trainer import (
    nnUNetTrainerALT, nnUNetTrainerCTOnly, nnUNetTrainerMROnly, nnUNetTrainerMulModSeg,
    nnUNetTrainerMulModSegNoALT, nnUNetTrainerMulModSegOneHot)

_BASES = (nnUNetTrainerMulModSeg, nnUNetTrainerALT, nnUNetTrainerMulModSegNoALT, nnUNetTrainerMulModSegOneHot,
          nnUNetTrainerCTOnly, nnUNetTrainerMROnly)
_EPOCHS = (5, 10, 50, 100, 250)

__all__ = []


def _with_epochs(base, epochs):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        base.__init__(self, plans, configuration, fold, dataset_json, device)
        self.num_epochs = epochs

    name = f"{base.__name__}_{epochs}epochs"
    return type(name, (base,), {"__init__": __init__, "__module__": __name__, "__qualname__": name})


for _base in _BASES:
    for _epochs in _EPOCHS:
        _cls = _with_epochs(_base, _epochs)
        globals()[_cls.__name__] = _cls
        __all__.append(_cls.__name__)
