"""MulModSegNet: any nnU-Net encoder-decoder U-Net with MulModSeg's text-conditioned head.

The U-Net the plans describe (PlainConvUNet, ResidualEncoderUNet, 2d or 3d) is built by nnU-Net as
usual and wrapped, not forked: its encoder and decoder are used unchanged, except that each of the
decoder's ``seg_layers`` (1x1 conv to num_classes) is replaced by a 1x1 conv to 8 channels. The
decoder's own forward therefore returns 8-channel maps at every deep-supervision scale, and the
text-conditioned dynamic head turns each into K class logits. Output format and deep supervision are
exactly those of nnU-Net (a tensor, or a list from full to lowest resolution), so nnU-Net's Dice+CE
loss, DeepSupervisionWrapper, sliding-window predictor and export work as they are.

Other backbone families subclass this class and override its three backbone hooks (``adopt_backbone``,
``encode``, ``decode``); the head and the modality selection below are shared. Primus: modeling/primus_net.py;
which network gets which wrapper: modeling/backbones.py.

Which modality's prompts are used, per forward (first that applies):
1. the ``modality`` argument: int or LongTensor [B] of indices into ``modalities``;
2. ``using_modality(...)``: a context manager (used by the trainers around nnU-Net's own steps);
3. ``selected_modality``: a plain attribute (set per case by the prediction hook);
4. automatic: the modality classifier on the pooled bottleneck features, per sample.

Selections are plain Python attributes, never buffers: nnU-Net's predictor calls load_state_dict once
per case and would overwrite buffers. The text embeddings, in contrast, ARE a persistent buffer: they
travel inside every checkpoint, so prediction needs neither the table file nor the text encoder.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import List, Optional, Sequence, Union

import torch
from torch import nn

from nnunet_mulmod.modeling.dynamic_head import HEAD_CHANNELS, MulModSegController, dynamic_head

ModalitySelection = Union[int, torch.Tensor, None]


class MulModSegNet(nn.Module):
    def __init__(self, unet: nn.Module, modalities: Sequence[str], num_classes: int, embed_dim: int,
                 controller_hidden: int = 256, normalized_controller: bool = True):
        super().__init__()
        bottleneck_channels = self.adopt_backbone(unet)

        self.modalities: List[str] = list(modalities)
        self.num_classes = num_classes
        self.register_buffer("text_embeddings", torch.zeros(len(self.modalities), num_classes, embed_dim))
        self.controller = MulModSegController(bottleneck_channels, embed_dim, controller_hidden,
                                              normalized=normalized_controller)
        # Used only when no modality is given. Not trained by the segmentation loss or optimizer (its parameters
        # do not require grad, so nnU-Net's optimizer and DDP leave them alone): the trainer fits it on a balanced
        # memory of detached pooled features of every modality (nnunet_mulmod/training/modality_classifier.py),
        # so it learns the images' modality, not the modality of the last single-modality ALT batch.
        self.modality_classifier = nn.Linear(bottleneck_channels, len(self.modalities))
        self.modality_classifier.requires_grad_(False)

        self.selected_modality: Optional[int] = None
        self._modality_override: ModalitySelection = None
        self.last_pooled: Optional[torch.Tensor] = None  # detached [B, C_bottleneck] of the last forward
        self.last_modality_logits: Optional[torch.Tensor] = None
        self.last_modality_indices: Optional[torch.Tensor] = None
        self.last_modality_was_auto = False
        # per-modality patch counts of automatic detection; a list while prediction asks for them
        self.auto_votes: Optional[List[int]] = None

    # ------------------------------------------------------------------ the backbone (subclasses: other families)
    def adopt_backbone(self, unet: nn.Module) -> int:
        """Takes over nnU-Net's network, its segmentation layers now emitting 8 channels; returns C_bottleneck."""
        if not (hasattr(unet, "encoder") and hasattr(unet, "decoder") and hasattr(unet.decoder, "seg_layers")):
            raise TypeError(
                f"MulModSeg wraps encoder-decoder U-Nets from dynamic_network_architectures (PlainConvUNet, "
                f"ResidualEncoderUNet ...) with .encoder, .decoder and .decoder.seg_layers; got "
                f"{type(unet).__name__}. Use plans whose architecture is one of those.")
        self.encoder = unet.encoder
        self.decoder = unet.decoder
        conv_op = self.encoder.conv_op
        self.decoder.seg_layers = nn.ModuleList(
            conv_op(layer.in_channels, HEAD_CHANNELS, 1, 1, 0, bias=True) for layer in self.decoder.seg_layers)
        self.decoder.num_classes = HEAD_CHANNELS
        return self.encoder.output_channels[-1]

    def encode(self, x: torch.Tensor):
        """x [B, C_in, *S] -> (pooled [B, C_bottleneck], skips: the encoder's stage outputs, bottleneck last)."""
        skips = self.encoder(x)
        return skips[-1].flatten(2).mean(2), skips

    def decode(self, skips):
        """skips -> features [B, 8, *S], or a list of them (deep supervision, full resolution first)."""
        return self.decoder(skips)

    # ------------------------------------------------------------------ modality selection
    def modality_index(self, name: str) -> int:
        if name not in self.modalities:
            raise ValueError(f"Unknown modality {name!r}; this model knows {self.modalities}.")
        return self.modalities.index(name)

    def set_text_embeddings(self, embeddings: torch.Tensor) -> None:
        if tuple(embeddings.shape) != tuple(self.text_embeddings.shape):
            raise ValueError(f"text embeddings of shape {tuple(embeddings.shape)} do not fit this network "
                             f"({tuple(self.text_embeddings.shape)}: modalities x classes x dim)")
        with torch.no_grad():
            self.text_embeddings.copy_(embeddings)

    @contextmanager
    def using_modality(self, modality: ModalitySelection):
        previous = self._modality_override
        self._modality_override = modality
        try:
            yield self
        finally:
            self._modality_override = previous

    def _resolve_modality(self, modality: ModalitySelection, batch_size: int,
                          modality_logits: torch.Tensor) -> torch.Tensor:
        device = modality_logits.device
        for candidate in (modality, self._modality_override, self.selected_modality):
            if candidate is None:
                continue
            self.last_modality_was_auto = False
            if isinstance(candidate, int):
                return torch.full((batch_size,), candidate, dtype=torch.long, device=device)
            candidate = torch.as_tensor(candidate, dtype=torch.long, device=device).reshape(-1)
            if candidate.numel() == 1:
                return candidate.expand(batch_size)
            if candidate.numel() != batch_size:
                raise ValueError(f"got {candidate.numel()} modality indices for a batch of {batch_size}")
            return candidate
        self.last_modality_was_auto = True
        detected = modality_logits.argmax(1)
        if self.auto_votes is not None:
            for i, n in enumerate(detected.bincount(minlength=len(self.modalities)).tolist()):
                self.auto_votes[i] += n
        return detected

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, modality: ModalitySelection = None):
        """x [B, C_in, *S] -> logits [B, K, *S], or a list of them (deep supervision, full res first)."""
        pooled, skips = self.encode(x)
        modality_logits = self.modality_classifier(pooled.detach())
        indices = self._resolve_modality(modality, x.shape[0], modality_logits)
        self.last_pooled = pooled.detach()
        self.last_modality_logits = modality_logits
        self.last_modality_indices = indices

        params = self.controller(pooled, self.text_embeddings[indices])
        features = self.decode(skips)
        if isinstance(features, (list, tuple)):
            return [dynamic_head(f, params) for f in features]
        return dynamic_head(features, params)

    def compute_conv_feature_map_size(self, input_size):
        # nnU-Net's planners call this on the network class; kept for parity with the wrapped U-Net.
        return self.encoder.compute_conv_feature_map_size(input_size) + \
            self.decoder.compute_conv_feature_map_size(input_size)
