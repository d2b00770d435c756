"""End to end through nnU-Net's own CLIs: plan_and_preprocess -> Zeus instructions + table -> nnUNetv2_train
(-tr nnUNetTrainerZeus_debug, late fusion) -> nnUNetv2_predict, on a tiny synthetic aligned 2-channel dataset.

Prediction runs after the instruction table file has been deleted: the checkpoint must be self-contained.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np
import SimpleITK as sitk
import torch

from nnunet_mulmod.zeus import instruction_table, instructions
from test_zeus_helpers import tiny_medclip_folder  # noqa: F401 (pytest fixture)

DATASET = "Dataset991_ZeusToy"
BIN = os.path.dirname(sys.executable)


def _ellipse(shape, cy, cx, ry, rx):
    yy, xx = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def make_aligned_case(rng, n_slices=1, size=40):
    """Two aligned channels (a 'T2' and an 'ADC'-like contrast) of one synthetic anatomy, labels 1 and 2. One slice:
    nnU-Net then plans only the 2d configuration (planning 3d costs a minute on 2 cores)."""
    seg = np.zeros((n_slices, size, size), np.uint8)
    for z in range(n_slices):
        seg[z][_ellipse((size, size), 20 + rng.uniform(-3, 3), 20 + rng.uniform(-3, 3), 10, 12)] = 1
        seg[z][_ellipse((size, size), 20 + rng.uniform(-2, 2), 20 + rng.uniform(-2, 2), 4, 4)] = 2
    t2 = np.choose(seg, [100.0, 300.0, 600.0]) + rng.normal(0, 20, seg.shape)
    adc = np.choose(seg, [900.0, 700.0, 200.0]) + rng.normal(0, 30, seg.shape)
    return [t2.astype(np.float32), adc.astype(np.float32)], seg


def write_dataset(raw_root, n_train=5):
    folder = os.path.join(raw_root, DATASET)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        os.makedirs(os.path.join(folder, sub))
    rng = np.random.RandomState(0)

    def save(array, path):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((1.0, 1.0, 3.0))
        sitk.WriteImage(image, path)

    for i in range(n_train + 1):
        channels, seg = make_aligned_case(rng)
        case = f"zeus_{i:03d}"
        images_dir = "imagesTr" if i < n_train else "imagesTs"
        for c, image in enumerate(channels):
            save(image, os.path.join(folder, images_dir, f"{case}_{c:04d}.nii.gz"))
        if i < n_train:
            save(seg, os.path.join(folder, "labelsTr", f"{case}.nii.gz"))
    dataset_json = {"name": DATASET, "channel_names": {"0": "T2", "1": "ADC"},
                    "labels": {"background": 0, "gland": 1, "lesion": 2}, "numTraining": n_train,
                    "file_ending": ".nii.gz", "modalities": ["T2", "ADC"],
                    "case_modalities": {f"zeus_{i:03d}": "T2" for i in range(n_train + 1)},
                    "channel_modalities": {"0": "T2", "1": "ADC"}}
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(dataset_json, f, indent=1)
    return folder


def run(cmd, env):
    start = time.time()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300)
    print(f"{os.path.basename(cmd[0])}: {time.time() - start:.1f} s")
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_plan_train_predict_with_zeus_late_fusion(tmp_path, monkeypatch, tiny_medclip_folder):
    env = dict(os.environ, nnUNet_raw=str(tmp_path / "raw"), nnUNet_preprocessed=str(tmp_path / "pre"),
               nnUNet_results=str(tmp_path / "res"), nnUNet_def_n_proc="1")
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, env[key])
    raw_folder = write_dataset(env["nnUNet_raw"])
    run([os.path.join(BIN, "nnUNetv2_plan_and_preprocess"), "-d", "991", "-c", "2d", "-np", "1", "-npfp", "1"], env)

    # Instructions (offline template backend) and their embeddings, with the CLIs' own main().
    instructions.main(["-d", DATASET])
    assert os.path.isfile(os.path.join(raw_folder, "zeus_instructions.json"))
    instruction_table.main(["-d", DATASET, "-e", f"medclip:{tiny_medclip_folder}"])
    table_file = os.path.join(env["nnUNet_preprocessed"], DATASET, "zeus_instruction_table.pt")
    table = instruction_table.load_table(table_file)
    assert table["embeddings"].shape[:2] == (2, 3)

    # nnUNet_n_proc_DA=0: augmentation in the main process (planning needs it >= 1, it sets torch's threads).
    run([os.path.join(BIN, "nnUNetv2_train"), "991", "2d", "0", "-tr", "nnUNetTrainerZeus_debug", "-device", "cpu"],
        dict(env, nnUNet_n_proc_DA="0"))
    model_folder = os.path.join(env["nnUNet_results"], DATASET, "nnUNetTrainerZeus_debug__nnUNetPlans__2d")
    with open(os.path.join(model_folder, "plans.json")) as f:
        spec = json.load(f)["zeus"]
    assert spec["fusion"] == "late" and spec["channel_modalities"] == ["T2", "ADC"]
    assert spec["class_names"] == ["background", "gland", "lesion"]
    checkpoint = torch.load(os.path.join(model_folder, "fold_0", "checkpoint_final.pth"), map_location="cpu",
                            weights_only=False)
    assert torch.equal(checkpoint["network_weights"]["instruction_embeddings"], table["embeddings"])
    assert os.path.isfile(os.path.join(model_folder, "fold_0", "validation", "summary.json"))

    os.remove(table_file)  # prediction must not need it
    out = tmp_path / "pred"
    run([os.path.join(BIN, "nnUNetv2_predict"), "-i", os.path.join(raw_folder, "imagesTs"), "-o", str(out),
         "-d", "991", "-c", "2d", "-f", "0", "-tr", "nnUNetTrainerZeus_debug", "-device", "cpu", "--disable_tta",
         "-npp", "1", "-nps", "1"], env)
    prediction = sitk.ReadImage(str(out / "zeus_005.nii.gz"))
    reference = sitk.ReadImage(os.path.join(raw_folder, "imagesTs", "zeus_005_0000.nii.gz"))
    assert prediction.GetSize() == reference.GetSize()
    assert set(np.unique(sitk.GetArrayFromImage(prediction))) <= {0, 1, 2}
