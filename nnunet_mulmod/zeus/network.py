"""The Zeus network for aligned multi-channel 2D images: image encoder + instruction-prompted SAM mask decoder.

Every input channel is one aligned modality. The channel's image goes through one shared image encoder (the
paper uses one frozen SAM encoder for all modalities); each class's instruction embedding for the channel's
modality, projected by a trainable linear layer to the decoder width, is the only sparse prompt; the decoder
returns one mask per class (one decoder pass per (sample, class), batched), background included, so nnU-Net's
softmax Dice + CE and argmax work unchanged.

- late fusion: every channel is decoded with its own modality's instructions; the per-channel logits are averaged.
- hybrid fusion: the per-channel embeddings are concatenated and merged by a 1x1 conv + LayerNorm2d before one
  decoder pass whose prompt holds every channel's instruction for the class (one token per channel).

The decoder's masks have a quarter of the embedding's stride (two transposed convs); they are bilinearly resized
to the input patch size, so loss, sliding window and export are nnU-Net's own.

The instruction embeddings live in the network as the persistent buffer ``instruction_embeddings`` [M, K, T]
(rows: the modalities used by the channels), so checkpoints are self-contained. Everything the static builder
needs to recreate the architecture is the ``zeus`` entry of the plans (``ZEUS_PLANS_KEY``), which the trainer
writes and nnU-Net copies into the results folder's plans.json.
"""
from __future__ import annotations

from typing import List, Mapping

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom
from torch import nn

from nnunet_mulmod.zeus.modeling import InstructionMaskDecoder, SamViTFeatureEncoder, UNetFeatureEncoder
from nnunet_mulmod.zeus.modeling.image_encoders import SAM_EMBED_DIM
from nnunet_mulmod.zeus.modeling.layer_norm import use_fp32_layer_norms

ZEUS_PLANS_KEY = "zeus"
FUSIONS = ("late", "hybrid")


class ZeusSpecError(ValueError):
    """The plans hold no (or an inconsistent) Zeus network spec."""


