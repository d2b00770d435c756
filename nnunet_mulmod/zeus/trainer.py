"""Zeus trainers: nnU-Net's trainer with the Zeus network (2d configuration, aligned multi-channel datasets).

    nnUNetv2_train DATASET 2d FOLD -tr nnUNetTrainerZeus          # late fusion
    nnUNetv2_train DATASET 2d FOLD -tr nnUNetTrainerZeusHybrid    # hybrid fusion

Everything else is nnU-Net's: planning, preprocessing, augmentation, Dice + CE loss, sliding-window validation and
``nnUNetv2_predict``. What the trainers change:
- ``initialize`` reads the instruction table (``$nnUNet_preprocessed/<Dataset>/zeus_instruction_table.pt`` or
  ``nnUNet_zeus_instruction_table``), checks it covers every (channel modality, class), writes the network spec into
  the plans under ``"zeus"`` (nnU-Net saves the plans into the results folder, where ``nnUNetv2_predict`` finds
  them for the static ``build_network_architecture``) and copies the table rows into the network's persistent
  buffer (the checkpoint is self-contained: prediction needs no table file).
- Deep supervision is off: SAM's decoder has a single output resolution.
- AdamW (lr 3e-4, weight decay 1e-2) with nnU-Net's poly schedule instead of SGD with momentum 0.99, which is
  unstable for the transformer decoder; only trainable parameters are optimised.
- ``nnUNet_zeus_sam_checkpoint=/path/sam_vit_b_01ec64.pth`` replaces the U-Net encoder by SAM's frozen ViT.
"""
from __future__ import annotations

import os

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

from nnunet_mulmod import nnunet_integration
from nnunet_mulmod.modality import class_names as dataset_class_names, get_channel_modalities
from nnunet_mulmod.training.mirroring import nnUNetTrainerNoMirroringIfLateral
from nnunet_mulmod.training.schedules import with_schedule
from nnunet_mulmod.training.unwrap import unwrap_network
from nnunet_mulmod.zeus.instruction_table import default_table_path, load_table, table_rows
from nnunet_mulmod.zeus.modeling.image_encoders import detect_sam_variant, load_sam_image_encoder_weights
from nnunet_mulmod.zeus.network import ZEUS_PLANS_KEY, build_zeus_network, make_spec

SAM_CHECKPOINT_ENV = "nnUNet_zeus_sam_checkpoint"


class nnUNetTrainerZeus(nnUNetTrainerNoMirroringIfLateral):
    """Late fusion: each channel decoded with its own modality's instructions, per-channel logits averaged."""
    zeus_fusion = "late"
    zeus_decoder_dim = 256       # SAM's decoder width
    zeus_decoder_depth = 2       # two-way transformer blocks (SAM, Zeus)
    zeus_decoder_heads = 8
    zeus_decoder_mlp_dim = 2048
    zeus_feature_stride = 8      # U-Net encoder stage fed to the decoder (masks at stride 2, see docs/zeus.md)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False
        self.initial_lr = 3e-4
        self.weight_decay = 1e-2
        self.zeus_sam_checkpoint = os.environ.get(SAM_CHECKPOINT_ENV) or None
        self._zeus_rows = None

    def initialize(self):
        nnunet_integration.install()  # our normalizers (channel modalities may be CT_or_MR) and hooks, checked
        if not self.was_initialized:
            self._write_zeus_spec()
        super().initialize()
        network = self._unwrapped_network()
        with torch.no_grad():
            network.instruction_embeddings.copy_(self._zeus_rows)
        if self.zeus_sam_checkpoint:
            load_sam_image_encoder_weights(network.image_encoder, self.zeus_sam_checkpoint)
        n_trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
        self.print_to_log_file(f"Zeus ({self.zeus_fusion} fusion): {n_trainable / 1e6:.2f}M trainable parameters")

    def _write_zeus_spec(self):
        """Reads the table, checks coverage, and puts the network spec into the plans (see module docstring)."""
        channel_modalities = get_channel_modalities(self.dataset_json)
        classes = dataset_class_names(self.dataset_json)
        used = list(dict.fromkeys(channel_modalities[c] for c in range(len(channel_modalities))))
        table_file = default_table_path(self.preprocessed_dataset_folder_base)
        table = load_table(table_file)
        self._zeus_rows = table_rows(table, used, classes, source=table_file)
        if self.zeus_sam_checkpoint:
            image_encoder = {"type": "sam", "variant": detect_sam_variant(self.zeus_sam_checkpoint),
                             "checkpoint": os.path.abspath(self.zeus_sam_checkpoint)}
        else:
            image_encoder = {"type": "unet"}
        self.plans_manager.plans[ZEUS_PLANS_KEY] = make_spec(
            self.zeus_fusion, channel_modalities, used, classes, self._zeus_rows.shape[-1], image_encoder,
            self.zeus_decoder_dim, self.zeus_decoder_depth, self.zeus_decoder_heads, self.zeus_decoder_mlp_dim,
            self.zeus_feature_stride, table.get("encoder"))
        self.print_to_log_file(f"Zeus instruction table {table_file}: modalities {used} for channels "
                               f"{channel_modalities}, classes {classes}, encoder {table.get('encoder')}")

    def _unwrapped_network(self):
        return unwrap_network(self.network)

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision: bool = False) -> torch.nn.Module:
        return build_zeus_network(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                  "late")

    def set_deep_supervision_enabled(self, enabled: bool):
        pass  # one output resolution; deep supervision is off (see __init__)

    def configure_optimizers(self):
        params = [p for p in self.network.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)


class nnUNetTrainerZeusHybrid(nnUNetTrainerZeus):
    """Hybrid fusion: per-channel embeddings merged (1x1 conv) before one decoder prompted by all channels."""
    zeus_fusion = "hybrid"

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision: bool = False) -> torch.nn.Module:
        return build_zeus_network(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                  "hybrid")


# For smoke tests and the end-to-end test (like nnU-Net's nnUNetTrainer_1epoch): the same classes as
# nnUNetTrainerZeus_1epochs_2it_1val / nnUNetTrainerZeusHybrid_1epochs_2it_1val, under the names docs/zeus.md gives.
nnUNetTrainerZeus_debug = with_schedule(nnUNetTrainerZeus, 1, 2, 1, name="nnUNetTrainerZeus_debug", module=__name__)
nnUNetTrainerZeusHybrid_debug = with_schedule(nnUNetTrainerZeusHybrid, 1, 2, 1, name="nnUNetTrainerZeusHybrid_debug",
                                              module=__name__)
