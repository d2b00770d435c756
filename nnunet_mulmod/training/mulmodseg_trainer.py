"""MulModSeg trainers for nnU-Net v2, and the baselines of the paper's Tables 1, 2 and 6: the names, in one place.

    nnUNetTrainerALT                 vision-only ALT: nnU-Net's network, alternating single-modality batches
                                     (training/alt.py)
    nnUNetTrainerMulModSeg           text-conditioned head (frozen embedding table) + ALT      (training/mulmodseg.py)
    nnUNetTrainerMulModSegNoALT      text-conditioned head, mixed-modality batches (no ALT)
    nnUNetTrainerMulModSegPropALT    text-conditioned head, ALT with step shares proportional to the cases
    nnUNetTrainerMulModSegOneHot     one-hot class+modality codes instead of text embeddings, + ALT
    nnUNetTrainerMulModSegMirroring  nnU-Net's mirroring even with left/right classes (the others do not mirror then)
                                                                                     (training/variants/ablations.py)
    nnUNetTrainerCTOnly / MROnly     nnU-Net trained on one modality's cases only (training/variants/single_modality.py)

This module only re-exports them (and the constants) from where they live, laid out as nnU-Net's
training/nnUNetTrainer/variants/: ``from nnunet_mulmod.training.mulmodseg_trainer import nnUNetTrainerMulModSeg``
keeps working for code, scripts and notes written before the split. nnU-Net finds trainers by class name
(checkpoints record ``trainer_name``), so the names never change.
"""
from nnunet_mulmod.training.alt import nnUNetTrainerALT, preprocessed_fold_cases
from nnunet_mulmod.training.mulmodseg import PLANS_KEY, TABLE_COPY_FILENAME, nnUNetTrainerMulModSeg
from nnunet_mulmod.training.unwrap import unwrap_network
from nnunet_mulmod.training.variants.ablations import (nnUNetTrainerMulModSegMirroring, nnUNetTrainerMulModSegNoALT,
                                                       nnUNetTrainerMulModSegOneHot, nnUNetTrainerMulModSegPropALT)
from nnunet_mulmod.training.variants.single_modality import (nnUNetTrainerCTOnly, nnUNetTrainerMROnly,
                                                             nnUNetTrainerSingleModality)

__all__ = ["PLANS_KEY", "TABLE_COPY_FILENAME", "preprocessed_fold_cases", "unwrap_network", "nnUNetTrainerALT",
           "nnUNetTrainerMulModSeg", "nnUNetTrainerMulModSegNoALT", "nnUNetTrainerMulModSegOneHot",
           "nnUNetTrainerMulModSegPropALT", "nnUNetTrainerMulModSegMirroring", "nnUNetTrainerSingleModality", "nnUNetTrainerCTOnly",
           "nnUNetTrainerMROnly"]
