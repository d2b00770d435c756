"""MulModSeg on nnU-Net's recommended backbones, end to end through the real entry points (subprocesses).

One tiny synthetic CT+MR dataset, preprocessed once and planned by nnU-Net's residual-encoder presets
(``nnUNetv2_plan_and_preprocess -pl nnUNetPlannerResEncM``; ``nnUNetv2_plan_experiment -pl nnUNetPlannerResEncL``
reuses the same preprocessed data), then for each backbone and trainer: nnUNetv2_train (1 epoch of 3
iterations) -> nnUNetv2_predict (and nnunet_mulmod_predict for MulModSeg). MulModSeg on ResEnc M and L, the ALT
and single-modality baselines on ResEnc M, MulModSeg and ALT on Primus (a 2-block, 48-d Primus, so that a CPU
trains it; everything else is the real trainer, with the package's schedule factory), and a plans file with a
network MulModSeg cannot wrap, which must fail before nnU-Net writes anything.
"""
import json
import os
import re
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

sys.path.insert(0, os.path.dirname(__file__))
from subprocesses import run  # noqa: E402
from synthetic import write_dataset  # noqa: E402

DATASET = 782
NAME = f"Dataset{DATASET}_MulModBackbones"

# Found by nnU-Net through nnUNet_extTrainer like any user's own trainer: the Primus trainers with a tiny Primus
# (everything else is the real trainer), on the package's schedule factory
TEST_TRAINERS = '''
from dynamic_network_architectures.architectures.primus import Primus
from nnunet_mulmod.training.primus_trainers import nnUNetTrainerALTPrimus, nnUNetTrainerMulModSegPrimus
from nnunet_mulmod.training.schedules import with_schedule


def tiny_primus(plans_manager, configuration_manager, num_input_channels, num_output_channels, *args, **kwargs):
    # Primus-M's construction (8^3 tokens, drop path, layer scale) at 48 dims and 2 blocks
    return Primus(num_input_channels, 48, (8, 8, 8), num_output_channels, 2, 2, configuration_manager.patch_size,
                  drop_path_rate=0.2, scale_attn_inner=True, init_values=0.1)


# MulModSeg puts its head on build_backbone's network; ALT trains what build_network_architecture builds
nnUNetTrainerMulModSegPrimus_test = with_schedule(
    nnUNetTrainerMulModSegPrimus, 1, 3, 1, name="nnUNetTrainerMulModSegPrimus_test", module=__name__,
    namespace={"build_backbone": classmethod(lambda cls, *args, **kwargs: tiny_primus(*args, **kwargs))})
nnUNetTrainerALTPrimus_test = with_schedule(
    nnUNetTrainerALTPrimus, 1, 3, 1, name="nnUNetTrainerALTPrimus_test", module=__name__,
    namespace={"build_network_architecture": staticmethod(tiny_primus)})
'''

SCHEDULE = "_1epochs_3it_1val"  # made on demand (nnunet_mulmod/training/schedules.py)
M, L = "nnUNetResEncUNetMPlans", "nnUNetResEncUNetLPlans"


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones_e2e")
    ext = root / "ext"
    ext.mkdir()
    (ext / "backbone_test_trainers.py").write_text(TEST_TRAINERS)
    env = dict(os.environ)
    env.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "pre"), nnUNet_results=str(root / "res"),
               nnUNet_def_n_proc="1", nnUNet_compile="f", PYTHONUNBUFFERED="1", nnUNet_extTrainer=str(ext))
    env.pop("nnUNet_n_proc_DA", None)  # nnU-Net's planner cannot run with 0
    raw_folder, _ = write_dataset(str(root / "raw"), DATASET, name="MulModBackbones", n_train={"CT": 4, "MR": 4})
    run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET), "-c", "3d_fullres", "-np", "1", "-npfp", "1",
         "-pl", "nnUNetPlannerResEncM"], env)
    run(["nnUNetv2_plan_experiment", "-d", str(DATASET), "-pl", "nnUNetPlannerResEncL"], env)
    pre = root / "pre" / NAME
    for plans_name in (M, L):
        plans = json.loads((pre / f"{plans_name}.json").read_text())
        cfg = plans["configurations"]["3d_fullres"]
        # the presets' architecture as planned; only the batch is shrunk for the CPU
        assert cfg["architecture"]["network_class_name"].endswith("ResidualEncoderUNet")
        assert cfg["data_identifier"] == "nnUNetPlans_3d_fullres"  # both presets use the one preprocessed copy
        cfg["batch_size"] = 2
        (pre / f"{plans_name}.json").write_text(json.dumps(plans, indent=1))
    # fold 0 validates one case of each modality (the single-modality baselines need one of theirs)
    (pre / "splits_final.json").write_text(json.dumps([{
        "train": [f"{m}_tr_{i:03d}" for m in ("ct", "mr") for i in range(3)], "val": ["ct_tr_003", "mr_tr_003"]}]))
    run(["nnunet_mulmod_build_text_table", "-d", str(DATASET), "--encoder", "onehot"], env)
    return root, env, raw_folder


