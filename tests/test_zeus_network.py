"""Zeus network: batched SAM decoder vs a per-sample loop, late / hybrid fusion with 2 and 4 channels, the
self-contained state dict, parameter counts, and bad input (no spec, 3D plans, SAM checkpoint mismatch)."""
import copy

import pytest
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from segment_anything.modeling import MaskDecoder, TwoWayTransformer

from nnunet_mulmod.zeus.modeling import (InstructionMaskDecoder, SamViTFeatureEncoder, ZeusCheckpointError,
                                         load_sam_image_encoder_weights)
from nnunet_mulmod.zeus.modeling.image_encoders import detect_sam_variant
from nnunet_mulmod.zeus.network import ZEUS_PLANS_KEY, ZeusSpecError, build_zeus_network, make_spec

MODALITY_SETS = {2: ["T2", "ADC"], 4: ["FLAIR", "T1", "T1Gd", "T2"]}


def plans_2d(patch=(32, 32), n_stages=4, features=None, configuration="2d"):
    features = features or [min(16 * 2 ** i, 512) for i in range(n_stages)]
    conv_dim = len(patch)
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": n_stages, "features_per_stage": features,
                            "conv_op": f"torch.nn.modules.conv.Conv{conv_dim}d",
                            "kernel_sizes": [[3] * conv_dim] * n_stages,
                            "strides": [[1] * conv_dim] + [[2] * conv_dim] * (n_stages - 1),
                            "n_conv_per_stage": [2] * n_stages, "n_conv_per_stage_decoder": [2] * (n_stages - 1),
                            "conv_bias": True, "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{conv_dim}d",
                            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    cfg = {"data_identifier": f"nnUNetPlans_{configuration}", "preprocessor_name": "DefaultPreprocessor",
           "batch_size": 2, "patch_size": list(patch), "spacing": [1.0] * conv_dim, "architecture": arch}
    return {"dataset_name": "Dataset990_ZeusToy", "plans_name": "nnUNetPlans", "configurations": {configuration: cfg}}


def build(fusion, n_channels, n_classes=3, text_dim=12, **plan_kwargs):
    mods = MODALITY_SETS[n_channels]
    plans = plans_2d(**plan_kwargs)
    classes = ["background"] + [f"c{i}" for i in range(1, n_classes)]
    plans[ZEUS_PLANS_KEY] = make_spec(fusion, dict(enumerate(mods)), mods, classes, text_dim, {"type": "unet"},
                                      dim=32, num_heads=4, mlp_dim=64)
    pm = PlansManager(plans)
    torch.manual_seed(0)
    net = build_zeus_network(pm, pm.get_configuration(list(plans["configurations"])[0]), n_channels, n_classes,
                             fusion)
    with torch.no_grad():
        net.instruction_embeddings.normal_()
    return net.eval(), plans


def small_decoder(dim=32):
    torch.manual_seed(0)
    return InstructionMaskDecoder(dim=dim, depth=2, num_heads=4, mlp_dim=64).eval()


def test_decoder_batch_matches_per_sample_loop_and_classes_are_independent():
    decoder = small_decoder()
    b, k, t, d, h, w = 3, 4, 2, 32, 5, 6
    image, pe, prompts = torch.randn(b, d, h, w), torch.randn(d, h, w), torch.randn(b, k, t, d)
    with torch.no_grad():
        batched = decoder(image, pe, prompts)
        reference = torch.cat([decoder(image[i:i + 1], pe, prompts[i:i + 1]) for i in range(b)])
        changed = prompts.clone()
        changed[1, 2] += 1.0  # another instruction for class 2 of sample 1 only
        after = decoder(image, pe, changed)
    assert batched.shape == (b, k, 4 * h, 4 * w)  # two transposed convs: x4
    torch.testing.assert_close(batched, reference, atol=1e-5, rtol=1e-5)
    diff = (after - batched).abs().amax(dim=(2, 3))
    assert diff[1, 2] > 1e-4 and diff.sum() == diff[1, 2]  # one decoder pass per (sample, class)


def test_decoder_reuses_segment_anything_modules_unchanged():
    decoder = small_decoder()
    assert isinstance(decoder.sam_decoder, MaskDecoder) and isinstance(decoder.sam_decoder.transformer, TwoWayTransformer)
    assert not hasattr(decoder.sam_decoder, "iou_prediction_head")
    # A stock MaskDecoder (one image, one prompt per call: its intended use) takes our weights as they are.
    torch.manual_seed(0)
    stock = MaskDecoder(transformer_dim=32, num_multimask_outputs=0,
                        transformer=TwoWayTransformer(depth=2, embedding_dim=32, num_heads=4, mlp_dim=64))
    missing, unexpected = stock.load_state_dict(decoder.sam_decoder.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("iou_token", "iou_prediction_head")) for k in missing)


