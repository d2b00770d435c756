"""torch.compile as nnU-Net does it (torch.compile(network), inductor) with MulModSeg and Zeus networks.

- compiled forward + backward equal eager (inductor on the CPU; tiny 2d and 3d networks, the 3d one with 14
  classes so the checkpointed slabs of the dynamic head are inside the compiled region);
- no recompilation when ALT switches modality, between training and validation steps, or when the prediction hook
  selects each case's modality (or detection) in a sliding-window pass through nnU-Net's predictor: counted with
  dynamo's CompileCounter and compared with nnU-Net's own network under the same sequence of calls, and no graph
  breaks (dynamo's counters); the same case predicted twice gives identical logits.
"""
import copy

import pytest
import torch
import torch._dynamo
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

from dynamic_network_architectures.architectures.unet import PlainConvUNet
from nnunet_mulmod.modeling.mulmodseg_net import MulModSegNet


def _mulmodseg(dim, classes):
    conv, norm = (nn.Conv3d, nn.InstanceNorm3d) if dim == 3 else (nn.Conv2d, nn.InstanceNorm2d)
    torch.manual_seed(0)
    unet = PlainConvUNet(1, 3, (4, 8, 8), conv, 3, (1, 2, 2), 1, classes, (1, 1), False, norm, {"affine": True},
                         None, None, nn.LeakyReLU, {"inplace": True}, deep_supervision=True)
    net = MulModSegNet(unet, ["CT", "MR"], classes, 6)
    net.set_text_embeddings(torch.randn(2, classes, 6))
    return net


