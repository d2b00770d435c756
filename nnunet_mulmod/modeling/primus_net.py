"""PrimusMulModSegNet: nnU-Net's transformer, Primus, with MulModSeg's text-conditioned head.

Primus (dynamic_network_architectures.architectures.primus; Wald, Roy, Isensee et al. 2025) embeds the
patch into tokens of 8x8x8 voxels (``down_projection``), runs an EVA transformer over them (``eva``) and
decodes the token grid with transposed convolutions (``up_projection``, a PatchDecode). The network nnU-Net's
Primus trainer builds is taken over, not forked:
- its ``up_projection`` is moved out and replaced by an identity, so Primus's own forward (patch embedding,
  register tokens, patch-drop restoration) now returns the token grid; this is ``encoder`` here;
- the image branch of the controller pools the transformer's tokens (mean over the grid);
- the moved PatchDecode is ``decoder``: unchanged but for its last transposed convolution, which emits the
  8-channel map instead of num_classes (its widths stay those of vanilla Primus for the same classes, so
  the two compare like for like);
- the shared dynamic head gives one logit map per class. Primus has no deep supervision: one output.

Shapes (S = the patch, 3d; P = 8, the token size; G = S / P, the token grid; E = Primus's embed_dim):
    x        [B, C_in, *S]
    tokens   [B, E, *G]        (encoder output)
    pooled   [B, E]
    features [B, 8, *S]        (decoder output)
    logits   [B, K, *S]
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from dynamic_network_architectures.architectures.primus import Primus
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn

from nnunet_mulmod.modeling.dynamic_head import HEAD_CHANNELS
from nnunet_mulmod.modeling.mulmodseg_net import MulModSegNet


class PrimusMulModSegNet(MulModSegNet):
    """``PrimusMulModSegNet(primus, modalities, num_classes, embed_dim, ...)``: as MulModSegNet, Primus inside."""

    def adopt_backbone(self, primus: nn.Module) -> Tuple[int, List[int]]:
        if not isinstance(primus, Primus):
            raise TypeError(f"PrimusMulModSegNet wraps dynamic_network_architectures' Primus networks; got "
                            f"{type(primus).__name__}.")
        decoder = primus.up_projection
        last = decoder.decode[-1]
        decoder.decode[-1] = nn.ConvTranspose3d(last.in_channels, HEAD_CHANNELS, kernel_size=last.kernel_size,
                                                stride=last.stride)
        decoder.decode[-1].apply(InitWeights_He(1e-2))  # as Primus initialises its decoder
        primus.up_projection = nn.Identity()  # Primus's forward now ends at the token grid
        self.encoder = primus
        self.decoder = decoder
        return primus.embed_dim, [primus.embed_dim]  # the classifier reads the token grid's statistics

    def encode(self, x: torch.Tensor):
        """x [B, C_in, *S] -> (pooled [B, E], tokens [B, E, *G])."""
        tokens = self.encoder(x)
        return tokens.flatten(2).mean(2), tokens

    def modality_stages(self, tokens: torch.Tensor) -> List[torch.Tensor]:
        return [tokens]

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, E, *G] -> features [B, 8, *S]."""
        return self.decoder(tokens)

    def compute_conv_feature_map_size(self, input_size):
        raise NotImplementedError("Primus does not estimate its feature map size (nnU-Net's planners do not use it)")
