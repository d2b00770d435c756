"""The single-modality baselines of the paper's Table 2: nnU-Net trained on one modality's cases only."""
from typing import Optional

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mulmod import nnunet_integration
from nnunet_mulmod.modality import ModalityError, get_modalities, require_case_modalities


class nnUNetTrainerSingleModality(nnUNetTrainer):
    """nnU-Net trained (and validated) on the cases of one modality only; subclasses name the modality."""

    train_modality: Optional[str] = None

    def initialize(self):
        nnunet_integration.install()
        super().initialize()

    def do_split(self):
        tr_keys, val_keys = super().do_split()
        if self.train_modality not in get_modalities(self.dataset_json):
            raise ModalityError(f"{self.__class__.__name__} trains on modality {self.train_modality!r}, which "
                                f"this dataset does not have ({get_modalities(self.dataset_json)}).")
        case_modalities = require_case_modalities(self.dataset_json, list(tr_keys) + list(val_keys))
        tr_keys = [k for k in tr_keys if case_modalities[k] == self.train_modality]
        val_keys = [k for k in val_keys if case_modalities[k] == self.train_modality]
        if not tr_keys or not val_keys:
            raise ModalityError(f"Fold {self.fold} has {len(tr_keys)} training and {len(val_keys)} validation "
                                f"cases of modality {self.train_modality}; both must be > 0.")
        self.print_to_log_file(f"{self.train_modality} only: {len(tr_keys)} training, {len(val_keys)} validation cases")
        return tr_keys, val_keys


class nnUNetTrainerCTOnly(nnUNetTrainerSingleModality):
    train_modality = "CT"


class nnUNetTrainerMROnly(nnUNetTrainerSingleModality):
    train_modality = "MR"
