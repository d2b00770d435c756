"""The modality classifier behind automatic modality detection: texture statistics of every encoder stage.

CT and MR differ most in low-level texture and noise (CT's quantum noise and sharp bone edges, MR's bias
field and Rician noise), which nnU-Net's per-image z-score does not remove but the globally pooled
bottleneck mostly averages away. The classifier therefore reads the spatial mean and standard deviation
of every encoder stage's output, standardises them with the statistics of the evidence it was fitted on,
and applies one linear layer. Measured on the real CT/MR dev set with the encoder of a trained fold-0
model (patch-level accuracy on the fold's 7 validation cases, linear classifier fitted on the 25 training
cases; ``benchmarks/probe_modality_features.py`` prints this table, ``benchmarks/bench_real_data.py`` the
case-level figure): bottleneck mean only 0.80, mean of every stage 0.97, mean and std of every stage 0.99.

It is fitted apart from the segmentation (``nnunet_mulmod/training/modality_classifier.py``): nothing here
requires grad, the features are computed without autograd, so nnU-Net's optimizer, loss and DDP never see
it. ``fitted`` is 0 until the trainer has fitted it; automatic detection refuses an unfitted classifier.

Shapes (S = spatial dims, 2 or 3 of them):
    stages   list of [B, C_s, *S_s]      (the encoder's outputs, full resolution first)
    features [B, F]                       (F = 2 * sum of C_s: mean and std of every stage)
    logits   [B, M]                       (M modalities)
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


def stage_statistics(stages: Sequence[torch.Tensor]) -> torch.Tensor:
    """stages: list of [B, C_s, *S_s] -> features [B, 2 * sum C_s] (per stage: mean of every channel, then std,
    with Bessel's correction as torch.std). Computed without autograd, accumulated in float32.

    Two passes, the mean and then the norm of the centred map, rather than ``torch.var_mean``: the same values
    (and as stable: no E[x^2] - E[x]^2 cancellation), but on a CPU var_mean over the last axis of a [16, 16, 128^2]
    map took 22 ms against 4-5 ms (one thread, the first stage of the real-data benchmark's 2d configuration): a
    whole MulModSeg training step of that configuration went from 0.813 to 0.791 s (2 threads, same process,
    alternating), time spent on statistics that only the modality classifier reads."""
    with torch.no_grad():
        statistics = []
        for stage in stages:
            flat = stage.detach().flatten(2)
            mean = flat.mean(2, dtype=torch.float32)
            centred = flat - mean[..., None].to(flat.dtype)
            norm = torch.linalg.vector_norm(centred, dim=2, dtype=torch.float32)  # fp16 maps: summed in float32
            statistics += [mean, norm / math.sqrt(max(flat.shape[2] - 1, 1))]
        return torch.cat(statistics, 1)


class ModalityClassifier(nn.Module):
    """features [B, F] -> modality logits [B, M]: linear layer on standardised features.

    ``feature_mean``/``feature_std`` [F] and ``fitted`` are persistent buffers, so a checkpoint carries the
    classifier exactly as it was fitted."""

    def __init__(self, feature_dim: int, num_modalities: int):
        super().__init__()
        self.linear = nn.Linear(feature_dim, num_modalities)
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_std", torch.ones(feature_dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.uint8))
        self.requires_grad_(False)

    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        return (features.float() - self.feature_mean) / self.feature_std

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, F] -> logits [B, M] (float32, also under autocast: the standardisation is not fp16-safe)."""
        with torch.autocast(device_type=features.device.type, enabled=False):
            return nn.functional.linear(self.standardise(features), self.linear.weight.float(),
                                        self.linear.bias.float())

    def set_standardisation(self, features: torch.Tensor) -> None:
        """Standardise with the statistics of ``features`` [N, F] (the evidence the classifier is fitted on)."""
        with torch.no_grad():
            self.feature_mean.copy_(features.float().mean(0))
            self.feature_std.copy_(features.float().std(0).clamp_min(1e-4) if len(features) > 1
                                   else torch.ones_like(self.feature_std))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Checkpoints of nnunet-mulmod <= 0.3 hold a bare nn.Linear on the bottleneck mean ("weight", "bias").
        # Its features no longer exist: keep this classifier unfitted (automatic detection then refuses with a
        # message) and let the segmentation weights load.
        if prefix + "weight" in state_dict and prefix + "linear.weight" not in state_dict:
            state_dict.pop(prefix + "weight")
            state_dict.pop(prefix + "bias", None)
            for name, tensor in list(self.state_dict(keep_vars=True).items()):
                state_dict[prefix + name] = tensor.detach().clone()
            state_dict[prefix + "fitted"] = torch.zeros((), dtype=torch.uint8)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
