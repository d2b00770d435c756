"""nnUNetTrainerMulModSeg: the text-conditioned head (frozen embedding table -> controller -> dynamic head) on
the plans' network, trained with ALT (nnUNetTrainerALT, training/alt.py).

Its variants that change one thing are in training/variants/ (ablations.py: no ALT, one-hot codes;
controller.py: the authors' controller), on Primus in training/primus_trainers.py.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from batchgenerators.utilities.file_and_folder_operations import isfile, join
from torch import distributed as dist
from torch import nn

from nnunetv2.paths import nnUNet_preprocessed, nnUNet_results
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.utilities.file_path_utilities import get_output_folder
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunet_mulmod import nnunet_integration
from nnunet_mulmod.modeling.backbones import check_backbone, plans_context, wrap_backbone
from nnunet_mulmod.modeling.mulmodseg_net import MulModSegNet
from nnunet_mulmod.text.table import TextEmbeddingTable, TextTableError, default_table_path
from nnunet_mulmod.training.alt import nnUNetTrainerALT
from nnunet_mulmod.training.modality_classifier import ModalityClassifierFitter
from nnunet_mulmod.training.unwrap import unwrap_network

# Key under which the trainer records the head's shape in the plans. nnU-Net saves the plans into the
# results folder (plans.json) and the predictor rebuilds the network from them with the static
# build_network_architecture, which sees nothing else: this is how prediction knows the table's shape.
PLANS_KEY = "mulmodseg"
TABLE_COPY_FILENAME = "mulmod_text_table.pt"


class nnUNetTrainerMulModSeg(nnUNetTrainerALT):
    """MulModSeg: frozen modality-conditioned text embeddings -> controller -> dynamic head, trained with ALT.

    The embedding table is read from ``$nnUNet_preprocessed/<dataset>/mulmod_text_table.pt`` (or the file
    named by ``nnUNet_mulmod_text_table``), checked against dataset.json, copied into the results folder
    and stored in every checkpoint as a network buffer.
    """

    controller_hidden = 256
    # 2: layer-normalised controller inputs + hypernetwork fan-in init (MulModSegController); 1: the authors' layout
    controller_version = 2
    # patches of every modality in the classifier's memory before it is first fitted (automatic detection
    # refuses a classifier that was never fitted)
    modality_classifier_min_evidence = 32

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)  # check_inputs loads self.text_table
        self.print_to_log_file(f"Text embeddings: {self.text_table_source} ({self.text_table.template} "
                               f"'{self.text_table.template_text}', encoder {self.text_table.encoder}, "
                               f"{len(self.text_table.modalities)} x {len(self.text_table.class_names)} x "
                               f"{self.text_table.embed_dim})")
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

    def check_inputs(self, plans: dict, configuration: str, fold, dataset_json: dict) -> None:
        self.text_table, self.text_table_source = self.load_text_table(plans, configuration, dataset_json)
        super().check_inputs(plans, configuration, fold, dataset_json)
        check_backbone(type(self), plans, configuration, dataset_json)  # a network the head cannot go on

    def load_text_table(self, plans: dict, configuration: str, dataset_json: dict):
        """(table in the dataset's modality and class order, where it came from). The run's own copy if it has
        one (resuming keeps its table), else the dataset's table. Runs before nnU-Net's __init__."""
        from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id

        fix = f"nnunet_mulmod_build_text_table -d {convert_dataset_name_to_id(plans['dataset_name'])}"
        results = get_output_folder(plans["dataset_name"], self.__class__.__name__, plans["plans_name"],
                                    configuration) if nnUNet_results.is_set() else None
        copy = join(results, TABLE_COPY_FILENAME) if results else None
        if copy is not None and isfile(copy):
            source = copy
        elif not nnUNet_preprocessed.is_set():
            raise TextTableError("nnUNet_preprocessed is not set: cannot find the text-embedding table. "
                                 "export nnUNet_preprocessed=/path/to/nnUNet_preprocessed.")
        else:
            source = default_table_path(join(nnUNet_preprocessed.get(), plans["dataset_name"]))
        try:
            table = TextEmbeddingTable.load(source).aligned_to(dataset_json, source=source)
        except TextTableError as e:  # the messages say '<dataset id>': give the user the exact command
            raise TextTableError(str(e).replace("nnunet_mulmod_build_text_table -d <dataset id>", fix)) from None
        return table, source

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
        # nnUNetv2_predict rebuilds the network with this before it predicts: the predictor hook is installed here
        nnunet_integration.install()
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
                             context=plans_context(plans_manager, configuration_manager))

    def mulmod_network(self) -> MulModSegNet:
        return unwrap_network(self.network)

    def initialize(self):
        super().initialize()
        self.mulmod_network().set_text_embeddings(self.text_table.embeddings)
        # remade in on_train_start for the modalities the training cases have
        self.modality_fitter = self._modality_fitter(range(len(self.modalities)))

    def _modality_context(self, indices: torch.Tensor):
        return self.mulmod_network().using_modality(indices)

    def on_train_start(self):
        super().on_train_start()  # builds the data loaders: the training cases' modalities are known from here on
        copy = self._table_copy_path()
        if self.local_rank == 0 and copy is not None and not isfile(copy):
            self.text_table.save(copy)
        self.modality_fitter = self._modality_fitter(self.training_modality_indices)

    def _modality_fitter(self, modalities) -> ModalityClassifierFitter:
        # a schedule too short to collect the full evidence (ALT gives each modality an equal share of the
        # steps, one patch per sample) fits on half of what it will see, so every schedule ends fitted
        modalities = list(modalities)
        evidence_per_modality = self.num_epochs * self.num_iterations_per_epoch * self.batch_size // len(modalities)
        min_evidence = max(1, min(self.modality_classifier_min_evidence, evidence_per_modality // 2))
        return ModalityClassifierFitter(self.mulmod_network().modality_classifier, modalities,
                                        min_per_modality=min_evidence)

    def train_step(self, batch: dict) -> dict:
        result = super().train_step(batch)
        core = self.mulmod_network()
        features, indices = core.last_modality_features, core.last_modality_indices
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
        original_dataset_class = self.dataset_class or infer_dataset_class(self.preprocessed_dataset_folder)

        def select_modality(identifier):
            modality = self._case_modality_indices([identifier])[0].item()
            core.selected_modality = modality
            self.print_to_log_file(f"{identifier}: modality {self.modalities[modality]} "
                                   f"(dataset.json case_modalities)")

        self.dataset_class = nnunet_integration.dataset_class_calling_on_load(original_dataset_class, select_modality)
        try:
            super().perform_actual_validation(save_probabilities)
        finally:
            self.dataset_class = original_dataset_class
            core.selected_modality = None
