"""MulModSeg network: dynamic head parameters, grouped convs vs a per-sample reference, U-Net wrapping."""
import pytest
import torch
from torch import nn

from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from nnunet_mulmod.modality import ModalityError
from nnunet_mulmod.modeling.dynamic_head import (NUM_DYNAMIC_PARAMS, MulModSegController, dynamic_head,
                                                 split_dynamic_params)
from nnunet_mulmod.modeling.mulmodseg_net import MulModSegNet


def reference_head(features, params):
    """Per-sample, per-class loop with explicit matrix products: the paper's definition."""
    b, _, *spatial = features.shape
    out = torch.zeros(b, params.shape[1], *spatial, dtype=features.dtype)
    for i in range(b):
        f = features[i].reshape(8, -1)
        for k in range(params.shape[1]):
            p = params[i, k]
            w1, w2, w3 = p[:64].view(8, 8), p[64:128].view(8, 8), p[128:136].view(1, 8)
            b1, b2, b3 = p[136:144], p[144:152], p[152:153]
            h = torch.relu(w1 @ f + b1[:, None])
            h = torch.relu(w2 @ h + b2[:, None])
            out[i, k] = (w3 @ h + b3[:, None]).view(*spatial)
    return out


def test_dynamic_parameter_count_and_split():
    assert NUM_DYNAMIC_PARAMS == 8 * 8 + 8 * 8 + 8 * 1 + 8 + 8 + 1 == 153
    params = torch.arange(2 * 3 * 153, dtype=torch.float32).view(2, 3, 153)
    weights, biases = split_dynamic_params(params)
    assert [tuple(w.shape) for w in weights] == [(48, 8), (48, 8), (6, 8)]
    assert [tuple(b.shape) for b in biases] == [(48,), (48,), (6,)]
    # sample 1, class 2: its first-layer weights are the first 64 numbers of its parameter vector
    assert torch.equal(weights[0][(1 * 3 + 2) * 8:(1 * 3 + 2) * 8 + 8].flatten(), params[1, 2, :64])
    assert torch.equal(biases[2][1 * 3 + 2:1 * 3 + 3], params[1, 2, 152:153])


@pytest.mark.parametrize("spatial", [(5, 6, 7), (9, 11)])
def test_grouped_head_equals_per_sample_reference(spatial):
    torch.manual_seed(0)
    features = torch.randn(3, 8, *spatial, dtype=torch.float64)
    params = torch.randn(3, 4, 153, dtype=torch.float64)
    expected = reference_head(features, params)
    assert torch.allclose(dynamic_head(features, params, max_hidden_ratio=1e9), expected, atol=1e-10)  # one pass
    assert torch.allclose(dynamic_head(features, params, max_hidden_ratio=0.5), expected, atol=1e-10)  # slabs


def test_slabbed_checkpointed_head_matches_single_pass_gradients():
    torch.manual_seed(0)
    features = torch.randn(2, 8, 12, 5, 4, dtype=torch.float64, requires_grad=True)
    params = torch.randn(2, 14, 153, dtype=torch.float64, requires_grad=True)
    out = dynamic_head(features, params)  # 14 classes -> processed in slabs along the first spatial axis
    (out ** 2).sum().backward()
    g_features, g_params = features.grad.clone(), params.grad.clone()
    features.grad = params.grad = None
    (dynamic_head(features, params, max_hidden_ratio=1e9) ** 2).sum().backward()  # single pass, no checkpoint
    assert torch.allclose(g_features, features.grad) and torch.allclose(g_params, params.grad)


def test_controller_conditions_on_text_and_image():
    torch.manual_seed(0)
    controller = MulModSegController(32, 16)
    pooled, text = torch.randn(2, 32), torch.randn(2, 5, 16)
    params = controller(pooled, text)
    assert params.shape == (2, 5, 153)
    assert not torch.allclose(params[:, 0], params[:, 1])  # different class embeddings -> different heads
    other = controller(pooled.flip(0), text)
    assert not torch.allclose(params, other)  # the image features matter too


def _plain_unet(dim=3, ds=True, classes=4):
    conv, norm = (nn.Conv3d, nn.InstanceNorm3d) if dim == 3 else (nn.Conv2d, nn.InstanceNorm2d)
    return PlainConvUNet(1, 4, (8, 16, 32, 32), conv, 3, (1, 2, 2, 2), 2, classes, (2, 2, 2), False, norm,
                         {"affine": True}, None, None, nn.LeakyReLU, {"inplace": True}, deep_supervision=ds)


