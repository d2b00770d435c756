"""Which nnU-Net networks MulModSeg can wrap, and with which wrapper.

The trainers build the network exactly as the nnU-Net trainer they extend would (the plans' U-Net, or
Primus for the Primus trainers) and hand it to :func:`wrap_backbone`. Anything else fails with a message that names
the class and what is supported: in the MulModSeg trainer's ``__init__``, before nnU-Net creates the results
folder (:func:`check_backbone`: the backbone is built on the meta device, which allocates nothing), and again
wherever the network is really built (the trainer's initialize, a predictor rebuilding the network).
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


def plans_context(plans_manager, configuration_manager) -> str:
    """Which plans asked for the network, for the error message."""
    return (f" (plans {plans_manager.plans_name!r}, whose network_class_name is "
            f"{configuration_manager.network_arch_class_name!r})")


def wrapper_for(network: nn.Module, context: str = "") -> type:
    """The MulModSeg class that wraps ``network`` (MulModSegNet or PrimusMulModSegNet); UnsupportedBackboneError
    naming its class and the supported ones if there is none."""
    from dynamic_network_architectures.architectures.primus import Primus
    from nnunet_mulmod.modeling.primus_net import PrimusMulModSegNet

    if isinstance(network, Primus):
        return PrimusMulModSegNet
    if _is_encoder_decoder_unet(network):
        return MulModSegNet
    cls = type(network)
    raise UnsupportedBackboneError(
        f"MulModSeg cannot wrap the network class {cls.__module__}.{cls.__qualname__}{context}: it is neither an "
        f"encoder-decoder U-Net (with .encoder, .decoder and .decoder.seg_layers) nor Primus. Supported: "
        f"{supported_backbones_text()}.")


def check_backbone(trainer_class: type, plans: dict, configuration: str, dataset_json: dict) -> None:
    """Raise UnsupportedBackboneError now if ``trainer_class.build_backbone`` would build a network MulModSeg cannot
    wrap. Called by the trainer before nnU-Net's ``__init__`` (which creates the results folder and the log). The
    backbone is built on the meta device: no memory, no initialisation cost, even for Primus-L. A build that fails
    on the meta device for another reason is left to the real build (the trainer's initialize), which wraps
    through :func:`wrap_backbone` and so checks again."""
    import torch
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    try:
        plans_manager = PlansManager(plans)
        configuration_manager = plans_manager.get_configuration(configuration)
        num_inputs = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
        num_outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
        with torch.device("meta"):
            backbone = trainer_class.build_backbone(plans_manager, configuration_manager, num_inputs, num_outputs)
    except Exception:  # noqa: BLE001 - not this check's business: the real build reports it
        return
    wrapper_for(backbone, plans_context(plans_manager, configuration_manager))


def wrap_backbone(network: nn.Module, modalities: Sequence[str], num_classes: int, embed_dim: int,
                  controller_hidden: int = 256, normalized_controller: bool = True, context: str = "") -> MulModSegNet:
    """nnU-Net's network -> the MulModSeg network around it (MulModSegNet or PrimusMulModSegNet).

    ``context`` (e.g. which plans asked for the network) goes into the error message.
    """
    return wrapper_for(network, context)(network, modalities, num_classes, embed_dim, controller_hidden,
                                         normalized_controller=normalized_controller)
