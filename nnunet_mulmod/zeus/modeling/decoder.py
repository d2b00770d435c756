"""SAM's mask decoder prompted by instruction embeddings, one mask per (sample, class), batch > 1 handled.

We reuse segment_anything's ``MaskDecoder`` (its ``TwoWayTransformer``, mask token, transposed-conv
``output_upscaling`` and hypernetwork MLP) unchanged, with one mask token and without its IoU head. Only
``MaskDecoder.predict_masks`` is replaced, because it assumes one image per call: it ``repeat_interleave``s the
image embedding once per prompt, so with a batch of B images and B*K prompts it would pair every prompt with
B*B*K images. Here every sample's embedding is repeated once per class of that sample, nothing else.
"""
from __future__ import annotations

import torch
from segment_anything.modeling import MaskDecoder, TwoWayTransformer
from torch import nn


class InstructionMaskDecoder(nn.Module):
    """masks[b, k] = SAM decoder(image embedding b, prompt tokens[b, k]): one decoder pass per (sample, class),
    all of them batched. No dense prompt and no IoU head (Zeus, like SAM with neither mask nor IoU output)."""

    def __init__(self, dim: int = 256, depth: int = 2, num_heads: int = 8, mlp_dim: int = 2048):
        super().__init__()
        self.sam_decoder = MaskDecoder(transformer_dim=dim, num_multimask_outputs=0,
                                       transformer=TwoWayTransformer(depth=depth, embedding_dim=dim,
                                                                     num_heads=num_heads, mlp_dim=mlp_dim))
        # One mask token per prompt; the IoU token and head would be trained by nothing (no IoU target).
        del self.sam_decoder.iou_token
        del self.sam_decoder.iou_prediction_head
        self.dim = dim

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                prompt_tokens: torch.Tensor) -> torch.Tensor:
        """image_embeddings [B, D, h, w], image_pe [D, h, w], prompt_tokens [B, K, T, D] -> mask logits
        [B, K, 4h, 4w]."""
        b, k, t, d = prompt_tokens.shape
        if image_embeddings.shape[0] != b or image_embeddings.shape[1] != d:
            raise ValueError(f"image embeddings {tuple(image_embeddings.shape)} do not fit prompts "
                             f"{tuple(prompt_tokens.shape)} (batch and width must agree)")
        dec = self.sam_decoder
        mask_token = dec.mask_tokens.weight.unsqueeze(0).expand(b * k, -1, -1)  # [B*K, 1, D]
        tokens = torch.cat((mask_token, prompt_tokens.reshape(b * k, t, d)), dim=1)
        src = torch.repeat_interleave(image_embeddings, k, dim=0)  # sample b -> rows b*K .. b*K+K-1
        pos_src = image_pe.unsqueeze(0).expand(b * k, -1, -1, -1)
        _, _, h, w = src.shape
        hs, src = dec.transformer(src, pos_src, tokens)
        upscaled = dec.output_upscaling(src.transpose(1, 2).reshape(b * k, d, h, w))
        hyper_in = dec.output_hypernetworks_mlps[0](hs[:, 0, :])  # [B*K, D/8]
        _, c, uh, uw = upscaled.shape
        masks = torch.bmm(hyper_in.unsqueeze(1), upscaled.reshape(b * k, c, uh * uw))
        return masks.reshape(b, k, uh, uw)