def _resenc_unet(dim=2, classes=4):
    conv, norm = (nn.Conv3d, nn.InstanceNorm3d) if dim == 3 else (nn.Conv2d, nn.InstanceNorm2d)
    return ResidualEncoderUNet(1, 3, (8, 16, 32), conv, 3, (1, 2, 2), (1, 1, 1), classes, (1, 1), False, norm,
                               {"affine": True}, None, None, nn.LeakyReLU, {"inplace": True}, deep_supervision=True)


@pytest.mark.parametrize("make_unet,shape", [(lambda: _plain_unet(3), (2, 1, 16, 16, 16)),
                                             (lambda: _plain_unet(2), (2, 1, 32, 32)),
                                             (lambda: _resenc_unet(2), (2, 1, 32, 32))])
def test_wraps_unets_with_deep_supervision(make_unet, shape):
    torch.manual_seed(0)
    unet = make_unet()
    vanilla_shapes = [tuple(o.shape) for o in unet(torch.randn(*shape))]
    net = MulModSegNet(unet, ["CT", "MR", "MR-T2"], 4, 12)
    net.set_text_embeddings(torch.randn(3, 4, 12))
    out = net(torch.randn(*shape), modality=1)
    # same outputs as nnU-Net's network: one logit map per class at every deep-supervision scale
    assert [tuple(o.shape) for o in out] == vanilla_shapes
    net.decoder.deep_supervision = False
    assert tuple(net(torch.randn(*shape), modality=0).shape) == vanilla_shapes[0]


def test_modality_prompts_change_prediction_and_per_sample_selection():
    torch.manual_seed(0)
    net = MulModSegNet(_plain_unet(3, ds=False), ["CT", "MR"], 4, 12).eval()
    net.set_text_embeddings(torch.randn(2, 4, 12))
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        as_ct, as_mr = net(x, 0), net(x, 1)
        mixed = net(x, torch.tensor([0, 1]))
    assert not torch.allclose(as_ct, as_mr)
    assert torch.allclose(mixed[0], as_ct[0], atol=1e-6) and torch.allclose(mixed[1], as_mr[1], atol=1e-6)
    # context manager and selected_modality are used when no argument is given, in that order
    with torch.no_grad(), net.using_modality(1):
        assert torch.allclose(net(x), as_mr, atol=1e-6)
    net.selected_modality = 0
    with torch.no_grad():
        assert torch.allclose(net(x), as_ct, atol=1e-6)


def test_automatic_modality_uses_classifier_and_counts_votes():
    torch.manual_seed(0)
    net = MulModSegNet(_plain_unet(3, ds=False), ["CT", "MR"], 4, 12).eval()
    net.set_text_embeddings(torch.randn(2, 4, 12))
    x = torch.randn(2, 1, 16, 16, 16)
    with pytest.raises(ModalityError, match="never fitted"), torch.no_grad():
        net(x)  # an unfitted classifier is refused, not used
    with torch.no_grad():
        net.modality_classifier.linear.weight.zero_()
        net.modality_classifier.linear.bias.copy_(torch.tensor([0.0, 5.0]))  # always says MR
        net.modality_classifier.fitted.fill_(1)
    net.auto_votes = [0, 0]
    with torch.no_grad():
        auto = net(x)
        as_mr = net(x, 1)
    assert net.auto_votes == [0, 2]
    assert torch.allclose(auto, as_mr, atol=1e-6)
    # the classifier reads the mean and std of every encoder stage
    assert net.last_modality_features.shape == (2, 2 * sum(net.encoder.output_channels))


