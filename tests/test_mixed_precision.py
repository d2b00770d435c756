"""Mixed precision on the CPU: MulModSeg (controller + dynamic head) and Zeus (SAM decoder) under autocast.

nnU-Net trains with ``torch.autocast(device, fp16)`` and a GradScaler on CUDA; a CPU has bf16 autocast and, on
recent torch, fp16 autocast too (every op these networks use has a CPU fp16 kernel in torch 2.14), so both are
tested here. Checked:
- outputs and gradients under bf16 / fp16 autocast against float32 from the same weights and input, within the
  tolerances below (relative norms; the bf16 ones are set by its 8-bit mantissa);
- inputs x1e3 and pooled features x1e4 give finite logits and gradients: with the default (version 2) controller
  the generated weights do not grow with the input at all; with version 1 (unnormalised, old checkpoints) they do,
  and fp16 overflowed in the head before MulModSegController.head_features ran that layout's head in float32;
- one training step through nnU-Net's own ``train_step`` with fp16 autocast and a GradScaler (its CUDA branch, run
  on the CPU: the autocast nnU-Net enters only on CUDA is substituted for its CPU no-op context).

Gradients are compared per group of parameters (all of them, and the parts this project adds), as the relative
error of the group's concatenated gradient: single tensors are no measure (conv biases before an instance norm and
attention key biases have an exactly zero gradient, so any rounding is an infinite relative error there).
"""
import copy

import pytest
import torch

from nnunet_mulmod.modeling.dynamic_head import MulModSegController, dynamic_head

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Tolerances: relative norm errors against float32. Measured here (worst of inputs x1 and x1e3; torch 2.14, CPU):
# MulModSeg  out bf16 0.007 / fp16 0.0009; gradients of all parameters 0.037 / 0.036, of the controller
#            0.0025 / 0.0005, of the decoder (seg layers feed the head) 0.017 / 0.0034, of nnU-Net's encoder
#            0.13 / 0.13 (its instance norms' backward on 16^3 patches: nnU-Net's own network, not ours).
# Zeus       out bf16 0.027 / fp16 0.0036; gradients of all parameters 0.096 / 0.055, of the SAM decoder
#            0.040 / 0.043.
# The limits below are about 2x the measurements.
OUTPUT_RTOL = {"mulmodseg": {"bf16": 2e-2, "fp16": 3e-3}, "zeus": {"bf16": 6e-2, "fp16": 1e-2}}
GRAD_RTOL = {"mulmodseg": {"": 0.08, "controller.": 0.01, "decoder.": 0.04},
             "zeus": {"": 0.2, "decoder.": 0.09}}
LOSS_SCALE = 2.0 ** 10


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def _step(net, x, dtype, modality=None):
    """One forward + backward (loss: mean square of the outputs) -> (outputs in fp32, {name: grad})."""
    net.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        if modality is None:
            out = net(x)
        else:
            with net.using_modality(modality):
                out = net(x)
    outs = out if isinstance(out, (list, tuple)) else [out]
    # scaled as GradScaler scales nnU-Net's loss: unscaled, fp16 gradients of a mean over ~1e5 voxels underflow
    (sum(o.float().pow(2).mean() for o in outs) * LOSS_SCALE).backward()
    return [o.detach().float() for o in outs], {n: p.grad / LOSS_SCALE for n, p in net.named_parameters()
                                               if p.grad is not None}


def _assert_close(model, low, ref, dtype_name):
    """Outputs, and the gradients of each parameter group (name prefix, "" = all) concatenated, within the
    tolerances; every output and gradient finite."""
    (out_low, grads_low), (out_ref, grads_ref) = low, ref
    for o, r in zip(out_low, out_ref):
        assert torch.isfinite(o).all(), model
        assert _rel(o, r) <= OUTPUT_RTOL[model][dtype_name], (model, _rel(o, r))
    assert grads_low.keys() == grads_ref.keys() and len(grads_ref) > 20
    assert all(torch.isfinite(g).all() for g in grads_low.values()), model
    for prefix, tolerance in GRAD_RTOL[model].items():
        keys = [k for k in grads_ref if k.startswith(prefix)]
        assert keys, prefix
        low_flat = torch.cat([grads_low[k].flatten() for k in keys])
        ref_flat = torch.cat([grads_ref[k].flatten() for k in keys])
        assert _rel(low_flat, ref_flat) <= tolerance, (model, prefix, _rel(low_flat, ref_flat))


