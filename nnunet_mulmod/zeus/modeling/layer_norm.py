"""SAM's LayerNorm2d (channel-wise layer norm of [N, C, H, W] maps) computed in float32 under autocast.

segment_anything's LayerNorm2d computes ``(x - mean).pow(2).mean()`` in the input's dtype. Under nnU-Net's fp16
autocast its input is a conv output in fp16, and the square overflows fp16 (65504) for any activation above ~256:
the variance becomes inf and the normalised map 0 or NaN. This version takes the statistics in float32 and returns
the input's dtype; its parameters are SAM's (``weight``, ``bias`` [C]), so state_dicts and SAM checkpoints load
unchanged. Shapes: x [N, C, H, W] -> [N, C, H, W].
"""
from __future__ import annotations

import torch
from segment_anything.modeling.common import LayerNorm2d as SamLayerNorm2d
from torch import nn


class LayerNorm2d(SamLayerNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        u = y.mean(1, keepdim=True)
        s = (y - u).pow(2).mean(1, keepdim=True)
        y = (y - u) * torch.rsqrt(s + self.eps)
        return (self.weight.float()[:, None, None] * y + self.bias.float()[:, None, None]).to(x.dtype)


def use_fp32_layer_norms(module: nn.Module) -> nn.Module:
    """Makes every SAM LayerNorm2d inside ``module`` this class, in place (same parameter tensors and names)."""
    for m in module.modules():
        if type(m) is SamLayerNorm2d:
            m.__class__ = LayerNorm2d
    return module