def test_classifier_travels_in_checkpoint_and_legacy_checkpoints_load_unfitted():
    net = MulModSegNet(_plain_unet(3), ["CT", "MR"], 4, 12)
    with torch.no_grad():
        net.modality_classifier.linear.weight.normal_()
        net.modality_classifier.feature_mean.normal_()
        net.modality_classifier.fitted.fill_(1)
    fresh = MulModSegNet(_plain_unet(3), ["CT", "MR"], 4, 12)
    fresh.load_state_dict(net.state_dict())
    for name, value in net.modality_classifier.state_dict().items():
        assert torch.equal(fresh.modality_classifier.state_dict()[name], value), name
    # nnunet-mulmod <= 0.3: a bare Linear on the bottleneck mean; the segmentation weights load, detection refuses
    legacy = {k: v for k, v in net.state_dict().items() if not k.startswith("modality_classifier.")}
    legacy["modality_classifier.weight"] = torch.randn(2, net.encoder.output_channels[-1])
    legacy["modality_classifier.bias"] = torch.zeros(2)
    old = MulModSegNet(_plain_unet(3), ["CT", "MR"], 4, 12)
    old.load_state_dict(legacy)
    for name, value in legacy.items():
        if not name.startswith("modality_classifier."):
            assert torch.equal(old.state_dict()[name], value), name
    assert int(old.modality_classifier.fitted) == 0
    with pytest.raises(ModalityError, match="never fitted"), torch.no_grad():
        old.eval()(torch.randn(1, 1, 16, 16, 16))


def test_text_embeddings_travel_in_state_dict_but_selection_does_not():
    net = MulModSegNet(_plain_unet(3), ["CT", "MR"], 4, 12)
    table = torch.randn(2, 4, 12)
    net.set_text_embeddings(table)
    state = net.state_dict()
    assert torch.equal(state["text_embeddings"], table)
    fresh = MulModSegNet(_plain_unet(3), ["CT", "MR"], 4, 12)
    fresh.selected_modality = 1
    fresh.load_state_dict(state)  # nnU-Net's predictor does this once per case
    assert torch.equal(fresh.text_embeddings, table) and fresh.selected_modality == 1
    with pytest.raises(ValueError, match="do not fit"):
        net.set_text_embeddings(torch.randn(3, 4, 12))


def test_parameter_overhead_is_small_on_a_realistic_unet():
    unet = PlainConvUNet(1, 6, (32, 64, 128, 256, 320, 320), nn.Conv3d, 3, (1, 2, 2, 2, 2, 2), 2, 14,
                         (2, 2, 2, 2, 2), False, nn.InstanceNorm3d, {"affine": True}, None, None, nn.LeakyReLU,
                         {"inplace": True}, deep_supervision=True)
    vanilla = sum(p.numel() for p in unet.parameters())
    net = MulModSegNet(unet, ["CT", "MR"], 14, 512)
    ratio = sum(p.numel() for p in net.parameters()) / vanilla
    assert 1.0 < ratio < 1.02


def test_rejects_networks_without_unet_structure():
    with pytest.raises(TypeError, match="encoder-decoder"):
        MulModSegNet(nn.Conv3d(1, 2, 1), ["CT", "MR"], 2, 4)


def _generated_weight_std(controller, pooled, text):
    weights, _ = split_dynamic_params(controller(pooled, text))
    return [w.std().item() for w in weights]


def test_normalized_controller_generates_he_scaled_weights_whatever_the_embedding_scale():
    """Version 2 of the controller: generated weights start at He's scale (2/fan_in, last layer 1/fan_in) and
    biases at zero, for unit-norm sentence embeddings and for one-hot codes alike; the authors' layout with
    PyTorch's default init starts ~5x smaller per layer (the slow start measured on real scans)."""
    torch.manual_seed(0)
    pooled = 0.4 + 0.03 * torch.randn(64, 256)  # what a freshly initialised nnU-Net bottleneck pools to
    unit_norm = nn.functional.normalize(torch.randn(64, 5, 384), dim=-1)
    one_hot = torch.eye(7)[:5].expand(64, 5, 7)
    expected = [(2 / 8) ** 0.5, (2 / 8) ** 0.5, (1 / 8) ** 0.5]
    for text in (unit_norm, one_hot):
        # the last layer has only 8 generated weights per head: average over a few initialisations
        stds = torch.tensor([_generated_weight_std(MulModSegController(256, text.shape[-1], normalized=True),
                                                   pooled, text) for _ in range(10)]).pow(2).mean(0).sqrt()
        assert all(abs(s - e) / e < 0.15 for s, e in zip(stds.tolist(), expected)), stds
        _, biases = split_dynamic_params(MulModSegController(256, text.shape[-1], normalized=True)(pooled, text))
        assert all(torch.count_nonzero(b) == 0 for b in biases)
    old = torch.tensor([_generated_weight_std(MulModSegController(256, 384, normalized=False), pooled, unit_norm)
                        for _ in range(10)]).pow(2).mean(0).sqrt()
    assert all(s < e / 3 for s, e in zip(old.tolist(), expected)), old


