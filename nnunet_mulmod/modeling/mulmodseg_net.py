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
3. ``selected_modality``: a settable attribute (set per case by the prediction hook);
4. automatic: the modality classifier (``modeling/modality_classifier.py``: texture statistics of every
   encoder stage), per sample; it refuses (ModalityError) while it was never fitted.

2 and 3 live in non-persistent LongTensor buffers (``modality_override`` [1] or [B], ``modality_selected`` [1];
``AUTO`` = -1 means "not set"), and the forward picks among them with ``torch.where``: the selection is data,
not Python control flow, so ``torch.compile(network)`` (nnU-Net's default on a GPU) traces one graph that
serves every modality, ALT's alternation, the prediction hook's per-case choice and automatic detection alike
(a Python attribute read in the forward would be a guard, i.e. one recompilation per new value).
Non-persistent: nnU-Net's predictor calls load_state_dict once per case, which must not overwrite the
selection, and state_dicts (checkpoints) are exactly those of earlier versions. The votes of automatic
detection are counted in a buffer too (``auto_vote_counts`` [M]); ``auto_votes`` is the Python view the
prediction hook reads and resets, outside the compiled region. DDP would broadcast rank 0's buffers to every
rank before each training forward, i.e. rank 0's selection: these buffers are listed in
``_ddp_params_and_buffers_to_ignore``. The text embeddings, in contrast, ARE a persistent buffer: they travel
inside every checkpoint, so prediction needs neither the table file nor the text encoder.

The classifier's features and logits are computed in every forward (a few reductions per stage, no autograd),
so there is one graph whether a modality is given or not; the fitted check runs where Python runs: in the
eager forward and in the prediction hook (``require_fitted_classifier``), never inside a compiled graph.

Shapes: x [B, C_in, *S]; logits [B, K, *S] (a list of them with deep supervision); after every forward
``last_pooled`` [B, C_bottleneck] (detached), ``last_modality_features`` [B, F], ``last_modality_logits`` [B, M],
``last_modality_indices`` [B] (long), ``last_modality_auto`` [B] (bool: chosen by the classifier).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_mulmod.modality import ModalityError
from nnunet_mulmod.modeling.dynamic_head import HEAD_CHANNELS, MulModSegController, dynamic_head
from nnunet_mulmod.modeling.modality_classifier import ModalityClassifier, stage_statistics

ModalitySelection = Union[int, torch.Tensor, None]
AUTO = -1  # "no modality given" in the selection buffers
# Per-forward state, not weights: kept out of state_dicts (see the module docstring) and out of DDP's buffer
# broadcast; the text table is the same file on every rank, so broadcasting it each step would be a wasted sync.
_SELECTION_BUFFERS = ("modality_override", "modality_selected", "auto_vote_counts")
_DDP_UNSYNCED_BUFFERS = _SELECTION_BUFFERS + ("text_embeddings",)


def selection_tensor(modality: ModalitySelection) -> torch.Tensor:
    """None -> [AUTO]; an int -> [int]; indices [B] -> [1] when all equal (the ALT case), else [B] (long, CPU
    unless given on a device). One shape per kind of use keeps the compiled graph's shape guards stable."""
    if modality is None:
        return torch.full((1,), AUTO, dtype=torch.long)
    if isinstance(modality, int):
        return torch.tensor([modality], dtype=torch.long)
    t = torch.as_tensor(modality, dtype=torch.long).reshape(-1)
    if t.numel() > 1 and bool((t == t[0]).all()):
        t = t[:1]
    return t


class MulModSegNet(nn.Module):
    def __init__(self, unet: nn.Module, modalities: Sequence[str], num_classes: int, embed_dim: int,
                 controller_hidden: int = 256, normalized_controller: bool = True):
        super().__init__()
        bottleneck_channels, stage_channels = self.adopt_backbone(unet)

        self.modalities: List[str] = list(modalities)
        self.num_classes = num_classes
        self.register_buffer("text_embeddings", torch.zeros(len(self.modalities), num_classes, embed_dim))
        self.controller = MulModSegController(bottleneck_channels, embed_dim, controller_hidden,
                                              normalized=normalized_controller)
        # Used only when no modality is given. Not trained by the segmentation loss or optimizer (its parameters
        # do not require grad, so nnU-Net's optimizer and DDP leave them alone): the trainer fits it on a balanced
        # memory of detached stage statistics of every modality (nnunet_mulmod/training/modality_classifier.py),
        # so it learns the images' modality, not the modality of the last single-modality ALT batch.
        self.modality_classifier = ModalityClassifier(2 * sum(stage_channels), len(self.modalities))

        self.register_buffer("modality_override", selection_tensor(None), persistent=False)
        self.register_buffer("modality_selected", selection_tensor(None), persistent=False)
        self.register_buffer("auto_vote_counts", torch.zeros(len(self.modalities), dtype=torch.long), persistent=False)
        self._counting_votes = False  # whether auto_votes is asked for; the forward counts always (no Python branch)
        # DDP reads this at construction; nnU-Net wraps the compiled module (names prefixed "_orig_mod.") or this one
        self._ddp_params_and_buffers_to_ignore = [p + n for n in _DDP_UNSYNCED_BUFFERS for p in ("", "_orig_mod.")]
        self.last_pooled: Optional[torch.Tensor] = None  # detached [B, C_bottleneck] of the last forward
        self.last_modality_features: Optional[torch.Tensor] = None  # [B, F] stage statistics
        self.last_modality_logits: Optional[torch.Tensor] = None
        self.last_modality_indices: Optional[torch.Tensor] = None
        self.last_modality_auto: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------ the backbone (subclasses: other families)
    def adopt_backbone(self, unet: nn.Module) -> Tuple[int, List[int]]:
        """Takes over nnU-Net's network, its segmentation layers now emitting 8 channels; returns (C_bottleneck,
        the channels of every map ``modality_stages`` gives the modality classifier)."""
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
        return self.encoder.output_channels[-1], list(self.encoder.output_channels)

    def encode(self, x: torch.Tensor):
        """x [B, C_in, *S] -> (pooled [B, C_bottleneck], skips: the encoder's stage outputs, bottleneck last)."""
        skips = self.encoder(x)
        return skips[-1].flatten(2).mean(2), skips

    def modality_stages(self, skips) -> List[torch.Tensor]:
        """skips -> the maps whose texture statistics the modality classifier reads: every encoder stage."""
        return list(skips)

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

    def _store_selection(self, name: str, modality: ModalitySelection) -> None:
        """Writes a selection into its buffer in place (same tensor, so nothing the compiled graph guards on
        changes); only a change of shape ([1] <-> [B], mixed-modality batches) replaces the tensor."""
        value = selection_tensor(modality)
        buffer = getattr(self, name)
        if value.shape == buffer.shape:
            buffer.copy_(value)
        else:
            self._buffers[name] = value.to(buffer.device)  # stays non-persistent: the name is registered as such

    @property
    def selected_modality(self) -> Optional[int]:
        value = self.modality_selected
        return None if value.numel() == 1 and int(value) == AUTO else int(value[0])

    @selected_modality.setter
    def selected_modality(self, modality: Optional[int]) -> None:
        self._store_selection("modality_selected", modality)

    @property
    def auto_votes(self) -> Optional[List[int]]:
        """Per-modality patch counts of automatic detection since it was set to a list; None when not asked for."""
        return self.auto_vote_counts.tolist() if self._counting_votes else None

    @auto_votes.setter
    def auto_votes(self, votes: Optional[List[int]]) -> None:
        self._counting_votes = votes is not None
        with torch.no_grad():
            self.auto_vote_counts.copy_(torch.as_tensor(votes if votes is not None else 0, dtype=torch.long))

    @property
    def last_modality_was_auto(self) -> bool:
        return self.last_modality_auto is not None and bool(self.last_modality_auto.any())

    def require_fitted_classifier(self) -> None:
        """Raises ModalityError unless automatic detection can be used (called outside compiled regions)."""
        if not bool(self.modality_classifier.fitted):
            raise ModalityError(
                "Automatic modality detection: this network's modality classifier was never fitted (a checkpoint "
                "of nnunet-mulmod <= 0.3, or a training run too short to fit it). Give the modality: "
                "nnunet_mulmod_predict --modality CT|MR or --modality_map, or list the case in dataset.json's "
                "case_modalities.")

    @contextmanager
    def using_modality(self, modality: ModalitySelection):
        previous = self.modality_override.clone()
        self._store_selection("modality_override", modality)
        try:
            yield self
        finally:
            self._store_selection("modality_override", previous)

    def _resolve_modality(self, modality: ModalitySelection, batch_size: int,
                          modality_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (indices [B] long, auto [B] bool). Tensor ops only (no .item(), no Python branch on values)."""
        if modality is None:
            chosen = torch.where(self.modality_override >= 0, self.modality_override, self.modality_selected)
        elif isinstance(modality, int):
            chosen = torch.full((1,), modality, dtype=torch.long, device=modality_logits.device)
        else:
            chosen = torch.as_tensor(modality, dtype=torch.long, device=modality_logits.device).reshape(-1)
        if chosen.numel() not in (1, batch_size):
            raise ValueError(f"got {chosen.numel()} modality indices for a batch of {batch_size}")
        chosen = chosen.to(modality_logits.device).expand(batch_size)
        auto = chosen < 0
        detected = modality_logits.argmax(1)
        with torch.no_grad():
            self.auto_vote_counts.add_((F.one_hot(detected, len(self.modalities)) * auto[:, None]).sum(0))
        return torch.where(auto, detected, chosen), auto

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, modality: ModalitySelection = None):
        """x [B, C_in, *S] -> logits [B, K, *S], or a list of them (deep supervision, full res first)."""
        pooled, skips = self.encode(x)
        modality_features = stage_statistics(self.modality_stages(skips))
        modality_logits = self.modality_classifier(modality_features)
        indices, auto = self._resolve_modality(modality, x.shape[0], modality_logits)
        if not torch.compiler.is_compiling() and bool(auto.any()):
            self.require_fitted_classifier()
        # outputs of the graph that dynamo stores on the module after it ran (no graph break; see tests)
        self.last_pooled = pooled.detach()
        self.last_modality_features = modality_features
        self.last_modality_logits = modality_logits
        self.last_modality_indices = indices
        self.last_modality_auto = auto

        params = self.controller(pooled, self.text_embeddings[indices])
        features = self.decode(skips)
        if isinstance(features, (list, tuple)):  # head_features: fp32 where fp16 would overflow (controller v1)
            return [dynamic_head(self.controller.head_features(f), params) for f in features]
        return dynamic_head(self.controller.head_features(features), params)

    def compute_conv_feature_map_size(self, input_size):
        # nnU-Net's planners call this on the network class; kept for parity with the wrapped U-Net.
        return self.encoder.compute_conv_feature_map_size(input_size) + \
            self.decoder.compute_conv_feature_map_size(input_size)
