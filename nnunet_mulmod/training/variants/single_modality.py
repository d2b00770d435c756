"""The single-modality baselines of the paper's Table 2: nnU-Net trained on one modality's cases only."""
from typing import Optional

import torch
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.paths import nnUNet_preprocessed

from nnunet_mulmod import nnunet_integration
from nnunet_mulmod.modality import ModalityError, get_modalities, require_case_modalities
from nnunet_mulmod.training.alt import preprocessed_fold_cases
from nnunet_mulmod.training.mirroring import nnUNetTrainerNoMirroringIfLateral


class nnUNetTrainerSingleModality(nnUNetTrainerNoMirroringIfLateral):
    """nnU-Net trained (and validated) on the cases of one modality only; subclasses name the modality. Mirrors as
    the multi-modal trainers do (training/mirroring.py)."""

    train_modality: Optional[str] = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # nnU-Net's __init__ creates the results folder: a dataset without this modality is refused before that
        self.check_inputs(plans, configuration, fold, dataset_json)
        super().__init__(plans, configuration, fold, dataset_json, device)

    def check_inputs(self, plans: dict, configuration: str, fold, dataset_json: dict) -> None:
        dataset_json_file = join(nnUNet_preprocessed.get() or "$nnUNet_preprocessed", plans["dataset_name"],
                                 "dataset.json")
        modalities = get_modalities(dataset_json)
        if self.train_modality not in modalities:
            raise ModalityError(f"{self.__class__.__name__} trains on modality {self.train_modality!r}, which "
                                f"{plans['dataset_name']} does not have ({dataset_json_file}: modalities "
                                f"{modalities}). Use the trainer of a modality it has, or nnUNetTrainer.")
        tr_keys, val_keys = preprocessed_fold_cases(plans, configuration, fold)
        try:
            case_modalities = require_case_modalities(dataset_json, tr_keys + val_keys)
        except ModalityError as e:
            raise ModalityError(f"{dataset_json_file}: {e}") from None
        if tr_keys and not any(case_modalities[k] == self.train_modality for k in tr_keys):
            raise ModalityError(f"{self.__class__.__name__}: no training case of {plans['dataset_name']} fold "
                                f"{fold} is {self.train_modality} ({dataset_json_file}). Pick a fold (or a "
                                f"splits_final.json) with {self.train_modality} training cases.")

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
