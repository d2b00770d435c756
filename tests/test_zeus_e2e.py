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
from synthetic import ZEUS_DATASET, write_aligned_dataset
from test_zeus_helpers import tiny_medclip_folder  # noqa: F401 (pytest fixture)

DATASET = ZEUS_DATASET
BIN = os.path.dirname(sys.executable)


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
    raw_folder = write_aligned_dataset(env["nnUNet_raw"])
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
