"""MulModSeg and the vision-only ALT baseline on nnU-Net's transformer, Primus (Primus-M, as nnU-Net recommends).

    nnUNetTrainerMulModSegPrimus   text-conditioned head on Primus-M, ALT             -tr nnUNetTrainerMulModSegPrimus
    nnUNetTrainerALTPrimus         Primus-M as nnU-Net builds it, ALT (vision only)   -tr nnUNetTrainerALTPrimus

Each is our trainer and nnU-Net's ``nnUNet_Primus_M_Trainer`` in one class; ours comes first in the MRO, so
its hooks (ALT loaders and steps, text table, modality classifier) run and hand on to Primus's through
``super()``. From nnU-Net's Primus trainer, unchanged: the network (Primus-M: 864-d tokens of 8x8x8 voxels,
16 EVA blocks), AdamW with lr 3e-4 and weight decay 5e-2, 50 epochs of linear warm-up then poly decay,
gradient clipping at 1, no deep supervision, and its patch-size rule (3d, every axis divisible by 8; Primus
asserts it when the network is built). The MulModSeg trainer builds the network through
``build_backbone``, i.e. the next trainer in the MRO: here Primus's build_network_architecture, wrapped by
modeling/primus_net.py. Another size is one more class of the same two bases (e.g. with
``nnUNet_Primus_L_Trainer``).
"""
from nnunetv2.training.nnUNetTrainer.primus.primus_trainers import nnUNet_Primus_M_Trainer

from nnunet_mulmod.training.alt import nnUNetTrainerALT
from nnunet_mulmod.training.mulmodseg import nnUNetTrainerMulModSeg


class nnUNetTrainerMulModSegPrimus(nnUNetTrainerMulModSeg, nnUNet_Primus_M_Trainer):
    """MulModSeg (text-conditioned head + ALT) on Primus-M."""


class nnUNetTrainerALTPrimus(nnUNetTrainerALT, nnUNet_Primus_M_Trainer):
    """ALT with nnU-Net's Primus-M: the vision-only baseline for nnUNetTrainerMulModSegPrimus."""
