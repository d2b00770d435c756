"""Zeus trainers for nnU-Net's trainer search (``-tr nnUNetTrainerZeus`` / ``nnUNetTrainerZeusHybrid``).

Only re-exports: the classes live in nnunet_mulmod.zeus.trainer (see there and docs/zeus.md).
"""
from nnunet_mulmod.zeus.trainer import (nnUNetTrainerZeus, nnUNetTrainerZeus_debug, nnUNetTrainerZeusHybrid,
                                        nnUNetTrainerZeusHybrid_debug)

__all__ = ["nnUNetTrainerZeus", "nnUNetTrainerZeusHybrid", "nnUNetTrainerZeus_debug", "nnUNetTrainerZeusHybrid_debug"]