def test_normalized_controller_lets_the_class_change_the_head():
    """With unit-norm embeddings the text branch is ~10x weaker than the image branch without normalisation;
    normalised, the class changes the generated parameters about as much as the image does."""
    torch.manual_seed(0)
    pooled = 0.4 + 0.03 * torch.randn(8, 256)
    text = nn.functional.normalize(torch.randn(1, 5, 384), dim=-1).expand(8, 5, 384)
    for normalized, at_least in ((True, 0.5), (False, 0.0)):
        params = MulModSegController(256, 384, normalized=normalized)(pooled, text)
        across_classes = params.std(dim=1).mean().item()
        across_images = params.std(dim=0).mean().item()
        assert across_classes / across_images > at_least
    params = MulModSegController(256, 384, normalized=False)(pooled, text)
    assert params.std(dim=1).mean().item() < 0.5 * params.std(dim=0).mean().item() + 0.05


def test_controller_version_is_read_from_the_plans_and_old_plans_build_the_old_layout():
    from nnunet_mulmod.training.mulmodseg_trainer import PLANS_KEY, nnUNetTrainerMulModSeg
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.modules.conv.Conv2d",
                            "kernel_sizes": [[3, 3]] * 3, "strides": [[1, 1], [2, 2], [2, 2]],
                            "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
                            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                            "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    spec = {"modalities": ["CT", "MR"], "class_names": ["background", "liver"], "embed_dim": 6,
            "controller_hidden": 8}
    plans = {"dataset_name": "x", "plans_name": "p", "original_median_spacing_after_transp": [1, 1],
             "original_median_shape_after_transp": [16, 16], "image_reader_writer": "SimpleITKIO",
             "transpose_forward": [0, 1], "transpose_backward": [0, 1],
             "configurations": {"2d": {"data_identifier": "d", "preprocessor_name": "DefaultPreprocessor",
                                       "batch_size": 2, "patch_size": [16, 16], "spacing": [1, 1],
                                       "normalization_schemes": ["ZScoreNormalization"],
                                       "use_mask_for_norm": [False], "architecture": arch, "batch_dice": True,
                                       "resampling_fn_data": "resample_data_or_seg_to_shape",
                                       "resampling_fn_seg": "resample_data_or_seg_to_shape",
                                       "resampling_fn_data_kwargs": {}, "resampling_fn_seg_kwargs": {},
                                       "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                                       "resampling_fn_probabilities_kwargs": {}}},
             "experiment_planner_used": "x", "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": {}}
    for version, normalized in ((None, False), (1, False), (2, True)):
        plans[PLANS_KEY] = dict(spec, **({} if version is None else {"controller_version": version}))
        manager = PlansManager(plans)
        net = nnUNetTrainerMulModSeg.build_network_architecture(manager, manager.get_configuration("2d"), 1, 2, False)
        assert net.controller.normalized is normalized
    assert nnUNetTrainerMulModSeg.controller_version == 2  # what new runs write


def test_normalized_controller_gives_the_generated_weights_a_plain_layers_learning_rate():
    """A gradient step of size lr on the controller moves the generated parameters by lr * |z|^2 times their own
    gradient (z = the controller's input): |z| = 1 keeps nnU-Net's learning rate for the head; unnormalised it
    depends on the encoder's and the text encoder's scales."""
    torch.manual_seed(0)
    pooled = (0.4 + 0.03 * torch.randn(1, 256)).double()
    text = nn.functional.normalize(torch.randn(1, 1, 384), dim=-1).double()
    direction = torch.randn(1, 1, 153, dtype=torch.float64)
    for normalized in (True, False):
        controller = MulModSegController(256, 384, normalized=normalized).double()
        before = controller(pooled, text).detach()
        (controller(pooled, text) * direction).sum().backward()  # d loss / d params = direction
        with torch.no_grad():
            controller.controller.weight -= 1e-3 * controller.controller.weight.grad
        moved = controller(pooled, text).detach() - before
        rate = (moved * -direction).sum() / (1e-3 * direction.pow(2).sum())  # = |z|^2
        assert torch.allclose(moved, -1e-3 * rate * direction)
        if normalized:
            assert abs(rate.item() - 1) < 0.02  # layer norm's eps keeps it a little below 1
        else:
            assert abs(rate.item() - 1) > 0.5