def _mulmodseg(normalized=True):
    from test_compile import _mulmodseg as build
    net = build(3, 14)  # 3d, 14 classes: the dynamic head runs in checkpointed slabs
    if not normalized:
        net.controller = MulModSegController(net.controller.image_proj.in_features, 6, 256, normalized=False)
    return net.train()


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_mulmodseg_under_autocast_matches_fp32(dtype_name, scale):
    torch.manual_seed(1)
    x = torch.randn(2, 1, 16, 16, 16) * scale
    net = _mulmodseg()
    ref = _step(net, x, None, 1)
    low = _step(net, x, DTYPES[dtype_name], 1)
    assert low[0][0].shape == (2, 14, 16, 16, 16)
    _assert_close("mulmodseg", low, ref, dtype_name)


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("normalized", [True, False])
def test_generated_weights_do_not_overflow_with_large_pooled_features(dtype_name, normalized):
    dtype = DTYPES[dtype_name]
    torch.manual_seed(0)
    controller = MulModSegController(32, 512, 256, normalized=normalized)
    pooled = (torch.randn(2, 32) * 1e4).requires_grad_()  # far beyond anything a normed bottleneck gives
    text, features = torch.randn(2, 14, 512), torch.randn(2, 8, 6, 6, 6)
    reference = dynamic_head(features, controller(pooled, text))
    with torch.autocast("cpu", dtype=dtype):
        params = controller(pooled, text)
        logits = dynamic_head(controller.head_features(features.to(dtype)), params)
    assert params.dtype == torch.float32  # the controller ignores autocast
    if normalized:  # version 2: generated weights do not grow with the image features (layer norms)
        assert params.abs().max() < 10
    else:  # version 1: they do (this is what overflowed fp16 before head_features)
        assert params.abs().max() > 1e3
    assert torch.isfinite(logits).all()
    assert _rel(logits, reference) <= OUTPUT_RTOL["mulmodseg"][dtype_name]
    logits.float().pow(2).mean().backward()
    assert torch.isfinite(pooled.grad).all() and all(torch.isfinite(p.grad).all() for p in controller.parameters())
    # and without head_features the version-1 head does overflow fp16: the fix is what keeps it finite
    if not normalized and dtype == torch.float16:
        with torch.autocast("cpu", dtype=dtype):
            unguarded = dynamic_head(features.to(dtype), controller(pooled, text))
        assert not torch.isfinite(unguarded).all()


@pytest.mark.parametrize("normalized", [True, False])
def test_whole_network_with_large_inputs_stays_finite_under_fp16(normalized):
    torch.manual_seed(2)
    net = _mulmodseg(normalized)
    x = torch.randn(2, 1, 16, 16, 16) * 1e3
    ref = _step(net, x, None, 0)
    low = _step(net, x, torch.float16, 0)
    for o, r in zip(low[0], ref[0]):
        assert torch.isfinite(o).all() and _rel(o, r) <= OUTPUT_RTOL["mulmodseg"]["fp16"]
    assert all(torch.isfinite(g).all() for g in low[1].values())


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("fusion", ["late", "hybrid"])
def test_zeus_under_autocast_matches_fp32(dtype_name, fusion):
    from test_zeus_network import build

    net = build(fusion, 2)[0].train()
    torch.manual_seed(3)
    for scale in (1.0, 1e3):  # SAM's layer norms overflowed fp16 with large activations (zeus/modeling/layer_norm.py)
        x = torch.randn(2, 2, 32, 32) * scale
        ref = _step(net, x, None)
        low = _step(net, x, DTYPES[dtype_name])
        assert low[0][0].shape == (2, 3, 32, 32)
        _assert_close("zeus", low, ref, dtype_name)


def test_nnunet_train_step_with_fp16_autocast_and_grad_scaler(tmp_path, monkeypatch):
    """nnU-Net's train_step as it runs on CUDA (autocast + GradScaler: scale, unscale_, clip, step, update)."""
    import contextlib

    from tiny_trainer import write_tiny_preprocessed
    pre = tmp_path / "pre"
    write_tiny_preprocessed(str(pre))
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "res"))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as trainer_module  # its paths read the env lazily
    from nnunet_mulmod.training.mulmodseg_trainer import nnUNetTrainerMulModSeg
    from tiny_trainer import make_trainer

    torch.manual_seed(0)
    trainer = make_trainer(nnUNetTrainerMulModSeg)
    trainer.initialize()
    core = trainer.mulmod_network()
    start = copy.deepcopy(core.state_dict())
    scales = trainer._get_deep_supervision_scales()
    batch = {"data": torch.randn(2, 1, 16, 16),
             "target": [torch.randint(0, 3, (2, 1, *[round(16 * s) for s in sc])).float() for sc in scales],
             "keys": ["ct_0", "ct_1"]}

    def one_step(amp: bool):
        core.load_state_dict(start)
        trainer.optimizer.load_state_dict(fresh_optimizer)
        if amp:  # nnU-Net enters autocast only when device.type == 'cuda', else its dummy_context
            monkeypatch.setattr(trainer_module, "dummy_context",
                                lambda: torch.autocast("cpu", dtype=torch.float16))
            trainer.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
        else:
            monkeypatch.setattr(trainer_module, "dummy_context", contextlib.nullcontext)
            trainer.grad_scaler = None
        loss = float(trainer.train_step(batch)["loss"])
        return loss, {k: v.clone() for k, v in core.state_dict().items()}

    fresh_optimizer = copy.deepcopy(trainer.optimizer.state_dict())
    loss32, after32 = one_step(False)
    loss16, after16 = one_step(True)
    assert trainer.grad_scaler.get_scale() == 2.0 ** 16  # no inf/NaN gradient found: the step was not skipped
    assert core.last_modality_indices.tolist() == [0, 0]  # ALT's context applied inside nnU-Net's step (CT)
    assert abs(loss16 - loss32) <= 1e-2 * abs(loss32), (loss16, loss32)
    for key, value in after16.items():
        assert not value.is_floating_point() or torch.isfinite(value).all(), key
    keys = [k for k, v in start.items() if v.is_floating_point() and not torch.equal(after32[k], v)]
    assert len(keys) > 20
    update32 = torch.cat([(after32[k] - start[k]).flatten() for k in keys])
    update16 = torch.cat([(after16[k] - start[k]).flatten() for k in keys])
    assert _rel(update16, update32) <= 0.05, _rel(update16, update32)  # unscaled: the fp32 step's update