def _last_decoder_layer(weights, prefix):
    layers = sorted({int(k[len(prefix):].split(".")[0]) for k in weights if k.startswith(prefix)})
    return weights[f"{prefix}{layers[-1]}.weight"]


CASES = [  # plans, trainer, is MulModSeg, backbone (L: MulModSeg only, the baselines' path is the same)
    (M, "nnUNetTrainerMulModSeg" + SCHEDULE, True, "resenc"),
    (L, "nnUNetTrainerMulModSeg" + SCHEDULE, True, "resenc"),
    (M, "nnUNetTrainerALT" + SCHEDULE, False, "resenc"),
    (M, "nnUNetTrainerCTOnly" + SCHEDULE, False, "resenc"),
    (M, "nnUNetTrainerMROnly" + SCHEDULE, False, "resenc"),
    (M, "nnUNetTrainerMulModSegPrimus_test", True, "primus"),
    (M, "nnUNetTrainerALTPrimus_test", False, "primus"),
]


IDS = [f"{'ResEnc' + plans[16] if backbone == 'resenc' else 'Primus'}-{trainer}" for plans, trainer, _, backbone in CASES]


@pytest.mark.parametrize("plans_name,trainer,mulmod,backbone", CASES, ids=IDS)
def test_train_and_predict(planned, plans_name, trainer, mulmod, backbone):
    root, env, raw_folder = planned
    _, log = run(["nnUNetv2_train", str(DATASET), "3d_fullres", "0", "-p", plans_name, "-tr", trainer,
                  "-device", "cpu"], dict(env, nnUNet_n_proc_DA="0"))
    results = root / "res" / NAME / f"{trainer}__{plans_name}__3d_fullres"
    assert (results / "fold_0" / "validation" / "summary.json").is_file()
    if "Only" in trainer:
        modality = "CT" if "CTOnly" in trainer else "MR"
        assert f"{modality} only: 3 training, 1 validation cases" in log
    else:
        assert "ALT position 0: this epoch starts with CT" in log
        assert re.search(r"train_loss per modality: CT \d+\.\d+, MR \d+\.\d+", log)
    checkpoint = torch.load(results / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    weights = checkpoint["network_weights"]
    prefix = "" if not mulmod else ("encoder." if backbone == "primus" else "")
    if backbone == "resenc":
        # nnU-Net's residual encoder, as the preset plans it (the plain U-Net has no stem): the plans' residual
        # blocks per stage and widths
        arch = json.loads((results / "plans.json").read_text())["configurations"]["3d_fullres"]["architecture"]
        assert arch["network_class_name"].endswith("ResidualEncoderUNet")
        assert any(k.startswith("encoder.stem.") for k in weights)
        for stage, (blocks, width) in enumerate(zip(arch["arch_kwargs"]["n_blocks_per_stage"],
                                                    arch["arch_kwargs"]["features_per_stage"])):
            names = {k.split(".")[4] for k in weights if k.startswith(f"encoder.stages.{stage}.blocks.")}
            assert len(names) == blocks
            assert weights[f"encoder.stages.{stage}.blocks.0.conv1.conv.weight"].shape[0] == width
        seg = weights["decoder.seg_layers.0.weight"]
        assert seg.shape[0] == (8 if mulmod else 3)  # the head's 8-channel map, or nnU-Net's 3 classes
    else:
        assert any(k.startswith(prefix + "eva.blocks.") for k in weights)
        last = _last_decoder_layer(weights, "decoder.decode." if mulmod else "up_projection.decode.")
        assert last.shape[1] == (8 if mulmod else 3)  # ConvTranspose3d weights are [in, out, *kernel]
        # Primus's optimizer and warm-up: AdamW with its lr and weight decay, starting linearly
        assert "train whole net, warmup" in log
        group = checkpoint["optimizer_state"]["param_groups"][0]
        assert group["initial_lr"] == 3e-4 and group["weight_decay"] == 5e-2 and "amsgrad" in group
    if mulmod:
        assert re.search(r"ct_tr_003: modality CT \(dataset.json case_modalities\)", log)
        assert "text_embeddings" in weights

    if "Only" in trainer:
        return  # their prediction is nnU-Net's network and predictor on ResEnc, as ALT's run predicts below

    table = root / "pre" / NAME / "mulmod_text_table.pt"
    hidden = table.with_suffix(".hidden")
    if mulmod:  # prediction needs neither the dataset's table nor the run's copy
        table.rename(hidden)
        (results / "mulmod_text_table.pt").unlink()
    try:
        out = root / f"preds_{trainer}_{plans_name}"
        _, log = run(["nnUNetv2_predict", "-i", os.path.join(raw_folder, "imagesTs"), "-o", str(out), "-d",
                      str(DATASET), "-c", "3d_fullres", "-f", "0", "-p", plans_name, "-tr", trainer, "-device", "cpu",
                      "-npp", "1", "-nps", "1", "--disable_tta"], env)
        if mulmod:
            assert "[nnunet-mulmod] ct_ts_000: modality CT (dataset.json case_modalities)" in log
            assert "[nnunet-mulmod] mr_ts_000: modality MR (dataset.json case_modalities)" in log
            _, log = run(["nnunet_mulmod_predict", "-i", os.path.join(raw_folder, "imagesTs"), "-o",
                          str(out) + "_as_mr", "-d", str(DATASET), "-p", plans_name, "-tr", trainer, "-f", "0",
                          "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta", "--modality", "MR"], env)
            assert "ct_ts_000: modality MR (given by the user)" in log
    finally:
        if hidden.exists():
            hidden.rename(table)
    for case in ("ct_ts_000", "mr_ts_000"):
        pred = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        ref = sitk.ReadImage(os.path.join(raw_folder, "labelsTs", f"{case}.nii.gz"))
        assert pred.GetSize() == ref.GetSize() and np.allclose(pred.GetSpacing(), ref.GetSpacing())
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2}


