"""Ablations of nnUNetTrainerMulModSeg (the paper's Tables 1 and 6, and the recipe study): each changes one thing."""
from nnunet_mulmod.text.table import one_hot_table
from nnunet_mulmod.training.mulmodseg import nnUNetTrainerMulModSeg


class nnUNetTrainerMulModSegNoALT(nnUNetTrainerMulModSeg):
    """Text-conditioned head trained on mixed-modality batches (nnU-Net's sampling): Table 6's 'text w/o ALT'."""

    alternate_modalities = False


class nnUNetTrainerMulModSegPropALT(nnUNetTrainerMulModSeg):
    """Case-proportional ALT: single-modality batches, each modality's share of the steps = its share of the
    training cases (nnU-Net's mixed sampling gives the same shares); the paper's ALT gives equal shares."""

    alt_step_shares = "cases"


class nnUNetTrainerMulModSegOneHot(nnUNetTrainerMulModSeg):
    """One-hot codes (class one-hot + modality one-hot) instead of text embeddings: Table 1's 'one-hot'."""

    def load_text_table(self, plans: dict, configuration: str, dataset_json: dict):
        return one_hot_table(dataset_json), "one-hot codes"


class nnUNetTrainerMulModSegMirroring(nnUNetTrainerMulModSeg):
    """nnU-Net's mirroring (training and test time) even when classes are left/right-specific: the recipe until
    2026-12-07, and what nnUNetTrainer does (training/mirroring.py)."""

    mirroring = "on"
