"""MulModSeg trainers for nnU-Net v2, and the baselines of the paper's Tables 1, 2 and 6.

    nnUNetTrainerALT                 vision-only ALT: nnU-Net's network, alternating single-modality batches
    nnUNetTrainerMulModSeg           text-conditioned head (frozen embedding table) + ALT      (the method)
    nnUNetTrainerMulModSegNoALT      text-conditioned head, mixed-modality batches (no ALT)
    nnUNetTrainerMulModSegOneHot     one-hot class+modality codes instead of text embeddings, + ALT
    nnUNetTrainerCTOnly / MROnly     nnU-Net trained on one modality's cases only

One nnU-Net iteration is one batch and one optimizer step, as in nnU-Net: with ALT an epoch's 250
iterations are 125 CT steps and 125 MR steps (round-robin over M modalities in general), so an epoch
costs what a vanilla nnU-Net epoch costs. The paper's "iteration" (one CT step + one MR step) is
M of ours.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Dict, List, Optional

import numpy as np
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgenerators.utilities.file_and_folder_operations import isfile, join
from torch import distributed as dist
from torch import nn
from torch._dynamo import OptimizedModule

from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunet_mulmod.modality import ModalityError, get_modalities, require_case_modalities
from nnunet_mulmod.modeling.backbones import wrap_backbone
from nnunet_mulmod.modeling.mulmodseg_net import MulModSegNet
from nnunet_mulmod.text.table import TextEmbeddingTable, TextTableError, default_table_path, one_hot_table
from nnunet_mulmod.training.alternating import AlternatingModalityLoader
from nnunet_mulmod.training.modality_classifier import ModalityClassifierFitter

# Key under which the trainer records the head's shape in the plans. nnU-Net saves the plans into the
# results folder (plans.json) and the predictor rebuilds the network from them with the static
# build_network_architecture, which sees nothing else: this is how prediction knows the table's shape.
PLANS_KEY = "mulmodseg"
TABLE_COPY_FILENAME = "mulmod_text_table.pt"


def unwrap_network(network: nn.Module) -> nn.Module:
    """The module itself, without DDP / torch.compile wrappers."""
    if isinstance(network, nn.parallel.DistributedDataParallel):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network


class nnUNetTrainerALT(nnUNetTrainer):
    """Alternating training (ALT) with nnU-Net's own network: the paper's vision-only baseline."""

    alternate_modalities = True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.modalities: List[str] = get_modalities(dataset_json)
        self.modality_to_index: Dict[str, int] = {m: i for i, m in enumerate(self.modalities)}
        self.case_modalities: Dict[str, str] = {}  # filled for the cases of the split (get_dataloaders)
        self.training_modality_indices: List[int] = []  # modalities of the training cases (get_dataloaders)
        if self.alternate_modalities:
            for m in self.modalities:
                self.logger.local_logger.my_fantastic_logging.setdefault(f"train_loss_{m}", [])

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
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)

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

        patch_size = self.configuration_manager.patch_size
        deep_supervision_scales = self._get_deep_supervision_scales()
        rotation_for_DA, do_dummy_2d_data_aug, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        label_kwargs = dict(is_cascaded=self.is_cascaded, foreground_labels=self.label_manager.foreground_labels,
                            regions=self.label_manager.foreground_regions if self.label_manager.has_regions else None,
                            ignore_label=self.label_manager.ignore_label)
        tr_transforms = self.get_training_transforms(
            patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes, do_dummy_2d_data_aug,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm, **label_kwargs)
        val_transforms = self.get_validation_transforms(deep_supervision_scales, **label_kwargs)

        def loader(keys, sample_size, transforms):
            dataset = self.dataset_class(self.preprocessed_dataset_folder, keys,
                                         folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)
            return nnUNetDataLoader(dataset, self.batch_size, sample_size, patch_size, self.label_manager,
                                    oversample_foreground_percent=self.oversample_foreground_percent,
                                    sampling_probabilities=None, pad_sides=None, transforms=transforms,
                                    probabilistic_oversampling=self.probabilistic_oversampling)

        n_proc = get_allowed_n_proc_DA()
        pin = self.device.type == "cuda"

        def augmenter(data_loader, processes, cached):
            if n_proc == 0:
                return SingleThreadedAugmenter(data_loader, None)
            return NonDetMultiThreadedAugmenter(data_loader=data_loader, transform=None, num_processes=processes,
                                                num_cached=cached, seeds=None, pin_memory=pin, wait_time=0.002)

        # nnU-Net's workers are shared out over the modality streams
        per_stream = max(1, n_proc // len(present))
        streams = [augmenter(loader(keys_by_modality[m], initial_patch_size, tr_transforms), per_stream,
                             max(3, per_stream)) for m in present]
        val = augmenter(loader(val_keys, patch_size, val_transforms), max(1, n_proc // 2), max(3, n_proc // 4))
        train = AlternatingModalityLoader(streams, [self.modality_to_index[m] for m in present])
        for _ in present:  # start every stream's workers, as nnU-Net does for its loaders
            next(train)
        next(val)
        return train, val

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


class nnUNetTrainerMulModSeg(nnUNetTrainerALT):
    """MulModSeg: frozen modality-conditioned text embeddings -> controller -> dynamic head, trained with ALT.

    The embedding table is read from ``$nnUNet_preprocessed/<dataset>/mulmod_text_table.pt`` (or the file
    named by ``nnUNet_mulmod_text_table``), checked against dataset.json, copied into the results folder
    and stored in every checkpoint as a network buffer.
    """

    controller_hidden = 256
    # 2: layer-normalised controller inputs + hypernetwork fan-in init (MulModSegController); 1: the authors' layout
    controller_version = 2

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.text_table = self.load_text_table()
        self.plans_manager.plans[PLANS_KEY] = {
            "modalities": list(self.text_table.modalities),
            "class_names": list(self.text_table.class_names),
            "embed_dim": self.text_table.embed_dim,
            "controller_hidden": self.controller_hidden,
            "controller_version": self.controller_version,
            "text_table": {"template": self.text_table.template, "template_text": self.text_table.template_text,
                           "encoder": self.text_table.encoder},
        }
        self.logger.local_logger.my_fantastic_logging.setdefault("val_modality_accuracy", [])

    # ------------------------------------------------------------------ the table
    def _table_copy_path(self) -> Optional[str]:
        return join(self.output_folder_base, TABLE_COPY_FILENAME) if self.output_folder_base else None

    def load_text_table(self) -> TextEmbeddingTable:
        """The run's own copy if it has one (resuming keeps its table), else the dataset's table."""
        copy = self._table_copy_path()
        if copy is not None and isfile(copy):
            table, source = TextEmbeddingTable.load(copy), copy
        else:
            if self.preprocessed_dataset_folder_base is None:
                raise TextTableError("nnUNet_preprocessed is not set: cannot find the text-embedding table.")
            source = default_table_path(self.preprocessed_dataset_folder_base)
            table = TextEmbeddingTable.load(source)
        table.check_matches(self.dataset_json, source=source)
        self.print_to_log_file(f"Text embeddings: {source} ({table.template} '{table.template_text}', "
                               f"encoder {table.encoder}, {len(table.modalities)} x {len(table.class_names)} x "
                               f"{table.embed_dim})")
        return table

    # ------------------------------------------------------------------ network
    @classmethod
    def build_backbone(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                       num_input_channels: int, num_output_channels: int,
                       enable_deep_supervision: bool = True) -> nn.Module:
        """The network the head is put on: whatever the next nnU-Net trainer in the class's MRO builds (the plans'
        U-Net for nnUNetTrainer; Primus for nnUNetTrainerMulModSegPrimus, which also extends nnU-Net's Primus
        trainer)."""
        return super(nnUNetTrainerMulModSeg, cls).build_network_architecture(
            plans_manager, configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision)

    # a classmethod, not nnU-Net's staticmethod, so that a subclass's MRO picks the backbone; nnU-Net calls it on the
    # class (predictor) and on the instance (initialize) with the same arguments, which a classmethod takes alike
    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        spec = plans_manager.plans.get(PLANS_KEY)
        if spec is None:
            raise RuntimeError(
                f"These plans have no '{PLANS_KEY}' section, which the MulModSeg trainer writes into the "
                f"plans.json of its results folder. Use the plans.json of a MulModSeg results folder.")
        if len(spec["class_names"]) != num_output_channels:
            raise RuntimeError(f"The MulModSeg head has {len(spec['class_names'])} classes but the network needs "
                               f"{num_output_channels} outputs (region-based training is not supported).")
        backbone = cls.build_backbone(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                      enable_deep_supervision)
        # plans written before controller_version existed describe the authors' layout (version 1)
        return wrap_backbone(backbone, spec["modalities"], num_output_channels, spec["embed_dim"],
                             spec["controller_hidden"], normalized_controller=spec.get("controller_version", 1) >= 2,
                             context=f" (plans {plans_manager.plans_name!r}, whose network_class_name is "
                                     f"{configuration_manager.network_arch_class_name!r})")

    def mulmod_network(self) -> MulModSegNet:
        return unwrap_network(self.network)

    def initialize(self):
        super().initialize()
        self.mulmod_network().set_text_embeddings(self.text_table.embeddings)
        # remade in on_train_start for the modalities the training cases have
        self.modality_fitter = ModalityClassifierFitter(self.mulmod_network().modality_classifier,
                                                        range(len(self.modalities)))

    def _modality_context(self, indices: torch.Tensor):
        return self.mulmod_network().using_modality(indices)

    def on_train_start(self):
        super().on_train_start()  # builds the data loaders: the training cases' modalities are known from here on
        copy = self._table_copy_path()
        if self.local_rank == 0 and copy is not None and not isfile(copy):
            self.text_table.save(copy)
        self.modality_fitter = ModalityClassifierFitter(self.mulmod_network().modality_classifier,
                                                        self.training_modality_indices)

    def train_step(self, batch: dict) -> dict:
        result = super().train_step(batch)
        core = self.mulmod_network()
        features, indices = core.last_pooled, core.last_modality_indices
        if self.is_ddp:  # every rank fits the same classifier on the same evidence
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (features.cpu(), indices.cpu()))
            features = torch.cat([g[0] for g in gathered]).to(features.device)
            indices = torch.cat([g[1] for g in gathered]).to(features.device)
        self.modality_fitter.update(features, indices)
        return result

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict) -> dict:
        result = super().validation_step(batch)
        core = self.mulmod_network()
        indices = self._case_modality_indices(batch["keys"])
        # how often the classifier, used for auto-detection at prediction, would have been right
        predicted = core.last_modality_logits.argmax(1).cpu()
        result["modality_correct"] = int((predicted == indices).sum())
        result["modality_total"] = int(indices.numel())
        return result

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        super().on_validation_epoch_end(val_outputs)
        correct = sum(o["modality_correct"] for o in val_outputs)
        total = sum(o["modality_total"] for o in val_outputs)
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (correct, total))
            correct, total = sum(g[0] for g in gathered), sum(g[1] for g in gathered)
        accuracy = correct / max(total, 1)
        self.logger.log("val_modality_accuracy", accuracy, self.current_epoch)
        self.print_to_log_file(f"modality classifier accuracy (validation patches): {accuracy:.4f}")

    def perform_actual_validation(self, save_probabilities: bool = False):
        """nnU-Net's validation, with each case predicted using its own modality's prompts.

        nnU-Net loads each validation case with ``dataset_class.load_case(key)`` right before predicting it;
        a subclass of the dataset class that selects the case's modality at that moment is all it takes.
        """
        core = self.mulmod_network()
        trainer = self
        original_dataset_class = self.dataset_class or infer_dataset_class(self.preprocessed_dataset_folder)

        class DatasetSelectingModality(original_dataset_class):
            def load_case(self, identifier):
                loaded = super().load_case(identifier)
                modality = trainer._case_modality_indices([identifier])[0].item()
                core.selected_modality = modality
                trainer.print_to_log_file(f"{identifier}: modality {trainer.modalities[modality]} "
                                          f"(dataset.json case_modalities)")
                return loaded

        self.dataset_class = DatasetSelectingModality
        try:
            super().perform_actual_validation(save_probabilities)
        finally:
            self.dataset_class = original_dataset_class
            core.selected_modality = None


class nnUNetTrainerMulModSegNoALT(nnUNetTrainerMulModSeg):
    """Text-conditioned head trained on mixed-modality batches (nnU-Net's sampling): Table 6's 'text w/o ALT'."""

    alternate_modalities = False


class nnUNetTrainerMulModSegOneHot(nnUNetTrainerMulModSeg):
    """One-hot codes (class one-hot + modality one-hot) instead of text embeddings: Table 1's 'one-hot'."""

    def load_text_table(self) -> TextEmbeddingTable:
        return one_hot_table(self.dataset_json)


class nnUNetTrainerSingleModality(nnUNetTrainer):
    """nnU-Net trained (and validated) on the cases of one modality only; subclasses name the modality."""

    train_modality: Optional[str] = None

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


# nnUNetv2_predict imports the trainer's module (to rebuild the network) before predicting: importing the
# modality selection here makes plain nnUNetv2_predict select each case's modality too.
import nnunet_mulmod.inference.modality_selection  # noqa: E402,F401