class ZeusNetwork(nn.Module):
    def __init__(self, image_encoder: nn.Module, fusion: str, channel_modality_index: List[int],
                 num_modalities: int, num_classes: int, text_dim: int, dim: int = 256, depth: int = 2,
                 num_heads: int = 8, mlp_dim: int = 2048):
        super().__init__()
        if fusion not in FUSIONS:
            raise ZeusSpecError(f"Unknown fusion {fusion!r}; choose one of {FUSIONS} "
                                f"(early fusion is vanilla nnU-Net).")
        self.fusion = fusion
        self.channel_modality_index = [int(i) for i in channel_modality_index]
        self.num_classes = num_classes
        self.image_encoder = image_encoder
        self.register_buffer("instruction_embeddings", torch.zeros(num_modalities, num_classes, text_dim))
        self.prompt_projection = nn.Linear(text_dim, dim)
        self.pe_layer = PositionEmbeddingRandom(dim // 2)
        self.decoder = InstructionMaskDecoder(dim, depth, num_heads, mlp_dim)
        n_channels = len(self.channel_modality_index)
        self.feature_fusion = (nn.Sequential(nn.Conv2d(n_channels * dim, dim, 1, bias=False), LayerNorm2d(dim))
                               if fusion == "hybrid" else None)
        use_fp32_layer_norms(self)  # SAM's LayerNorm2d overflows under nnU-Net's fp16 autocast (see layer_norm.py)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if c != len(self.channel_modality_index):
            raise ValueError(f"Zeus network built for {len(self.channel_modality_index)} channels got {c}.")
        features = self.image_encoder(x.reshape(b * c, 1, h, w))  # shared encoder, channels batched
        d, fh, fw = features.shape[1:]
        image_pe = self.pe_layer((fh, fw))
        prompts = self.prompt_projection(self.instruction_embeddings)[self.channel_modality_index]  # [C, K, D]
        if self.fusion == "late":
            tokens = prompts.unsqueeze(0).expand(b, -1, -1, -1).reshape(b * c, self.num_classes, 1, d)
            masks = self.decoder(features, image_pe, tokens)
            masks = masks.reshape(b, c, *masks.shape[1:]).mean(1)
        else:
            fused = self.feature_fusion(features.reshape(b, c * d, fh, fw))
            tokens = prompts.transpose(0, 1).unsqueeze(0).expand(b, -1, -1, -1)  # [B, K, C tokens, D]
            masks = self.decoder(fused, image_pe, tokens)
        return F.interpolate(masks, (h, w), mode="bilinear", align_corners=False)


def make_spec(fusion: str, channel_modalities: Mapping[int, str], modalities: List[str], class_names: List[str],
              text_dim: int, image_encoder: Mapping, dim: int = 256, depth: int = 2, num_heads: int = 8,
              mlp_dim: int = 2048, feature_stride: int = 8, table_encoder: Mapping = None) -> dict:
    """The plans entry from which ``build_zeus_network`` rebuilds the architecture (JSON-serialisable)."""
    return {"fusion": fusion, "channel_modalities": [channel_modalities[i] for i in range(len(channel_modalities))],
            "modalities": list(modalities), "class_names": list(class_names), "text_dim": int(text_dim),
            "image_encoder": dict(image_encoder), "decoder_dim": int(dim), "decoder_depth": int(depth),
            "decoder_heads": int(num_heads), "decoder_mlp_dim": int(mlp_dim), "feature_stride": int(feature_stride),
            "table_encoder": dict(table_encoder or {})}


def build_zeus_network(plans_manager, configuration_manager, num_input_channels: int, num_output_channels: int,
                       fusion: str) -> ZeusNetwork:
    """Static-builder body of the Zeus trainers (training and nnUNetv2_predict alike)."""
    spec = plans_manager.plans.get(ZEUS_PLANS_KEY)
    if spec is None:
        raise ZeusSpecError(
            f"The plans have no '{ZEUS_PLANS_KEY}' entry. It is written by the Zeus trainers when they initialise "
            f"(from the instruction table) and saved to the results folder's plans.json; predict with a model folder "
            f"trained by nnUNetTrainerZeus / nnUNetTrainerZeusHybrid.")
    if spec["fusion"] != fusion:
        raise ZeusSpecError(f"The plans' Zeus spec is for {spec['fusion']} fusion, this trainer does {fusion}.")
    if len(configuration_manager.patch_size) != 2:
        raise ZeusSpecError(f"Zeus is a 2D method; configuration '{configuration_manager.data_identifier}' has patch "
                            f"size {configuration_manager.patch_size}. Train the 2d configuration.")
    if len(spec["channel_modalities"]) != num_input_channels or len(spec["class_names"]) != num_output_channels:
        raise ZeusSpecError(f"The Zeus spec ({len(spec['channel_modalities'])} channels, {len(spec['class_names'])} "
                            f"classes) does not fit {num_input_channels} input channels and "
                            f"{num_output_channels} outputs.")
    dim = spec["decoder_dim"]
    enc = spec["image_encoder"]
    if enc["type"] == "sam":
        if dim != SAM_EMBED_DIM:
            raise ZeusSpecError(f"With SAM's image encoder the decoder width must be {SAM_EMBED_DIM}, not {dim}.")
        image_encoder = SamViTFeatureEncoder(enc["variant"])
    else:
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
        unet = get_network_from_plans(configuration_manager.network_arch_class_name,
                                      configuration_manager.network_arch_init_kwargs,
                                      configuration_manager.network_arch_init_kwargs_req_import,
                                      1, num_output_channels, allow_init=True, deep_supervision=False)
        image_encoder = UNetFeatureEncoder(unet.encoder, spec["feature_stride"], dim)
    index = [spec["modalities"].index(m) for m in spec["channel_modalities"]]
    return ZeusNetwork(image_encoder, fusion, index, len(spec["modalities"]), len(spec["class_names"]),
                       spec["text_dim"], dim, spec["decoder_depth"], spec["decoder_heads"], spec["decoder_mlp_dim"])
