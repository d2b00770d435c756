"""MSD converter: TaskXX_Name/{imagesTr,labelsTr,imagesTs} with 4-D NIfTI, MSD's dataset.json format."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conversion_fixtures import nnunet_env  # noqa: F401 (pytest fixture)
from conversion_fixtures import case_files, read_array, read_json, run_cli, verify_with_nnunet, write_volume
from nnunet_mulmod.dataset_conversion.common import ConversionError
from nnunet_mulmod.dataset_conversion.msd import main

TASKS = {
    "Task01_BrainTumour": ({"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
                           {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
                           "BRATS", ["001", "002"], ["485"]),
    "Task05_Prostate": ({"0": "T2", "1": "ADC"}, {"0": "background", "1": "PZ", "2": "TZ"},
                        "prostate", ["00", "01"], ["03"]),
}


def write_4d(path: Path, channels: np.ndarray, spacing=(0.6, 0.6, 3.6)):
    """channels: (c, z, y, x) -> a 4-D NIfTI (x, y, z, c), as MSD ships it."""
    image = sitk.JoinSeries([sitk.GetImageFromArray(c) for c in channels])
    image.SetSpacing(tuple(spacing) + (1.0,))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)


def make_task(root: Path, task: str) -> Path:
    modality, labels, prefix, train, test = TASKS[task]
    folder = root / task
    rng = np.random.default_rng(0)
    entries = []
    for case in train + test:
        name = f"{prefix}_{case}.nii.gz"
        channels = (rng.random((len(modality), 8, 24, 24)) * 100).astype(np.float32)
        write_4d(folder / ("imagesTr" if case in train else "imagesTs") / name, channels)
        if case in train:
            label = np.zeros((8, 24, 24), dtype=np.uint8)
            for value in range(1, len(labels)):
                label[2:6, 3 * value:3 * value + 3, 5:20] = value
            write_volume(folder / "labelsTr" / name, label, spacing=(0.6, 0.6, 3.6))
            entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (folder / "imagesTr" / f"._{prefix}_{train[0]}.nii.gz").write_bytes(b"macOS resource fork")  # shipped in MSD tars
    (folder / "dataset.json").write_text(json.dumps({
        "name": task.split("_")[1], "reference": "ref", "licence": "CC-BY-SA 4.0", "release": "1.0",
        "tensorImageSize": "4D", "modality": modality, "labels": labels, "numTraining": len(train),
        "numTest": len(test), "training": entries, "test": [f"./imagesTs/{prefix}_{c}.nii.gz" for c in test]}))
    return folder


def test_brain_tumour_channels_split_and_tagged(tmp_path, nnunet_env):
    task = make_task(tmp_path, "Task01_BrainTumour")
    run_cli(["nnunet_mulmod_convert_msd", "-i", task, "-np", 1], nnunet_env)
    out = Path(nnunet_env["nnUNet_raw"]) / "Dataset001_BrainTumour"  # id and name from the task folder
    assert case_files(out, "imagesTr") == [f"BRATS_{c}_{k:04d}.nii.gz" for c in ("001", "002") for k in range(4)]
    assert case_files(out, "imagesTs") == [f"BRATS_485_{k:04d}.nii.gz" for k in range(4)]
    source = sitk.GetArrayFromImage(sitk.ReadImage(str(task / "imagesTr" / "BRATS_002.nii.gz")))
    for k in range(4):
        assert np.array_equal(read_array(out / "imagesTr" / f"BRATS_002_{k:04d}.nii.gz"), source[k])
    dataset_json = read_json(out / "dataset.json")
    assert dataset_json["channel_names"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    assert dataset_json["channel_modalities"] == {"0": "FLAIR", "1": "T1w", "2": "T1gd", "3": "T2w"}
    assert dataset_json["case_modalities"] == {"BRATS_001": "MR", "BRATS_002": "MR", "BRATS_485": "MR"}
    assert dataset_json["labels"] == {"background": 0, "edema": 1, "non-enhancing tumor": 2, "enhancing tumour": 3}
    assert np.array_equal(read_array(out / "labelsTr" / "BRATS_001.nii.gz"),
                          read_array(task / "labelsTr" / "BRATS_001.nii.gz"))
    verify_with_nnunet(out)


def test_prostate_union(tmp_path, nnunet_env):
    task = make_task(tmp_path, "Task05_Prostate")
    main(["-i", str(task), "-d", "515", "--union", "--union_name", "prostate", "-np", "1"])
    out = Path(nnunet_env["nnUNet_raw"]) / "Dataset515_Prostate"
    dataset_json = read_json(out / "dataset.json")
    assert dataset_json["labels"] == {"background": 0, "prostate": 1}
    assert dataset_json["channel_modalities"] == {"0": "T2", "1": "ADC"}
    source = read_array(task / "labelsTr" / "prostate_01.nii.gz")
    assert np.array_equal(read_array(out / "labelsTr" / "prostate_01.nii.gz"), (source > 0).astype(np.uint8))
    verify_with_nnunet(out)


@pytest.mark.parametrize("problem", ["geometry", "missing_label"])
def test_bad_input_names_the_case(tmp_path, nnunet_env, problem):
    task = make_task(tmp_path, "Task05_Prostate")
    if problem == "geometry":
        write_volume(task / "labelsTr" / "prostate_01.nii.gz", np.zeros((8, 24, 24), np.uint8), spacing=(0.6, 0.6, 3.6),
                     origin=(5.0, 0.0, 0.0))
        expected = "Case prostate_01: image and label geometry differ \\(origin"
    else:
        os.remove(task / "labelsTr" / "prostate_00.nii.gz")
        expected = "Case prostate_00: image .* has no label"
    with pytest.raises(ConversionError, match=expected):
        main(["-i", str(task), "-d", "515", "-np", "1"])


def test_dataset_json_with_channel_names_is_read(tmp_path, nnunet_env):
    task = make_task(tmp_path, "Task05_Prostate")
    source = json.loads((task / "dataset.json").read_text())
    source["channel_names"] = source.pop("modality")  # as tools that rewrite MSD's file for nnU-Net v2 leave it
    (task / "dataset.json").write_text(json.dumps(source))
    main(["-i", str(task), "-d", "516", "-np", "1"])
    dataset_json = read_json(Path(nnunet_env["nnUNet_raw"]) / "Dataset516_Prostate" / "dataset.json")
    assert dataset_json["channel_modalities"] == {"0": "T2", "1": "ADC"}
    del source["channel_names"]
    (task / "dataset.json").write_text(json.dumps(source))
    with pytest.raises(ConversionError, match=r"dataset.json has no channel map \('modality' or 'channel_names'"):
        main(["-i", str(task), "-d", "517", "-np", "1"])


@pytest.mark.parametrize("variable", ["nnUNet_preprocessed", "nnUNet_results"])
def test_dataset_id_clash_outside_raw_is_refused_before_writing(tmp_path, nnunet_env, variable):
    task = make_task(tmp_path, "Task05_Prostate")
    clash = Path(nnunet_env[variable]) / "Dataset518_SomethingElse"
    clash.mkdir(parents=True)
    with pytest.raises(ConversionError, match=f"Dataset id 518 is already used by {clash} \\(\\${variable}\\)"):
        main(["-i", str(task), "-d", "518", "-np", "1"])
    assert not list(Path(nnunet_env["nnUNet_raw"]).glob("*518*"))
    assert not list(Path(nnunet_env["nnUNet_raw"]).glob(".*518*"))