def test_plans_with_a_network_mulmodseg_cannot_wrap_fail_before_training(planned):
    root, env, _ = planned
    pre = root / "pre" / NAME
    plans = json.loads((pre / f"{M}.json").read_text())
    plans["plans_name"] = "nnUNetOddNetPlans"
    # nnU-Net builds this happily (it takes any arguments); MulModSeg has nothing to put its head on
    plans["configurations"]["3d_fullres"]["architecture"] = {"network_class_name": "torch.nn.Identity",
                                                             "arch_kwargs": {}, "_kw_requires_import": []}
    (pre / "nnUNetOddNetPlans.json").write_text(json.dumps(plans))
    rc, log = run(["nnUNetv2_train", str(DATASET), "3d_fullres", "0", "-p", "nnUNetOddNetPlans", "-tr",
                   "nnUNetTrainerMulModSeg" + SCHEDULE, "-device", "cpu"], dict(env, nnUNet_n_proc_DA="0"),
                  expect_ok=False)
    assert rc != 0
    # the last line of the output: the class, the plans that asked for it and what MulModSeg can wrap, with how
    # to select each
    last = log.strip().splitlines()[-1]
    assert last.startswith("nnunet_mulmod.modeling.backbones.UnsupportedBackboneError: MulModSeg cannot wrap the "
                           "network class torch.nn.modules.linear.Identity (plans 'nnUNetOddNetPlans', whose "
                           "network_class_name is 'torch.nn.Identity')"), last
    for supported in ("PlainConvUNet (nnUNetPlans", "ResidualEncoderUNet (nnUNetResEncUNet{M,L,XL}Plans",
                      "-p nnUNetResEncUNetMPlans", "Primus (nnU-Net's Primus trainers", "-tr nnUNetTrainerMulModSegPrimus"):
        assert supported in last, supported
    # before training starts: before nnU-Net's __init__ made the results folder or the training log
    assert "Please cite the following paper when using nnU-Net" not in log and "Epoch 0" not in log
    written = [p for p in (root / "res").rglob("*") if "nnUNetOddNetPlans" in str(p)]
    assert written == []
