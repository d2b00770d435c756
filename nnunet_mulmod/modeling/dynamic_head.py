"""MulModSeg's text-conditioned segmentation head: controller + dynamic 1x1 convolutions.

For every sample b and class k the controller turns [pooled bottleneck features of b ; text embedding
of (modality of b, class k)] into theta_bk: the weights and biases of three 1x1(x1) convolutions with
8, 8 and 1 output channels. These are applied to an 8-channel feature map of sample b and give one
logit map per class. All (sample, class) heads run at once as batched matrix products (a 1x1
convolution is a matrix product over channels), with no loop over samples or classes.

Shapes (S = spatial dims, 2 or 3 of them):
    pooled   [B, C_bottleneck]
    text     [B, K, D]
    params   [B, K, 153]        (153 = 8*8 + 8*8 + 8*1 weights + 8 + 8 + 1 biases)
    features [B, 8, *S]
    logits   [B, K, *S]

Parameter layout inside the 153 (as in the authors' code): weights of layer 1, 2, 3, then biases of
layer 1, 2, 3. Each weight block is [out, in] row-major.
"""
from __future__ import annotations

import math
from typing import List

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

HEAD_CHANNELS = 8
# (in, out) of the three dynamic 1x1 convolutions.
DYNAMIC_LAYERS = ((HEAD_CHANNELS, 8), (8, 8), (8, 1))
WEIGHT_NUMS = [i * o for i, o in DYNAMIC_LAYERS]
BIAS_NUMS = [o for _, o in DYNAMIC_LAYERS]
NUM_DYNAMIC_PARAMS = sum(WEIGHT_NUMS) + sum(BIAS_NUMS)  # 153


