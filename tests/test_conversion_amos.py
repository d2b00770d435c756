"""AMOS converter: the release's folder layout with tiny synthetic volumes plus the real amos_0013 label."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conversion_fixtures import nnunet_env  # noqa: F401 (pytest fixture)
from conversion_fixtures import (case_files, read_array, read_json, run_cli, shared_data, synthetic_pair,
                                 truncate, verify_with_nnunet, write_volume)
from nnunet_mulmod.dataset_conversion.amos import AMOS_LABELS, main
from nnunet_mulmod.dataset_conversion.common import ConversionError

CT_LABELLED = {"imagesTr": ["amos_0001", "amos_0013", "amos_0015"], "imagesVa": ["amos_0008", "amos_0020"]}
MR_LABELLED = {"imagesTr": ["amos_0507", "amos_0540"], "imagesVa": ["amos_0508"]}
UNLABELLED = ["amos_0002", "amos_0510"]


def make_amos(root: Path, real_label: bool = True) -> Path:
    """amos22/{imagesTr,labelsTr,imagesVa,labelsVa,imagesTs}/amos_XXXX.nii.gz + dataset.json, as released."""
    amos = root / "amos22"
    entries = {"training": [], "validation": [], "test": []}
    for group in (CT_LABELLED, MR_LABELLED):
        for images, cases in group.items():
            labels = images.replace("images", "labels")
            for case in cases:
                if case == "amos_0013" and real_label:
                    continue
                number = int(case.split("_")[1])
                image, label = synthetic_pair(number, labels=(1, 6, 14 if number % 2 else 15),
                                              modality="MR" if number > 500 else "CT")
                write_volume(amos / images / f"{case}.nii.gz", image, spacing=(0.8, 0.8, 5.0))
                write_volume(amos / labels / f"{case}.nii.gz", label, spacing=(0.8, 0.8, 5.0))
                key = "training" if images == "imagesTr" else "validation"
                entries[key].append({"image": f"./{images}/{case}.nii.gz", "label": f"./{labels}/{case}.nii.gz"})
    for case in UNLABELLED:
        image, _ = synthetic_pair(int(case.split("_")[1]), modality="MR" if case.endswith("510") else "CT")
        write_volume(amos / "imagesTs" / f"{case}.nii.gz", image, spacing=(0.8, 0.8, 5.0))
        entries["test"].append({"image": f"./imagesTs/{case}.nii.gz"})
    if real_label:
        # the real AMOS label (LAS, 0.78 x 0.78 x 5 mm), cropped in-plane to keep the test fast, with a
        # synthetic CT on exactly its grid
        label = sitk.ReadImage(str(shared_data("amos_label", "amos_0013.nii.gz")))
        label = label[128:384, 128:384, :]
        image = sitk.Cast(label, sitk.sitkInt16) * 10 - 1000
        sitk.WriteImage(label, str(amos / "labelsTr" / "amos_0013.nii.gz"), useCompression=True)
        sitk.WriteImage(image, str(amos / "imagesTr" / "amos_0013.nii.gz"), useCompression=True)
        entries["training"].append({"image": "./imagesTr/amos_0013.nii.gz", "label": "./labelsTr/amos_0013.nii.gz"})
    (amos / "dataset.json").write_text(json.dumps({
        "name": "AMOS", "modality": {"0": "CT"}, "labels": {str(k): v for k, v in AMOS_LABELS.items()},
        "numTraining": 5, **entries}))
    return amos


@pytest.fixture
def amos_folder(tmp_path):
    return make_amos(tmp_path)


def test_all_cases_15_labels(amos_folder, nnunet_env):
    run_cli(["nnunet_mulmod_convert_amos", "-i", amos_folder, "-d", 501, "-np", 2], nnunet_env)
    out = Path(nnunet_env["nnUNet_raw"]) / "Dataset501_AMOS2022"
    train = sorted(CT_LABELLED["imagesTr"] + CT_LABELLED["imagesVa"] + MR_LABELLED["imagesTr"] + MR_LABELLED["imagesVa"])
    assert case_files(out, "imagesTr") == [f"{c}_0000.nii.gz" for c in train]
    assert case_files(out, "labelsTr") == [f"{c}.nii.gz" for c in train]
    assert case_files(out, "imagesTs") == [f"{c}_0000.nii.gz" for c in UNLABELLED]
    dataset_json = read_json(out / "dataset.json")
    assert dataset_json["numTraining"] == len(train)
    assert dataset_json["channel_names"] == {"0": "CT_or_MR"}  # never "CT" for a CT+MR mix
    assert dataset_json["labels"] == {v: k for k, v in AMOS_LABELS.items()}
    assert dataset_json["modalities"] == ["CT", "MR"]
    # every case, training and test, tagged from its id (> 500 is MR)
    assert dataset_json["case_modalities"] == {c: ("MR" if int(c[5:]) > 500 else "CT") for c in train + UNLABELLED}
    assert dataset_json["overwrite_image_reader_writer"] == "NibabelIOWithReorient"
    # the real label is unchanged, on its own grid, and its image is byte-identical to the input
    source = sitk.ReadImage(str(amos_folder / "labelsTr" / "amos_0013.nii.gz"))
    converted = sitk.ReadImage(str(out / "labelsTr" / "amos_0013.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(source), sitk.GetArrayFromImage(converted))
    assert converted.GetDirection() == source.GetDirection() and converted.GetOrigin() == source.GetOrigin()
    assert set(np.unique(sitk.GetArrayFromImage(converted))) == set(range(16))  # the real map has all 15 organs
    assert (out / "imagesTr" / "amos_0013_0000.nii.gz").read_bytes() == \
        (amos_folder / "imagesTr" / "amos_0013.nii.gz").read_bytes()
    assert not [p for p in Path(nnunet_env["nnUNet_raw"]).iterdir() if p.name.startswith(".")]  # no temp left
    verify_with_nnunet(out)


def test_13_organs_balanced_split_is_reproducible(amos_folder, nnunet_env):
    args = ["nnunet_mulmod_convert_amos", "-i", amos_folder, "--organs", 13, "--split", "2to1", "--n_train", 1,
            "--n_test", 1, "--seed", 7, "-np", 1]
    run_cli(args + ["-d", 502], nnunet_env)
    run_cli(args + ["-d", 503], nnunet_env)
    out = Path(nnunet_env["nnUNet_raw"]) / "Dataset502_AMOS2022"
    dataset_json = read_json(out / "dataset.json")
    assert "bladder" not in dataset_json["labels"] and "prostate/uterus" not in dataset_json["labels"]
    assert sorted(dataset_json["labels"].values()) == list(range(14))
    split = dataset_json["mulmod_split"]
    assert split == read_json(Path(nnunet_env["nnUNet_raw"]) / "Dataset503_AMOS2022" / "dataset.json")["mulmod_split"]
    modality = dataset_json["case_modalities"]
    assert sorted(modality[c] for c in split["train"]) == ["CT", "CT", "MR"]  # CT:MR 2:1
    assert sorted(modality[c] for c in split["test"]) == ["CT", "MR"]
    assert case_files(out, "imagesTr") == [f"{c}_0000.nii.gz" for c in split["train"]]
    assert case_files(out, "imagesTs") == [f"{c}_0000.nii.gz" for c in split["test"]]  # no unlabelled test images
    assert case_files(out, "labelsTs") == [f"{c}.nii.gz" for c in split["test"]]
    assert set(modality) == set(split["train"]) | set(split["test"])
    for case in split["train"]:
        source_folder = "labelsTr" if case in CT_LABELLED["imagesTr"] + MR_LABELLED["imagesTr"] else "labelsVa"
        source = read_array(amos_folder / source_folder / f"{case}.nii.gz")
        converted = read_array(out / "labelsTr" / f"{case}.nii.gz")
        assert np.array_equal(converted, np.where(np.isin(source, (14, 15)), 0, source))
    verify_with_nnunet(out)


def test_refuses_existing_dataset_and_overwrites_when_asked(amos_folder, nnunet_env):
    dead_pid = next(p for p in range(4_000_000, 4_100_000) if not Path(f"/proc/{p}").exists())
    stale = Path(nnunet_env["nnUNet_raw"]) / f".Dataset501_AMOS2022.partial-{dead_pid}"  # from a killed run
    stale.mkdir()
    main(["-i", str(amos_folder), "-d", "501", "-np", "1"])
    assert not stale.exists()
    result = run_cli(["nnunet_mulmod_convert_amos", "-i", amos_folder, "-d", 501], nnunet_env, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "Dataset501_AMOS2022 already exists" in result.stderr and "--overwrite" in result.stderr
    marker = Path(nnunet_env["nnUNet_raw"]) / "Dataset501_AMOS2022" / "stale_file"
    marker.write_text("from an older run")
    main(["-i", str(amos_folder), "-d", "501", "--overwrite", "--organs", "13", "-np", "1"])
    assert not marker.exists()
    assert "bladder" not in read_json(marker.parent / "dataset.json")["labels"]


@pytest.mark.parametrize("problem", ["missing_label", "geometry", "label_value", "truncated"])
def test_bad_input_names_the_case(tmp_path, nnunet_env, problem):
    amos = make_amos(tmp_path, real_label=False)
    case = "amos_0507"
    if problem == "missing_label":
        os.remove(amos / "labelsTr" / f"{case}.nii.gz")
        expected = f"Case {case}: image .* has no label"
    elif problem == "geometry":
        image, label = synthetic_pair(507, modality="MR")
        write_volume(amos / "labelsTr" / f"{case}.nii.gz", label, spacing=(0.8, 0.8, 3.0))
        expected = f"Case {case}: image and label geometry differ \\(spacing"
    elif problem == "label_value":
        _, label = synthetic_pair(507, labels=(1, 16, 21), modality="MR")
        write_volume(amos / "labelsTr" / f"{case}.nii.gz", label, spacing=(0.8, 0.8, 5.0))
        expected = f"Case {case}: label file .* contains values \\[16, 21\\] that are not in the label map"
    else:
        truncate(amos / "imagesTr" / f"{case}.nii.gz")
        expected = f"Case {case}: cannot read .*amos_0507.nii.gz \\(unreadable or truncated"
    with pytest.raises(ConversionError, match=expected):
        main(["-i", str(amos), "-d", "501", "-np", "1"])
    # nothing half-written is left behind
    assert list(Path(nnunet_env["nnUNet_raw"]).iterdir()) == []
