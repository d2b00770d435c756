"""Found by nnU-Net's trainer search through ``nnUNet_extTrainer``, which ``nnunet_mulmod_demo`` points here."""
from nnunet_mulmod.demo.demo_trainer import nnUNetTrainerMulModSeg_demo  # noqa: F401