class MulModSegController(nn.Module):
    """[pooled image features ; class text embedding] -> dynamic head parameters.

    Image branch: Linear(C_bottleneck -> hidden) on globally pooled bottleneck features (the bottleneck
    of nnU-Net's U-Nets already ends in norm + nonlinearity, so the authors' GroupNorm + ReLU before the
    pooling is not repeated). Text branch: Linear(D -> hidden) + ReLU. Controller: Linear(2*hidden -> 153),
    which is the authors' 1x1 conv on the concatenation.

    ``normalized=True`` (the default since nnunet-mulmod 0.2; "controller_version" 2 in the plans) makes the
    generated head start, and learn, like one of nnU-Net's own layers:
    - each branch is layer-normalised (no learnable affine, so no new parameters) and the concatenation is
      scaled to unit norm. Unnormalised, the text branch is ~10x weaker than the image branch (sentence and
      CLIP embeddings have unit norm, i.e. components of ~1/sqrt(D)), so the class, which only the text
      branch knows, barely changes the generated weights. Unit norm also keeps the learning rate of the
      generated weights that of a plain layer: a step dW on the controller moves the generated weights by
      dW z, i.e. by lr * |z|^2 times their gradient, so an input of norm sqrt(512) would multiply nnU-Net's
      learning rate by 512 for the head;
    - the controller rows that generate a dynamic layer's weights start with He's variance 2 / fan_in
      (1 / fan_in for the last, linear layer), so with a unit-norm input so do the generated weights
      (hypernetwork fan-in initialisation, Chang et al., ICLR 2020); the rows that generate biases, and the
      controller's own bias, start at zero.
    Measured at initialisation on the 2d plans of the real CT/MR dev set (benchmarks/bench_real_data.py):
    logits std 0.006 with the authors' layout and PyTorch's default init, 0.9 for nnU-Net's own network,
    ~0.6 with this one.
    ``normalized=False`` is the authors' layout with PyTorch's default init (checkpoints of version 1).
    """

    def __init__(self, bottleneck_channels: int, embed_dim: int, hidden: int = 256, normalized: bool = True):
        super().__init__()
        self.image_proj = nn.Linear(bottleneck_channels, hidden)
        self.text_proj = nn.Linear(embed_dim, hidden)
        self.controller = nn.Linear(2 * hidden, NUM_DYNAMIC_PARAMS)
        self.normalized = normalized
        if normalized:
            self.reset_controller_parameters()

    @torch.no_grad()
    def reset_controller_parameters(self) -> None:
        """Hyperfan-in initialisation of the controller (see the class docstring)."""
        weight_rows = torch.split(self.controller.weight, WEIGHT_NUMS + BIAS_NUMS, dim=0)
        for layer, ((n_in, _), rows) in enumerate(zip(DYNAMIC_LAYERS, weight_rows)):
            gain = 2.0 if layer < len(DYNAMIC_LAYERS) - 1 else 1.0  # ReLU follows all but the last layer
            rows.normal_(0.0, math.sqrt(gain / n_in))  # the input has unit norm: generated weights get this variance
        for rows in weight_rows[len(DYNAMIC_LAYERS):]:
            rows.zero_()
        self.controller.bias.zero_()

    def forward(self, pooled: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """pooled [B, C], text [B, K, D] -> params [B, K, 153] (float32, also under autocast).

        Always in float32: under nnU-Net's fp16 autocast the unnormalised (version 1) layout multiplies pooled
        features of any magnitude into generated weights, which overflow fp16's 65504 long before they overflow
        the head's activations; and the whole controller is a few [B*K, 512] products, so fp32 costs nothing.
        The head then runs in the features' dtype (fp16/bf16 under autocast, like nnU-Net's own convs).
        """
        b, k, _ = text.shape
        dtype = self.controller.weight.dtype  # float32 as nnU-Net builds it (float64 in precision tests)
        with torch.autocast(pooled.device.type, enabled=False):
            return self._forward_fp32(pooled.to(dtype), text.to(dtype), b, k)

    def head_features(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, 8, *S] -> the same in the dtype the dynamic head must run in: their own, except fp16
        features with the unnormalised (version 1) layout, which go to float32.

        Version 1's generated weights scale with the pooled features (no normalisation between them), and the
        head multiplies three such layers: with pooled features x1e4 its weights reach ~8e3 and the first layer's
        products overflow fp16 (inf logits; tests/test_mixed_precision.py). Version 2's generated weights have
        unit-norm inputs (|theta| ~ 2 whatever the image), so its head runs in fp16 like nnU-Net's own last conv.
        bf16 has float32's range: nothing to do. A dtype check, not a value check: no graph break or guard on data.
        """
        if not self.normalized and features.dtype == torch.float16:
            return features.float()
        return features

    def _forward_fp32(self, pooled: torch.Tensor, text: torch.Tensor, b: int, k: int) -> torch.Tensor:
        image = self.image_proj(pooled)
        text = F.relu(self.text_proj(text))
        if self.normalized:  # each branch to unit RMS, the concatenation to unit norm
            scale = 1.0 / math.sqrt(image.shape[-1] + text.shape[-1])
            image = F.layer_norm(image, image.shape[-1:]) * scale
            text = F.layer_norm(text, text.shape[-1:]) * scale
        return self.controller(torch.cat((image[:, None, :].expand(b, k, -1), text), dim=-1))


def split_dynamic_params(params: torch.Tensor) -> tuple[List[torch.Tensor], List[torch.Tensor]]:
    """params [B, K, 153] -> (weights, biases); weights[l] [B*K*out_l, in_l], biases[l] [B*K*out_l]."""
    b, k, p = params.shape
    assert p == NUM_DYNAMIC_PARAMS, f"expected {NUM_DYNAMIC_PARAMS} dynamic parameters, got {p}"
    chunks = torch.split(params, WEIGHT_NUMS + BIAS_NUMS, dim=-1)
    weights, biases = [], []
    for layer, (n_in, n_out) in enumerate(DYNAMIC_LAYERS):
        weights.append(chunks[layer].reshape(b * k * n_out, n_in))
        biases.append(chunks[len(DYNAMIC_LAYERS) + layer].reshape(b * k * n_out))
    return weights, biases


def _apply_dynamic_convs(features: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """The three dynamic 1x1 convolutions of every (sample, class) pair as batched matrix products.

    features [B, 8, N] (voxels flattened; may be a strided slab), params [B, K, 153] -> [B*K, 1, N].
    A 1x1 convolution is a matrix product over the channel axis, so the voxels go through per-sample
    [K*8, 8] weights (layer 1, one batch entry per sample), then per-(sample, class) [8, 8] and [1, 8]
    weights (layers 2, 3, one batch entry per pair): grouped convolutions with groups=B, B*K, B*K.
    """
    b, c, n = features.shape
    k = params.shape[1]
    weights, biases = split_dynamic_params(params.to(features.dtype))
    # In the features' dtype, autocast or not: under autocast that is the autocast dtype anyway (the features are a
    # conv output), except where MulModSegController.head_features asked for float32, which autocast would undo.
    with torch.autocast(features.device.type, enabled=False):
        x = torch.baddbmm(biases[0].view(b, k * 8, 1), weights[0].view(b, k * 8, c), features).relu_()
        x = x.view(b * k, 8, n)
        x = torch.baddbmm(biases[1].view(b * k, 8, 1), weights[1].view(b * k, 8, 8), x).relu_()
        return torch.baddbmm(biases[2].view(b * k, 1, 1), weights[2].view(b * k, 1, 8), x)


def dynamic_head(features: torch.Tensor, params: torch.Tensor, max_hidden_ratio: float = 4.0) -> torch.Tensor:
    """Applies the per-(sample, class) dynamic convolutions. features [B, 8, *S], params [B, K, 153] -> [B, K, *S].

    The hidden maps of all heads together have B*K*8 channels at the feature map's resolution, which
    for 14 classes is far more memory than the whole last decoder stage. The heads are 1x1 convolutions,
    i.e. pointwise, so the voxels are processed in slabs; while training each slab is checkpointed (its
    hidden maps are recomputed in the backward pass instead of stored). The hidden maps alive at any time
    are then at most ``max_hidden_ratio`` times the size of ``features``. The result is exactly the same
    as a single pass.
    """
    if features.shape[1] != HEAD_CHANNELS:
        raise ValueError(f"dynamic head expects {HEAD_CHANNELS}-channel features, got {features.shape[1]}")
    b, k = params.shape[:2]
    spatial = features.shape[2:]
    flat = features.reshape(b, HEAD_CHANNELS, -1)
    hidden_per_feature = k * DYNAMIC_LAYERS[0][1] / HEAD_CHANNELS  # hidden channels per feature channel
    n_slabs = min(flat.shape[2], max(1, math.ceil(hidden_per_feature / max_hidden_ratio)))
    if n_slabs == 1:
        return _apply_dynamic_convs(flat, params).view(b, k, *spatial)
    needs_grad = torch.is_grad_enabled() and (features.requires_grad or params.requires_grad)
    outputs = []
    for part in torch.split(flat, math.ceil(flat.shape[2] / n_slabs), dim=2):  # strided views, no copies
        if needs_grad:
            outputs.append(checkpoint(_apply_dynamic_convs, part, params, use_reentrant=False))
        else:
            outputs.append(_apply_dynamic_convs(part, params))
    return torch.cat(outputs, dim=2).view(b, k, *spatial)
