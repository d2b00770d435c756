"""Which nnU-Net networks MulModSeg can wrap, and with which wrapper.

The trainers build the network exactly as the nnU-Net trainer they extend would (the plans' U-Net, or
Primus for the Primus trainers) and hand it to :func:`wrap_backbone`. Anything else fails here, while the
trainer initialises (before any data is loaded or any step is taken) and again when a predictor rebuilds
the network, with a message that names the class and what is supported.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from nnunet_mulmod.modeling.mulmodseg_net import MulModSegNet

# (network class, where it comes from, how to select it): the README's backbone table says the same
SUPPORTED_BACKBONES = (
    ("PlainConvUNet", "nnUNetPlans (nnU-Net's default planner), 2d and 3d", "-tr nnUNetTrainerMulModSeg"),
    ("ResidualEncoderUNet", "nnUNetResEncUNet{M,L,XL}Plans (-pl nnUNetPlannerResEnc{M,L,XL}), 2d and 3d",
     "-tr nnUNetTrainerMulModSeg -p nnUNetResEncUNetMPlans"),
    ("Primus", "nnU-Net's Primus trainers (the plans give the patch size only; 3d, divisible by 8)",
     "-tr nnUNetTrainerMulModSegPrimus"),
)


class UnsupportedBackboneError(TypeError):
    pass


def _is_encoder_decoder_unet(network: nn.Module) -> bool:
    # what MulModSegNet.adopt_backbone uses: nnU-Net's U-Nets all have these (PlainConvUNet, ResidualEncoderUNet,
    # ResidualUNet), and so do user U-Nets built from dynamic_network_architectures' encoders and decoders
    return hasattr(network, "encoder") and hasattr(network, "decoder") and hasattr(network.decoder, "seg_layers")


def supported_backbones_text() -> str:
    return "; ".join(f"{name} ({source}; {how})" for name, source, how in SUPPORTED_BACKBONES)


def wrap_backbone(network: nn.Module, modalities: Sequence[str], num_classes: int, embed_dim: int,
                  controller_hidden: int = 256, normalized_controller: bool = True, context: str = "") -> MulModSegNet:
    """nnU-Net's network -> the MulModSeg network around it (MulModSegNet or PrimusMulModSegNet).

    ``context`` (e.g. which plans asked for the network) goes into the error message.
    """
    from dynamic_network_architectures.architectures.primus import Primus
    from nnunet_mulmod.modeling.primus_net import PrimusMulModSegNet

    if isinstance(network, Primus):
        wrapper = PrimusMulModSegNet
    elif _is_encoder_decoder_unet(network):
        wrapper = MulModSegNet
    else:
        cls = type(network)
        raise UnsupportedBackboneError(
            f"MulModSeg cannot wrap the network class {cls.__module__}.{cls.__qualname__}{context}: it is neither an "
            f"encoder-decoder U-Net (with .encoder, .decoder and .decoder.seg_layers) nor Primus. Supported: "
            f"{supported_backbones_text()}.")
    return wrapper(network, modalities, num_classes, embed_dim, controller_hidden,
                   normalized_controller=normalized_controller)
