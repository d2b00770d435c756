"""MulModSeg trainers, as found by nnU-Net's trainer search (-tr NAME)."""
from nnunet_mulmod.training.mulmodseg_trainer import (  # noqa: F401
    nnUNetTrainerALT,
    nnUNetTrainerCTOnly,
    nnUNetTrainerMROnly,
    nnUNetTrainerMulModSeg,
    nnUNetTrainerMulModSegNoALT,
    nnUNetTrainerMulModSegOneHot,
)
from nnunet_mulmod.training.short_schedules import *  # noqa: F401,F403
from nnunet_mulmod.demo.demo_trainer import nnUNetTrainerMulModSeg_demo  # noqa: F401,E402
