"""MulModSeg trainers, as found by nnU-Net's trainer search (-tr NAME), and their schedule variants."""
from nnunet_mulmod.training.mulmodseg_trainer import (  # noqa: F401
    nnUNetTrainerALT,
    nnUNetTrainerCTOnly,
    nnUNetTrainerMROnly,
    nnUNetTrainerMulModSeg,
    nnUNetTrainerMulModSegMirroring,
    nnUNetTrainerMulModSegNoALT,
    nnUNetTrainerMulModSegOneHot,
    nnUNetTrainerMulModSegPropALT,
)
from nnunet_mulmod.training.variants.controller import nnUNetTrainerMulModSegV1Controller  # noqa: F401
from nnunet_mulmod.demo.demo_trainer import nnUNetTrainerMulModSeg_demo  # noqa: F401,E402


def __getattr__(name: str):
    # nnU-Net's search asks every module for the name (hasattr): answer schedule names such as
    # nnUNetTrainerMulModSeg_40epochs_100it with a class made for them (nnunet_mulmod/training/schedules.py)
    from nnunet_mulmod.training.schedules import trainer_class_for_name
    cls = trainer_class_for_name(name) if not name.startswith("__") else None
    if cls is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return cls