def _fwd_bwd(network, core, x, modality):
    with core.using_modality(torch.tensor([modality] * x.shape[0])):
        outputs = network(x)
    loss = sum(o.pow(2).mean() for o in outputs)
    loss.backward()
    return [o.detach() for o in outputs], {n: p.grad.clone() for n, p in core.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dim,classes,spatial", [(2, 3, (16, 16)), (3, 14, (8, 8, 8))])
def test_inductor_compiled_forward_backward_equals_eager(dim, classes, spatial):
    torch._dynamo.reset()
    eager = _mulmodseg(dim, classes)
    core = copy.deepcopy(eager)
    compiled = torch.compile(core)  # what nnU-Net does; inductor is the default backend
    x = torch.randn(2, 1, *spatial)
    for modality in (1, 0):  # ALT: MR then CT, one compiled graph
        expected, expected_grads = _fwd_bwd(eager, eager, x, modality)
        got, got_grads = _fwd_bwd(compiled, core, x, modality)
        for e, g in zip(expected, got):
            assert torch.allclose(e, g, rtol=1e-4, atol=1e-5), (e - g).abs().max()
        assert expected_grads.keys() == got_grads.keys() and len(got_grads) > 10
        for name, e in expected_grads.items():  # relative to the norm: fused kernels sum in other orders (seen: 2e-3 through 3d instance norms)
            assert (e - got_grads[name]).norm() <= 1e-2 * e.norm() + 1e-7, name
        assert torch.equal(core.last_modality_indices, torch.tensor([modality, modality]))
        eager.zero_grad(set_to_none=True)
        core.zero_grad(set_to_none=True)
    assert not torch.allclose(_fwd_bwd(eager, eager, x, 0)[0][0], _fwd_bwd(eager, eager, x, 1)[0][0])


def _tiny_plans():
    from tiny_trainer import PLANS
    plans = copy.deepcopy(PLANS)
    plans["mulmodseg"] = {"modalities": ["CT", "MR"], "class_names": ["background", "liver", "spleen"],
                          "embed_dim": 6, "controller_hidden": 16, "controller_version": 2}
    return plans


def _count_frames(build, sequence):
    """Runs ``sequence(compiled, core, record)`` on torch.compile(build()) with a counting backend -> (frames, outputs)."""
    torch._dynamo.reset()
    counters.clear()
    core = build()
    backend = CompileCounterWithBackend("eager")  # counts the graphs dynamo compiles; runs them eagerly
    compiled = torch.compile(core, backend=backend)
    outputs = []
    sequence(compiled, core, outputs.append)
    assert not counters["graph_break"], dict(counters["graph_break"])  # one graph per forward, never split
    return backend.frame_count, outputs


def test_no_recompilation_over_alt_validation_and_a_prediction_pass():
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_mulmod.inference.modality_selection import CaseModalityResolver, _queue_cases_of_data_iterator
    from nnunet_mulmod.training.mulmodseg_trainer import nnUNetTrainerMulModSeg

    manager = PlansManager(_tiny_plans())
    configuration = manager.get_configuration("2d")
    dataset_json = {"labels": {"background": 0, "liver": 1, "spleen": 2}, "case_modalities": {"ct_a": "CT", "mr_b": "MR"}}
    torch.manual_seed(0)
    train_x, val_x = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16)
    cases = [{"data": torch.randn(1, 1, 20, 20), "ofile": f"/out/{c}"} for c in ("ct_a", "mr_b", "new_scan", "ct_a")]
    cases[3]["data"] = cases[0]["data"].clone()  # ct_a again: the same image, so the same logits are expected

    def build(trainer_class):
        def make():
            torch.manual_seed(0)
            net = trainer_class.build_network_architecture(manager, configuration, 1, 3, True)
            if isinstance(net, MulModSegNet):
                net.set_text_embeddings(torch.randn(2, 3, 6))
                net.modality_classifier.fitted.fill_(1)  # as after training: "new_scan" is detected automatically
            return net
        return make

    def sequence(compiled, core, record):
        mulmod = isinstance(core, MulModSegNet)

        def context(modality):
            return core.using_modality(torch.tensor([modality, modality])) if mulmod else torch.enable_grad()

        for step in range(4):  # training: ALT alternates CT, MR, CT, MR (the trainer's context around nnU-Net's step)
            compiled.train()
            with context(step % 2):
                sum(o.sum() for o in compiled(train_x)).backward()
            if step % 2:  # validation steps between training steps, as in nnU-Net's epochs
                compiled.eval()
                with torch.no_grad(), context(step % 2):
                    record(compiled(val_x)[0])
        core.decoder.deep_supervision = False  # what nnU-Net does before predicting
        predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=True, perform_everything_on_device=False,
                                    device=torch.device("cpu"), allow_tqdm=False)
        weights = [{k: v.clone() for k, v in core.state_dict().items()}]  # loaded once per case, as nnU-Net does
        predictor.manual_initialization(compiled, manager, configuration, weights, dataset_json,
                                        type(core).__name__, inference_allowed_mirroring_axes=(0, 1))
        items = iter(cases)
        if mulmod:  # what the predictor hook does around nnU-Net's data iterator: queue the case names
            items = _queue_cases_of_data_iterator(predictor, items)
            predictor.mulmod_resolver = CaseModalityResolver(core.modalities, dataset_json)
        for item in items:  # the hooked per-case entry point: selects the case's modality, then predicts
            record(predictor.predict_logits_from_preprocessed_data(item["data"]))
            if mulmod:
                record(core.last_modality_indices.clone())
        core.decoder.deep_supervision = True
        compiled.train()
        with context(0):
            sum(o.sum() for o in compiled(train_x)).backward()

    vanilla_frames, _ = _count_frames(build(nnUNetTrainer), sequence)
    frames, outputs = _count_frames(build(nnUNetTrainerMulModSeg), sequence)
    # nnU-Net's own network compiles 4 graphs here (training; eval mode; no_grad; inference_mode in the predictor);
    # MulModSeg exactly as many: modality switches, the prediction hook's choices and detection never recompile
    assert vanilla_frames <= 4, vanilla_frames
    assert frames == vanilla_frames

    # and the selection is really applied in the compiled graph, per step and per case (not baked in at tracing)
    eager = build(nnUNetTrainerMulModSeg)().eval()
    with torch.no_grad():
        for i, modality in enumerate((1, 1)):
            with eager.using_modality(modality):
                assert torch.allclose(outputs[i], eager(val_x)[0], atol=1e-5)
    predictions, chosen = outputs[2::2], outputs[3::2]
    assert [c.tolist() for c in chosen[:2]] == [[0], [1]] and chosen[3].tolist() == [0]  # dataset.json's tags
    assert not torch.allclose(predictions[0], predictions[1])
    # the same case predicted again, after another modality and an automatic detection in between, gives the same
    # logits bit for bit: no selection or vote state leaks from case to case. (Before, the second ct_a was another
    # random image under the same name, so this assertion could not hold there: not nondeterminism.)
    assert torch.equal(predictions[0], predictions[3])


def test_zeus_networks_compile_without_graph_breaks_or_recompilation_and_match_eager_with_inductor():
    from test_zeus_network import build

    for fusion in ("late", "hybrid"):
        def sequence(compiled, core, record):
            for _ in range(2):  # training and validation steps alternate
                compiled.train()
                compiled(torch.randn(2, 2, 32, 32)).sum().backward()
                compiled.eval()
                with torch.no_grad():
                    record(compiled(torch.randn(2, 2, 32, 32)))
        frames, _ = _count_frames(lambda: build(fusion, 2)[0], sequence)
        assert frames == 2  # with and without gradients, as nnU-Net's own network

    torch._dynamo.reset()
    eager = build("late", 2)[0].train()
    core = copy.deepcopy(eager)
    compiled = torch.compile(core)
    x = torch.randn(2, 2, 32, 32)
    expected, got = eager(x), compiled(x)
    assert torch.allclose(expected, got, rtol=1e-4, atol=1e-5)
    expected.pow(2).mean().backward()
    got.pow(2).mean().backward()
    for (name, p), q in zip(eager.named_parameters(), core.parameters()):
        if p.grad is not None:
            assert (p.grad - q.grad).norm() <= 1e-2 * p.grad.norm() + 1e-7, name
