"""Own-data converter: the real TotalSegmentator CT (RAS) and MR (LPS) with per-modality label maps; CSV mode."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conversion_fixtures import nnunet_env  # noqa: F401 (pytest fixture)
from conversion_fixtures import (case_files, read_array, read_json, run_cli, shared_data, synthetic_pair,
                                 verify_with_nnunet, write_volume)
from nnunet_mulmod.dataset_conversion.common import ConversionError
from nnunet_mulmod.dataset_conversion.own_data import main

# TotalSegmentator ids differ between its CT ("total") and MR ("total_mr") tasks: aorta is 52 vs 23
LABELS = {"CT": {"background": 0, "liver": 5, "aorta": 52, "spleen": 1},
          "MR": {"background": 0, "liver": 5, "aorta": 23, "spleen": 1}}


def test_real_ct_and_mr_folders(tmp_path, nnunet_env):
    totalseg = shared_data("totalseg_example")
    for modality, image, label in (("ct", "example_ct_sm", "example_seg"), ("mr", "example_mr_sm", "example_seg_mr")):
        (tmp_path / modality / "images").mkdir(parents=True)
        (tmp_path / modality / "labels").mkdir(parents=True)
        shutil.copy(totalseg / f"{image}.nii.gz", tmp_path / modality / "images" / f"abdomen_{modality}.nii.gz")
        shutil.copy(totalseg / f"{label}.nii.gz", tmp_path / modality / "labels" / f"abdomen_{modality}.nii.gz")
    (tmp_path / "new").mkdir()
    shutil.copy(totalseg / "example_mr_sm.nii.gz", tmp_path / "new" / "new_scan_0000.nii.gz")
    (tmp_path / "labels.json").write_text(json.dumps(LABELS))
    run_cli(["nnunet_mulmod_convert_own_data", "-d", 510, "--labels", tmp_path / "labels.json",
             "--unlisted_to_background", "--images", "CT", tmp_path / "ct" / "images", tmp_path / "ct" / "labels",
             "--images", "MR", tmp_path / "mr" / "images", tmp_path / "mr" / "labels",
             "--test_images", "MR", tmp_path / "new", "-np", 1], nnunet_env)
    out = Path(nnunet_env["nnUNet_raw"]) / "Dataset510_OwnCTMR"
    assert case_files(out, "imagesTr") == ["abdomen_ct_0000.nii.gz", "abdomen_mr_0000.nii.gz"]
    assert case_files(out, "imagesTs") == ["new_scan_0000.nii.gz"]
    dataset_json = read_json(out / "dataset.json")
    assert dataset_json["labels"] == {"background": 0, "liver": 1, "aorta": 2, "spleen": 3}
    assert dataset_json["case_modalities"] == {"abdomen_ct": "CT", "abdomen_mr": "MR", "new_scan": "MR"}
    assert dataset_json["channel_names"] == {"0": "CT_or_MR"}
    for modality, label in (("CT", "example_seg"), ("MR", "example_seg_mr")):
        source = read_array(totalseg / f"{label}.nii.gz")
        converted = read_array(out / "labelsTr" / f"abdomen_{modality.lower()}.nii.gz")
        expected = np.zeros_like(converted)
        for target, name in enumerate(("liver", "aorta", "spleen"), start=1):
            expected[source == LABELS[modality][name]] = target
        assert np.array_equal(converted, expected)
        assert (converted == 2).sum() > 100  # the aorta is found under both ids
        source_image = sitk.ReadImage(str(totalseg / f"example_{modality.lower()}_sm.nii.gz"))
        converted_label = sitk.ReadImage(str(out / "labelsTr" / f"abdomen_{modality.lower()}.nii.gz"))
        assert converted_label.GetDirection() == pytest.approx(source_image.GetDirection())  # RAS and LPS kept
    verify_with_nnunet(out)


def test_csv_and_bad_labels(tmp_path, nnunet_env):
    rows = ["case_id,image,label,modality"]
    for i, modality in enumerate(("CT", "CT", "MR-T1", "MR-T2")):
        image, label = synthetic_pair(i, labels=(1, 2), modality=modality[:2])
        write_volume(tmp_path / "data" / f"img{i}.mha", image)
        write_volume(tmp_path / "data" / f"seg{i}.nii.gz", label)
        rows.append(f"case{i},data/img{i}.mha,data/seg{i}.nii.gz,{modality}")
    rows.append("unlabelled,data/img3.mha,,MR-T2")
    (tmp_path / "cases.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "labels.json").write_text(json.dumps({"background": 0, "kidney": 1, "liver": 2}))
    main(["--csv", str(tmp_path / "cases.csv"), "--labels", str(tmp_path / "labels.json"), "-d", "511", "-np", "1"])
    out = Path(nnunet_env["nnUNet_raw"]) / "Dataset511_OwnCTMR"
    dataset_json = read_json(out / "dataset.json")
    assert dataset_json["modalities"] == ["CT", "MR-T1", "MR-T2"]
    assert dataset_json["case_modalities"]["case2"] == "MR-T1" and dataset_json["case_modalities"]["unlabelled"] == "MR-T2"
    assert case_files(out, "imagesTs") == ["unlabelled_0000.nii.gz"]
    assert np.array_equal(read_array(out / "imagesTr" / "case1_0000.nii.gz"), read_array(tmp_path / "data" / "img1.mha"))
    verify_with_nnunet(out)

    # a label value that is not in the map: listed with the case
    _, label = synthetic_pair(2, labels=(1, 2, 7), modality="MR")
    write_volume(tmp_path / "data" / "seg2.nii.gz", label)
    with pytest.raises(ConversionError, match="Case case2: label file .*seg2.nii.gz contains values \\[7\\] that are "
                                              "not in the label map \\(0 background, 1 kidney, 2 liver\\)\\. .*re-run "
                                              "with --unlisted_to_background"):
        main(["--csv", str(tmp_path / "cases.csv"), "--labels", str(tmp_path / "labels.json"), "-d", "512"])
    # missing files: every row is checked before anything is converted, and named by its CSV line
    (tmp_path / "data" / "seg1.nii.gz").unlink()
    (tmp_path / "data" / "img3.mha").unlink()
    with pytest.raises(ConversionError) as e:
        main(["--csv", str(tmp_path / "cases.csv"), "--labels", str(tmp_path / "labels.json"), "-d", "512"])
    message = str(e.value)
    assert message.startswith(str(tmp_path / "cases.csv"))
    assert "line 3: label data/seg1.nii.gz not found" in message
    assert "line 5: image data/img3.mha not found" in message and "line 6: image data/img3.mha not found" in message
    assert "nothing was converted" in message
    assert not list(Path(nnunet_env["nnUNet_raw"]).glob("*512*")) and not list(Path(nnunet_env["nnUNet_raw"]).glob(".*512*"))


def test_modality_families_unknown_names_are_refused_and_declared_ones_kept(tmp_path, nnunet_env):
    rows = ["case_id,image,label,modality"]
    for i, modality in enumerate(("CT", "XR")):
        image, label = synthetic_pair(i, labels=(1,), modality="CT")
        write_volume(tmp_path / f"img{i}.nii.gz", image)
        write_volume(tmp_path / f"seg{i}.nii.gz", label)
        rows.append(f"case{i},img{i}.nii.gz,seg{i}.nii.gz,{modality}")
    (tmp_path / "cases.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "labels.json").write_text(json.dumps({"background": 0, "liver": 1}))
    args = ["--csv", str(tmp_path / "cases.csv"), "--labels", str(tmp_path / "labels.json"), "-d", "513", "-np", "1"]
    raw = Path(nnunet_env["nnUNet_raw"])
    with pytest.raises(ConversionError, match=r"cannot tell the intensity family of modality \['XR'\].*CT: CT\*.*"
                                              r"MR: MR\*, T1\*.*other: PET\*.*--modality_family NAME FAMILY"):
        main(args)
    assert not list(raw.glob("*513*")) and not list(raw.glob(".*513*"))
    # declared 'other' (per-image z-score): the CT/MR protocol cannot place it by intensities, z-score can
    with pytest.raises(ConversionError, match=r"\['XR'\] is of the 'other' intensity family .*--intensity zscore"):
        main(args + ["--modality_family", "XR", "other"])
    assert not list(raw.glob("*513*"))
    main(args + ["--modality_family", "XR", "other", "--intensity", "zscore"])
    dataset_json = read_json(raw / "Dataset513_OwnCTMR" / "dataset.json")
    assert dataset_json["modality_families"] == {"XR": "other"} and dataset_json["modalities"] == ["CT", "XR"]
    assert dataset_json["channel_names"] == {"0": "either_CT_or_MR"}