@pytest.mark.parametrize("fusion", ["late", "hybrid"])
@pytest.mark.parametrize("n_channels", [2, 4])
def test_fusion_shapes_batch_consistency_and_gradients(fusion, n_channels):
    net, _ = build(fusion, n_channels)
    x = torch.randn(3, n_channels, 32, 32)
    with torch.no_grad():
        out = net(x)
        single = torch.cat([net(x[i:i + 1]) for i in range(3)])
    assert out.shape == (3, 3, 32, 32)  # logits at input resolution, one per class
    torch.testing.assert_close(out, single, atol=1e-4, rtol=1e-4)
    net.train()
    net(x).logsumexp(1).mean().backward()
    assert net.prompt_projection.weight.grad.abs().sum() > 0
    assert (net.feature_fusion is not None) == (fusion == "hybrid")
    with pytest.raises(ValueError, match=f"built for {n_channels} channels"):
        net(torch.randn(1, n_channels + 1, 32, 32))


def test_late_fusion_is_the_mean_of_per_channel_decodings():
    net, _ = build("late", 2)
    x = torch.randn(2, 2, 32, 32)
    with torch.no_grad():
        prompts = net.prompt_projection(net.instruction_embeddings)  # [M, K, D]
        per_channel = []
        for c in range(2):
            features = net.image_encoder(x[:, c:c + 1])
            pe = net.pe_layer(features.shape[-2:])
            tokens = prompts[c].unsqueeze(0).unsqueeze(2).expand(2, -1, -1, -1)
            per_channel.append(net.decoder(features, pe, tokens))
        expected = torch.nn.functional.interpolate(torch.stack(per_channel).mean(0), (32, 32), mode="bilinear")
        torch.testing.assert_close(net(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fusion", ["late", "hybrid"])
def test_hybrid_and_late_use_every_channels_instruction(fusion):
    net, _ = build(fusion, 2)
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        before = net(x)
        net.instruction_embeddings[1] += 1.0  # the second channel's (ADC) instructions
        assert (net(x) - before).abs().max() > 1e-4


def test_state_dict_carries_the_instruction_table():
    net, plans = build("late", 2)
    state = net.state_dict()
    assert "instruction_embeddings" in state
    pm = PlansManager(copy.deepcopy(plans))  # what nnUNetv2_predict does: rebuild from plans, load weights
    rebuilt = build_zeus_network(pm, pm.get_configuration("2d"), 2, 3, "late").eval()
    rebuilt.load_state_dict(state)
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), net(x))


def test_trainable_parameters_below_the_papers_zeus():
    """A typical nnU-Net 2d plan (512x512, 8 stages, 32..512 features), MedCLIP's 512-d text, SAM's decoder."""
    counts = {}
    for fusion in ("late", "hybrid"):
        plans = plans_2d(patch=(512, 512), n_stages=8, features=[32, 64, 128, 256, 512, 512, 512, 512])
        plans[ZEUS_PLANS_KEY] = make_spec(fusion, {0: "T2", 1: "ADC"}, ["T2", "ADC"], ["background", "a", "b"], 512,
                                          {"type": "unet"})
        pm = PlansManager(plans)
        net = build_zeus_network(pm, pm.get_configuration("2d"), 2, 3, fusion)
        counts[fusion] = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert counts["late"] < 12.44e6 and counts["hybrid"] < 8.06e6
    assert counts["hybrid"] > counts["late"]  # + the 1x1 fusion conv


def test_builder_errors_without_spec_or_with_3d_plans():
    pm = PlansManager(plans_2d())
    with pytest.raises(ZeusSpecError, match="no 'zeus' entry"):
        build_zeus_network(pm, pm.get_configuration("2d"), 2, 3, "late")
    plans = plans_2d(patch=(16, 32, 32), configuration="3d_fullres")
    plans[ZEUS_PLANS_KEY] = make_spec("late", {0: "T2", 1: "ADC"}, ["T2", "ADC"], ["b", "x", "y"], 8, {"type": "unet"})
    pm = PlansManager(plans)
    with pytest.raises(ZeusSpecError, match="2D method"):
        build_zeus_network(pm, pm.get_configuration("3d_fullres"), 2, 3, "late")
    with pytest.raises(ZeusSpecError, match="for late fusion"):
        build_zeus_network(pm, pm.get_configuration("3d_fullres"), 2, 3, "hybrid")


def test_sam_checkpoint_mismatch_is_reported(tmp_path):
    with torch.device("meta"):  # SAM's ViT-B without allocating its 90M weights
        encoder = SamViTFeatureEncoder("vit_b")
    assert not any(p.requires_grad for p in encoder.parameters())
    # a ViT-L checkpoint given for ViT-B, truncated: wrong shapes and missing keys are both named
    fake = {"image_encoder.patch_embed.proj.weight": torch.zeros(1024, 3, 16, 16),
            "image_encoder.patch_embed.proj.bias": torch.zeros(1024), "mask_decoder.x": torch.zeros(1)}
    torch.save(fake, tmp_path / "sam.pth")
    assert detect_sam_variant(str(tmp_path / "sam.pth")) == "vit_l"
    with pytest.raises(ZeusCheckpointError, match=r"does not match the vit_b image encoder: missing .*wrong shapes "
                                                  r"patch_embed.proj.weight: checkpoint \(1024, 3, 16, 16\)"):
        load_sam_image_encoder_weights(encoder, str(tmp_path / "sam.pth"))
    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(ZeusCheckpointError, match="not a SAM ViT checkpoint"):
        detect_sam_variant(str(tmp_path / "other.pth"))
    with pytest.raises(ZeusCheckpointError, match="does not exist.*local path"):
        detect_sam_variant(str(tmp_path / "absent.pth"))
