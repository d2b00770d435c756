"""MulModSeg on Primus: what the wrapper pools and decodes, per-sample results, the trainers' build path and
Primus's parts they keep, the parameter overhead, and the error for networks nothing can wrap."""
import copy
import os
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dynamic_network_architectures.architectures.primus import Primus
from nnunetv2.training.nnUNetTrainer.primus.primus_trainers import AbstractPrimus, nnUNet_Primus_M_Trainer
from nnunetv2.training.nnUNetTrainer.variants.lr_schedule.nnUNetTrainer_warmup import nnUNetTrainer_warmup
from nnunet_mulmod.modeling.backbones import UnsupportedBackboneError, check_backbone, wrap_backbone
from nnunet_mulmod.modeling.mulmodseg_net import MulModSegNet
from nnunet_mulmod.modeling.primus_net import PrimusMulModSegNet
from nnunet_mulmod.training.mulmodseg_trainer import PLANS_KEY, nnUNetTrainerMulModSeg
from nnunet_mulmod.training.primus_trainers import nnUNetTrainerALTPrimus, nnUNetTrainerMulModSegPrimus

sys.path.insert(0, os.path.dirname(__file__))
from test_mulmodseg_network import reference_head  # noqa: E402
from test_zeus_network import plans_2d  # noqa: E402

PATCH = (16, 32, 16)


def tiny_primus(classes=4, patch=PATCH):
    # Primus-M's construction (8^3 tokens, layer scale, scaled attention) at a CPU test's size
    return Primus(1, 48, (8, 8, 8), classes, 2, 2, patch, drop_path_rate=0.2, scale_attn_inner=True, init_values=0.1)


def test_pools_the_transformer_tokens_and_matches_the_per_sample_reference():
    torch.manual_seed(0)
    vanilla = tiny_primus().eval()
    captured = {}
    vanilla.up_projection.register_forward_hook(lambda m, inp, out: captured.update(tokens=inp[0]))
    x = torch.randn(3, 1, *PATCH)
    with torch.no_grad():
        vanilla(x)
    net = wrap_backbone(copy.deepcopy(vanilla), ["CT", "MR"], 4, 12).eval()
    assert isinstance(net, PrimusMulModSegNet)
    net.set_text_embeddings(torch.randn(2, 4, 12))
    modality = torch.tensor([0, 1, 1])
    with torch.no_grad():
        out = net(x, modality)
        pooled, tokens = net.encode(x)
    # the image branch sees the transformer's output tokens [B, E, 2, 4, 2], mean-pooled
    assert tokens.shape == (3, 48, 2, 4, 2) and torch.allclose(tokens, captured["tokens"], atol=1e-6)
    assert torch.allclose(pooled, captured["tokens"].flatten(2).mean(2), atol=1e-6)
    # the patch decoder is Primus's, but for its last layer, which emits the head's 8 channels
    vanilla_decoder = dict(vanilla.up_projection.named_parameters())
    for name, p in net.decoder.named_parameters():
        if not name.startswith(f"decode.{len(net.decoder.decode) - 1}."):
            assert torch.equal(p, vanilla_decoder[name]), name
    assert net.decoder.decode[-1].out_channels == 8
    assert net.decoder.decode[-1].in_channels == vanilla.up_projection.decode[-1].in_channels
    # one logit map per class at full resolution, each sample with its own modality's prompts: the per-sample,
    # per-class loop of the paper's definition, on the sample's own tokens
    assert isinstance(out, torch.Tensor) and out.shape == (3, 4, *PATCH)  # no deep supervision, as Primus
    with torch.no_grad():
        for i in range(3):
            params = net.controller(pooled[i:i + 1], net.text_embeddings[modality[i]][None])
            features = net.decoder(captured["tokens"][i:i + 1])
            assert torch.allclose(out[i:i + 1], reference_head(features, params), atol=1e-5)
            alone = net(x[i:i + 1], int(modality[i]))
            assert torch.allclose(out[i:i + 1], alone, atol=1e-5)
        assert not torch.allclose(net(x, 0), net(x, 1))  # the prompts change the result


def test_shares_selection_and_the_self_contained_state_of_the_unet_version():
    torch.manual_seed(0)
    net = wrap_backbone(tiny_primus(), ["CT", "MR"], 4, 12).eval()
    table = torch.randn(2, 4, 12)
    net.set_text_embeddings(table)
    x = torch.randn(2, 1, *PATCH)
    with torch.no_grad():
        as_mr = net(x, 1)
        net.selected_modality = 1  # how the prediction hook selects a case's modality
        assert torch.allclose(net(x), as_mr, atol=1e-6)
        net.selected_modality = None
        with net.using_modality(1):  # how the ALT trainer selects a batch's modality
            assert torch.allclose(net(x), as_mr, atol=1e-6)
    assert isinstance(net, MulModSegNet)  # what nnUNetv2_predict's modality hook looks for
    fresh = wrap_backbone(tiny_primus(), ["CT", "MR"], 4, 12).eval()
    fresh.load_state_dict(net.state_dict())  # the table travels in the checkpoint
    assert torch.equal(fresh.text_embeddings, table)
    with torch.no_grad():
        assert torch.allclose(fresh(x, 1), as_mr, atol=1e-6)


