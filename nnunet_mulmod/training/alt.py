"""nnUNetTrainerALT: alternating training (ALT) with nnU-Net's own network, the base of every MulModSeg trainer.

One nnU-Net iteration is one batch and one optimizer step, as in nnU-Net: with ALT an epoch's 250
iterations are 125 CT steps and 125 MR steps (round-robin over M modalities in general), so an epoch
costs what a vanilla nnU-Net epoch costs. The paper's "iteration" (one CT step + one MR step) is
M of ours.

What it adds to nnUNetTrainer: no mirroring when the dataset has left/right classes (training/mirroring.py, the
base of every trainer of the package), the modality tags of the fold's cases checked before nnU-Net's ``__init__``,
nnU-Net's data loaders once per modality, alternated (training/alternating.py), the batch's modality around
nnU-Net's steps (``_modality_context``, which MulModSeg fills in), and the training loss per modality.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Dict, List, Tuple

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json
from torch import distributed as dist

from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_mulmod import nnunet_integration
from nnunet_mulmod.modality import ModalityError, get_modalities, require_case_modalities
from nnunet_mulmod.training.alternating import AlternatingModalityLoader, per_modality_dataloaders
from nnunet_mulmod.training.mirroring import nnUNetTrainerNoMirroringIfLateral


def preprocessed_fold_cases(plans: dict, configuration: str, fold) -> Tuple[List[str], List[str]]:
    """(training, validation) case ids of the fold: the split's if splits_final.json defines the fold, else
    (every preprocessed case, []). Read without creating anything; empty if nothing is preprocessed yet."""
    if not nnUNet_preprocessed.is_set():
        return [], []
    plans_manager = PlansManager(plans)
    base = join(nnUNet_preprocessed, plans_manager.dataset_name)
    folder = join(base, plans_manager.get_configuration(configuration).data_identifier)
    if not isdir(folder):
        return [], []
    splits_file = join(base, "splits_final.json")
    if fold != "all" and isfile(splits_file):
        splits = load_json(splits_file)
        if int(fold) < len(splits):
            return list(splits[int(fold)]["train"]), list(splits[int(fold)]["val"])
    return sorted(infer_dataset_class(folder).get_identifiers(folder)), []


class nnUNetTrainerALT(nnUNetTrainerNoMirroringIfLateral):
    """Alternating training (ALT) with nnU-Net's own network: the paper's vision-only baseline."""

    alternate_modalities = True
    # "equal": every modality gets the same share of the steps (the paper's ALT); "cases": shares proportional
    # to the modality's training cases (each batch still single-modality; training/alternating.py)
    alt_step_shares = "equal"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # nnU-Net's __init__ creates the results folder and the training log: bad input is refused before that
        self.check_inputs(plans, configuration, fold, dataset_json)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.modalities: List[str] = get_modalities(dataset_json)
        self.modality_to_index: Dict[str, int] = {m: i for i, m in enumerate(self.modalities)}
        self.case_modalities: Dict[str, str] = {}  # filled for the cases of the split (get_dataloaders)
        self.training_modality_indices: List[int] = []  # modalities of the training cases (get_dataloaders)
        if self.alternate_modalities:
            for m in self.modalities:
                self.logger.local_logger.my_fantastic_logging.setdefault(f"train_loss_{m}", [])

    def check_inputs(self, plans: dict, configuration: str, fold, dataset_json: dict) -> None:
        """Called before nnU-Net's __init__ (so ``self`` has no attributes yet): the modality tags of the fold's
        cases and, for ALT, that they hold two modalities. Errors are one line naming the file and the fix."""
        dataset_json_file = join(nnUNet_preprocessed.get() or "$nnUNet_preprocessed", plans["dataset_name"],
                                 "dataset.json")
        tr_keys, val_keys = preprocessed_fold_cases(plans, configuration, fold)
        try:
            modalities = get_modalities(dataset_json)
            case_modalities = require_case_modalities(dataset_json, tr_keys + val_keys)
        except ModalityError as e:
            raise ModalityError(f"{dataset_json_file}: {e}") from None
        present = [m for m in modalities if m in {case_modalities[k] for k in tr_keys}]
        if self.alternate_modalities and tr_keys and len(present) < 2:
            raise ModalityError(
                f"{self.__class__.__name__} alternates between modalities (ALT), but every training case of "
                f"{plans['dataset_name']} fold {fold} is {present[0]} ({dataset_json_file}: modalities {modalities}). "
                f"Train a single-modality dataset with nnUNetTrainer, or add cases of a second modality.")

    def initialize(self):
        nnunet_integration.install()  # our normalizers, preprocessor and predictor hook, checked (idempotent)
        super().initialize()

    # ------------------------------------------------------------------ modality of batches
    def _case_modality_indices(self, keys) -> torch.Tensor:
        missing = [k for k in keys if k not in self.case_modalities]
        if missing:
            self.case_modalities.update(require_case_modalities(self.dataset_json, missing))
        return torch.tensor([self.modality_to_index[self.case_modalities[k]] for k in keys], dtype=torch.long)

    def _batch_modality_indices(self, batch: dict) -> torch.Tensor:
        indices = self._case_modality_indices(batch["keys"])
        if "modality" in batch and not bool((indices == batch["modality"]).all()):
            raise RuntimeError(f"ALT batch from the {self.modalities[batch['modality']]} stream holds cases "
                               f"{list(batch['keys'])} of other modalities; this is a bug in nnunet-mulmod.")
        return indices

    def _modality_context(self, indices: torch.Tensor):
        """Tells the network the batch's modalities; the vision-only network needs nothing."""
        return nullcontext()

    # ------------------------------------------------------------------ data
    def get_dataloaders(self):
        tr_keys, val_keys = self.do_split()
        self.case_modalities = require_case_modalities(self.dataset_json, list(tr_keys) + list(val_keys))
        self.training_modality_indices = sorted({self.modality_to_index[self.case_modalities[k]] for k in tr_keys})
        if not self.alternate_modalities:
            return super().get_dataloaders()
        keys_by_modality = {m: [k for k in tr_keys if self.case_modalities[k] == m] for m in self.modalities}
        present = [m for m in self.modalities if keys_by_modality[m]]
        absent = [m for m in self.modalities if not keys_by_modality[m]]
        if len(present) < 2:
            raise ModalityError(
                f"ALT alternates between modalities, but the training cases of fold {self.fold} are all "
                f"{present[0] if present else '(none)'} (dataset modalities: {self.modalities}). Train on a "
                f"dataset/split with at least two modalities, or use nnUNetTrainer for a single modality.")
        if absent:
            self.print_to_log_file(f"WARNING: no training cases of modalities {absent} in fold {self.fold}; "
                                   f"ALT alternates over {present} only.")
        self.print_to_log_file("ALT training cases per modality: " +
                               ", ".join(f"{m}: {len(keys_by_modality[m])}" for m in present))

        # nnU-Net's own data-loader setup, once per modality (training/alternating.py)
        streams, val = per_modality_dataloaders(super().get_dataloaders, self,
                                                [keys_by_modality[m] for m in present], val_keys)
        if self.alt_step_shares not in ("equal", "cases"):
            raise ValueError(f"{self.__class__.__name__}.alt_step_shares must be 'equal' or 'cases', "
                             f"not {self.alt_step_shares!r}")
        weights = [len(keys_by_modality[m]) for m in present] if self.alt_step_shares == "cases" else None
        loader = AlternatingModalityLoader(streams, [self.modality_to_index[m] for m in present], weights=weights)
        self.print_to_log_file(f"ALT step shares ({self.alt_step_shares}): " + ", ".join(
            f"{m} {loader.pattern.count(i) / len(loader.pattern):.0%}" for i, m in enumerate(present)))
        return loader, val

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        if isinstance(self.dataloader_train, AlternatingModalityLoader):
            # derived from the global step: resumption and DDP ranks continue the same alternation
            self.dataloader_train.position = self.current_epoch * self.num_iterations_per_epoch
            self.print_to_log_file(f"ALT position {self.dataloader_train.position}: this epoch starts with "
                                   f"{self.modalities[self.dataloader_train.next_modality()]}")

    def on_train_end(self):
        super().on_train_end()
        if isinstance(self.dataloader_train, AlternatingModalityLoader):
            self.dataloader_train._finish()

    # ------------------------------------------------------------------ steps
    def train_step(self, batch: dict) -> dict:
        indices = self._batch_modality_indices(batch)
        with self._modality_context(indices):
            result = super().train_step(batch)
        result["modality"] = int(indices[0]) if bool((indices == indices[0]).all()) else -1
        return result

    def validation_step(self, batch: dict) -> dict:
        indices = self._batch_modality_indices(batch)
        with self._modality_context(indices):
            return super().validation_step(batch)

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        if not self.alternate_modalities:
            return
        losses = {m: [float(o["loss"]) for o in train_outputs if o["modality"] == i]
                  for i, m in enumerate(self.modalities)}
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, losses)
            losses = {m: sum((g[m] for g in gathered), []) for m in self.modalities}
        for m, values in losses.items():
            value = float(np.mean(values)) if values else float("nan")
            self.logger.log(f"train_loss_{m}", value, self.current_epoch)
        self.print_to_log_file("train_loss per modality: " + ", ".join(
            f"{m} {self.logger.get_value(f'train_loss_{m}', step=-1):.4f}" for m in self.modalities))
