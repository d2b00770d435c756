"""Primus trainers for nnU-Net's trainer search (``-tr nnUNetTrainerMulModSegPrimus`` / ``nnUNetTrainerALTPrimus``).

Only re-exports: the classes live in nnunet_mulmod.training.primus_trainers. Their schedule variants
(``nnUNetTrainerMulModSegPrimus_5epochs`` ...) are answered by mulmodseg_trainers.py like every other's.
"""
from nnunet_mulmod.training.primus_trainers import nnUNetTrainerALTPrimus, nnUNetTrainerMulModSegPrimus

__all__ = ["nnUNetTrainerMulModSegPrimus", "nnUNetTrainerALTPrimus"]