def _plans_manager(embed_dim=512, classes=14):
    spec = {"modalities": ["CT", "MR"], "class_names": [f"c{i}" for i in range(classes)], "embed_dim": embed_dim,
            "controller_hidden": 256, "controller_version": 2}
    return SimpleNamespace(plans={PLANS_KEY: spec}, plans_name="p"), SimpleNamespace(
        patch_size=[160, 160, 160], network_arch_class_name="(Primus ignores it)")


def test_primus_trainers_build_primus_m_and_keep_primus_training_rules():
    plans_manager, configuration_manager = _plans_manager()
    with torch.device("meta"):  # Primus-M at nnU-Net's size, without allocating its 150M parameters
        vanilla = nnUNet_Primus_M_Trainer.build_network_architecture(plans_manager, configuration_manager, 1, 14)
        ours = nnUNetTrainerMulModSegPrimus.build_network_architecture(plans_manager, configuration_manager, 1, 14)
        baseline = nnUNetTrainerALTPrimus.build_network_architecture(plans_manager, configuration_manager, 1, 14)
    assert isinstance(ours, PrimusMulModSegNet) and ours.encoder.embed_dim == 864 and len(ours.encoder.eva.blocks) == 16
    assert type(baseline) is type(vanilla)  # the vision-only baseline is nnU-Net's Primus-M as it is
    n_vanilla = sum(p.numel() for p in vanilla.parameters())
    ratio = sum(p.numel() for p in ours.parameters()) / n_vanilla
    assert 1.0 < ratio <= 1.02, ratio  # CLIP-sized table (512), 14 classes like AMOS
    # optimizer (AdamW 3e-4), warm-up then poly, gradient clipping and no deep supervision: nnU-Net's Primus trainer's
    for trainer in (nnUNetTrainerMulModSegPrimus, nnUNetTrainerALTPrimus):
        assert trainer.configure_optimizers is AbstractPrimus.configure_optimizers
        assert trainer.set_deep_supervision_enabled is AbstractPrimus.set_deep_supervision_enabled
        assert trainer.load_checkpoint is nnUNetTrainer_warmup.load_checkpoint  # restores the warm-up stage
        # our train_step (ALT, modality) hands on to Primus's, not to nnU-Net's default one
        assert next(c for c in trainer.__mro__ if "train_step" in vars(c) and c.__module__.startswith("nnunetv2")) \
            is AbstractPrimus

def test_networks_that_cannot_be_wrapped_fail_with_the_class_and_the_supported_ones():
    with pytest.raises(UnsupportedBackboneError) as error:
        wrap_backbone(nn.Conv3d(1, 2, 1), ["CT", "MR"], 2, 4)
    message = str(error.value)
    assert "torch.nn.modules.conv.Conv3d" in message
    assert all(name in message for name in ("PlainConvUNet", "ResidualEncoderUNet", "Primus",
                                            "-tr nnUNetTrainerMulModSegPrimus"))
    # through the trainer's build, as nnU-Net's initialize and predictor call it: the plans are named too
    plans_manager, configuration_manager = _plans_manager(embed_dim=4, classes=2)
    plans_manager.plans_name = "nnUNetOddPlans"
    configuration_manager.network_arch_class_name = "torch.nn.Identity"

    class OddTrainer(nnUNetTrainerMulModSeg):
        @classmethod
        def build_backbone(cls, *args, **kwargs):
            return nn.Identity()

    with pytest.raises(UnsupportedBackboneError, match=r"torch\.nn\.modules\.linear\.Identity \(plans "
                                                       r"'nnUNetOddPlans', whose network_class_name is 'torch\.nn"
                                                       r"\.Identity'\)"):
        OddTrainer.build_network_architecture(plans_manager, configuration_manager, 1, 2)


def test_the_trainers_check_the_backbone_before_building_anything():
    # what the MulModSeg trainers call before nnU-Net's __init__: the plans' network, built on the meta device
    dataset_json = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}}
    plans = plans_2d()
    check_backbone(nnUNetTrainerMulModSeg, plans, "2d", dataset_json)  # PlainConvUNet: fine
    primus_plans = plans_2d(patch=(16, 32, 16), configuration="3d_fullres")
    check_backbone(nnUNetTrainerMulModSegPrimus, primus_plans, "3d_fullres", dataset_json)  # Primus-M: fine
    plans["plans_name"] = "nnUNetOddPlans"
    plans["configurations"]["2d"]["architecture"] = {"network_class_name": "torch.nn.Identity", "arch_kwargs": {},
                                                     "_kw_requires_import": []}
    with pytest.raises(UnsupportedBackboneError, match=r"torch\.nn\.modules\.linear\.Identity \(plans "
                                                       r"'nnUNetOddPlans', whose network_class_name is 'torch\.nn"
                                                       r"\.Identity'\).*Supported: PlainConvUNet"):
        check_backbone(nnUNetTrainerMulModSeg, plans, "2d", dataset_json)
    # the Primus trainer builds Primus whatever network the plans name
    primus_plans["configurations"]["3d_fullres"]["architecture"] = plans["configurations"]["2d"]["architecture"]
    check_backbone(nnUNetTrainerMulModSegPrimus, primus_plans, "3d_fullres", dataset_json)
