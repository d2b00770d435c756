"""Image encoders of Zeus: single-channel image -> [N, D, h, w] embedding at the decoder width D.

- ``UNetFeatureEncoder`` (default): the plans' U-Net encoder (nnU-Net's ``get_network_from_plans``, so
  PlainConvUNet and ResidualEncoderUNet plans both work), cut after the deepest stage whose stride does not exceed
  ``feature_stride``, plus SAM's neck (1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d) to D channels. Trainable.
- ``SamViTFeatureEncoder``: SAM's ViT image encoder (segment_anything's ``ImageEncoderViT``, its neck included),
  frozen, loaded from a local SAM checkpoint. Input is resized to 1024x1024 and repeated to 3 channels (nnU-Net
  data are z-scored, which is close to SAM's pixel normalisation); output 256 x 64 x 64.
"""
from __future__ import annotations

import os
from functools import partial
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT
from segment_anything.modeling.common import LayerNorm2d
from torch import nn

# segment_anything/build_sam.py, per variant.
SAM_VIT_VARIANTS = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=[2, 5, 8, 11]),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=[5, 11, 17, 23]),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=[7, 15, 23, 31]),
}
SAM_IMAGE_SIZE, SAM_EMBED_DIM = 1024, 256


class ZeusCheckpointError(ValueError):
    """A SAM checkpoint is missing or does not match the image encoder."""


def sam_neck(in_channels: int, dim: int) -> nn.Sequential:
    """SAM's ViT neck (image_encoder.py), here from U-Net features to the decoder width."""
    return nn.Sequential(nn.Conv2d(in_channels, dim, 1, bias=False), LayerNorm2d(dim),
                         nn.Conv2d(dim, dim, 3, padding=1, bias=False), LayerNorm2d(dim))


def feature_stage_index(strides, feature_stride: int) -> int:
    """Deepest encoder stage whose cumulative stride is <= feature_stride along every axis."""
    cumulative = np.cumprod(np.array([np.broadcast_to(s, (2,)) for s in strides]), axis=0)
    ok = [i for i, s in enumerate(cumulative) if s.max() <= feature_stride]
    return ok[-1]


class UNetFeatureEncoder(nn.Module):
    def __init__(self, unet_encoder: nn.Module, feature_stride: int, dim: int):
        super().__init__()
        stage = feature_stage_index(unet_encoder.strides, feature_stride)
        self.stem = getattr(unet_encoder, "stem", None)  # ResidualEncoder has one, PlainConvEncoder not
        # Later stages are dropped, not just skipped: unused parameters would break DDP and inflate counts.
        self.stages = nn.Sequential(*list(unet_encoder.stages)[:stage + 1])
        self.neck = sam_neck(unet_encoder.output_channels[stage], dim)
        strides = [np.broadcast_to(s, (2,)) for s in unet_encoder.strides[:stage + 1]]
        self.stride = tuple(int(v) for v in np.prod(strides, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stem is not None:
            x = self.stem(x)
        return self.neck(self.stages(x))


class SamViTFeatureEncoder(nn.Module):
    def __init__(self, variant: str):
        super().__init__()
        if variant not in SAM_VIT_VARIANTS:
            raise ZeusCheckpointError(f"Unknown SAM variant {variant!r}; known: {list(SAM_VIT_VARIANTS)}.")
        self.variant = variant
        self.vit = make_sam_vit(variant)
        self.vit.requires_grad_(False)  # frozen, as in Zeus

    def train(self, mode: bool = True):
        super().train(mode)
        self.vit.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, (SAM_IMAGE_SIZE, SAM_IMAGE_SIZE), mode="bilinear", align_corners=False)
        with torch.no_grad():
            return self.vit(x.expand(-1, 3, -1, -1))


def make_sam_vit(variant: str) -> ImageEncoderViT:
    v = SAM_VIT_VARIANTS[variant]
    return ImageEncoderViT(depth=v["depth"], embed_dim=v["embed_dim"], img_size=SAM_IMAGE_SIZE, mlp_ratio=4,
                           norm_layer=partial(nn.LayerNorm, eps=1e-6), num_heads=v["num_heads"], patch_size=16,
                           qkv_bias=True, use_rel_pos=True, global_attn_indexes=v["global_attn_indexes"],
                           window_size=14, out_chans=SAM_EMBED_DIM)


def _read_sam_image_encoder_state(checkpoint: str) -> Mapping[str, torch.Tensor]:
    if not os.path.isfile(checkpoint):
        raise ZeusCheckpointError(
            f"SAM checkpoint {checkpoint} does not exist. Download sam_vit_b_01ec64.pth (or vit_l / vit_h) from the "
            f"segment-anything repository on a machine with internet and pass its local path.")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ZeusCheckpointError(f"Cannot read SAM checkpoint {checkpoint}: {e}") from e
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    if not isinstance(state, Mapping):
        raise ZeusCheckpointError(f"{checkpoint} holds no state dict.")
    prefix = "image_encoder."
    if any(k.startswith(prefix) for k in state):  # a full SAM checkpoint
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def detect_sam_variant(checkpoint: str) -> str:
    """vit_b / vit_l / vit_h from the checkpoint's patch embedding; a clear error for anything else."""
    state = _read_sam_image_encoder_state(checkpoint)
    weight = state.get("patch_embed.proj.weight")
    dims = {v["embed_dim"]: k for k, v in SAM_VIT_VARIANTS.items()}
    if weight is None or weight.ndim != 4 or weight.shape[0] not in dims:
        raise ZeusCheckpointError(
            f"{checkpoint} is not a SAM ViT checkpoint (no 'patch_embed.proj.weight' of width "
            f"{sorted(dims)}; found {None if weight is None else tuple(weight.shape)}). Pass the official "
            f"sam_vit_b/l/h checkpoint of segment-anything.")
    return dims[weight.shape[0]]


def load_sam_image_encoder_weights(encoder: SamViTFeatureEncoder, checkpoint: str) -> None:
    """Loads the checkpoint into the frozen ViT; every missing, unexpected or mis-shaped key is reported."""
    state = _read_sam_image_encoder_state(checkpoint)
    expected = encoder.vit.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mis_shaped:
        def shown(items):
            return ", ".join(items[:5]) + (f" ... ({len(items)} in all)" if len(items) > 5 else "")
        raise ZeusCheckpointError(
            f"SAM checkpoint {checkpoint} does not match the {encoder.variant} image encoder: "
            + "; ".join(p for p in [f"missing {shown(missing)}" if missing else "",
                                    f"unexpected {shown(unexpected)}" if unexpected else "",
                                    f"wrong shapes {shown(mis_shaped)}" if mis_shaped else ""] if p)
            + ". Pass the official segment-anything checkpoint of that variant (sam_vit_b_01ec64.pth, "
              "sam_vit_l_0b3195.pth or sam_vit_h_4b8939.pth).")
    encoder.vit.load_state_dict(state)
