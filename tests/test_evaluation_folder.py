"""evaluate_folder: nnU-Net compatibility, per-modality aggregation and bad-input errors."""
import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_mulmod.evaluation.evaluate_folder import EvaluationError, evaluate_folder, main as evaluate_main
from synthetic import make_synthetic_dataset, write_image

SHARED_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")


@pytest.fixture()
def dataset(tmp_path):
    return make_synthetic_dataset(str(tmp_path / "data"), n_cases=6, shape=(10, 20, 20), n_classes=3,
                                  spacing=(3.0, 0.8, 0.8), methods={"model": {"shift": 2, "drop": 0.2}},
                                  with_images=False, seed=4)


def pred_folder(dataset):
    return dataset["predictions"]["model"][0]


def test_summary_json_is_read_by_nnunet_and_matches_its_metrics(dataset, tmp_path):
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder, load_summary_json
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    ours_file = str(tmp_path / "ours.json")
    evaluate_folder(dataset["labels"], pred_folder(dataset), dataset["dataset_json"], ours_file, num_processes=2,
                    progress=False)
    theirs = compute_metrics_on_folder(dataset["labels"], pred_folder(dataset), None, SimpleITKIO(), ".nii.gz",
                                       [1, 2, 3], None, 1)
    ours = load_summary_json(ours_file)
    assert set(ours["mean"]) == {1, 2, 3}
    assert set(ours["foreground_mean"]) >= set(theirs["foreground_mean"]) | {"HD95", "ASSD", "RVD"}
    for mine, nnunet in zip(ours["metric_per_case"], theirs["metric_per_case"]):
        assert os.path.basename(mine["prediction_file"]) == os.path.basename(nnunet["prediction_file"])
        assert os.path.basename(mine["reference_file"]) == os.path.basename(nnunet["reference_file"])
        for label in (1, 2, 3):
            for metric, value in nnunet["metrics"][label].items():
                np.testing.assert_allclose(mine["metrics"][label][metric], value, equal_nan=True)
    for metric, value in theirs["foreground_mean"].items():
        np.testing.assert_allclose(ours["foreground_mean"][metric], value)


def test_per_modality_means_aggregate_only_that_modalitys_cases(dataset):
    summary = evaluate_folder(dataset["labels"], pred_folder(dataset), dataset["dataset_json"], num_processes=1,
                              progress=False)
    assert set(summary["per_modality"]) == {"CT", "MR"}
    for modality, section in summary["per_modality"].items():
        cases = [c for c in summary["metric_per_case"] if c["modality"] == modality]
        assert section["case_ids"] == [c["case_id"] for c in cases] and section["n_cases"] == 3
        assert all(dataset["case_modalities"][c["case_id"]] == modality for c in cases)
        for label in ("1", "2", "3"):
            for metric in ("Dice", "HD95"):
                expected = np.nanmean([c["metrics"][label][metric] for c in cases])
                np.testing.assert_allclose(section["mean"][label][metric], expected)
        expected_fg = np.nanmean([section["mean"][k]["Dice"] for k in ("1", "2", "3")])
        np.testing.assert_allclose(section["foreground_mean"]["Dice"], expected_fg)
    # the two modality subsets differ, so a bug pooling them would show
    assert summary["per_modality"]["CT"]["mean"]["1"]["Dice"] != summary["per_modality"]["MR"]["mean"]["1"]["Dice"]


def test_missing_predictions_are_listed_or_scored_as_empty(dataset):
    os.remove(os.path.join(pred_folder(dataset), "case_001.nii.gz"))
    os.remove(os.path.join(pred_folder(dataset), "case_004.nii.gz"))
    with pytest.raises(EvaluationError, match="case_001, case_004.*--missing_as_empty"):
        evaluate_folder(dataset["labels"], pred_folder(dataset), dataset["dataset_json"], num_processes=1,
                        progress=False)
    summary = evaluate_folder(dataset["labels"], pred_folder(dataset), dataset["dataset_json"], num_processes=1,
                              missing="empty", progress=False)
    by_case = {c["case_id"]: c for c in summary["metric_per_case"]}
    assert len(by_case) == 6 and summary["nnunet_mulmod"]["cases_scored_as_empty"] == ["case_001", "case_004"]
    assert by_case["case_001"]["prediction_file"] is None
    assert all(by_case["case_004"]["metrics"][k]["Dice"] == 0 for k in ("1", "2", "3"))
    skipped = evaluate_folder(dataset["labels"], pred_folder(dataset), dataset["dataset_json"], num_processes=1,
                              missing="skip", progress=False)
    assert [c["case_id"] for c in skipped["metric_per_case"]] == ["case_000", "case_002", "case_003", "case_005"]


def test_mismatched_geometry_names_case_and_both_shapes(dataset):
    write_image(np.zeros((10, 20, 21), np.uint8), os.path.join(pred_folder(dataset), "case_002.nii.gz"), (3, .8, .8))
    # num_processes=2: the error must come out of the worker pool intact
    with pytest.raises(EvaluationError, match=r"Case case_002.*size \(x, y, z\) \(21, 20, 10\) \(prediction\) vs "
                                              r"\(20, 20, 10\)"):
        evaluate_folder(dataset["labels"], pred_folder(dataset), dataset["dataset_json"], num_processes=2,
                        progress=False)
    write_image(np.zeros((10, 20, 20), np.uint8), os.path.join(pred_folder(dataset), "case_002.nii.gz"), (2, .8, .8))
    with pytest.raises(EvaluationError, match=r"Case case_002.*spacing \(x, y, z\) \(0\.8, 0\.8, 2\) "
                                              r"\(prediction\) vs \(0\.8, 0\.8, 3\)"):
        evaluate_folder(dataset["labels"], pred_folder(dataset), dataset["dataset_json"], num_processes=1,
                        progress=False)


def test_labels_outside_the_label_set_name_case_and_values(dataset):
    path = os.path.join(pred_folder(dataset), "case_003.nii.gz")
    seg = sitk.GetArrayFromImage(sitk.ReadImage(path))
    seg[0, 0, :3] = [9, 12, 9]
    write_image(seg, path, (3.0, 0.8, 0.8))
    with pytest.raises(EvaluationError, match=r"Case case_003: the prediction .* label values \[9, 12\]"):
        evaluate_folder(dataset["labels"], pred_folder(dataset), dataset["dataset_json"], num_processes=1,
                        progress=False)


def test_results_folder_from_another_dataset_is_rejected(dataset, tmp_path):
    load = json.load(open(dataset["dataset_json"]))
    other = dict(load)
    other["labels"] = {"background": 0, "liver": 1}
    json.dump(other, open(os.path.join(pred_folder(dataset), "dataset.json"), "w"))
    with pytest.raises(EvaluationError, match="another dataset"):
        evaluate_folder(dataset["labels"], pred_folder(dataset), dataset["dataset_json"], progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for i in range(3):
        shutil.copy(os.path.join(dataset["labels"], "case_000.nii.gz"), foreign / f"BRATS_{i:03d}.nii.gz")
    with pytest.raises(EvaluationError, match="None of the 3 predictions .* another dataset"):
        evaluate_folder(dataset["labels"], str(foreign), load, progress=False)


def test_cli_reports_bad_input_without_traceback(dataset, capsys):
    os.remove(os.path.join(pred_folder(dataset), "case_005.nii.gz"))
    code = evaluate_main([dataset["labels"], pred_folder(dataset), "-djfile", dataset["dataset_json"], "-np", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "case_005" in err and "Traceback" not in err
    code = evaluate_main([dataset["labels"], pred_folder(dataset), "-djfile", dataset["dataset_json"], "-np", "1",
                          "--chill", "--dice_only"])
    out = capsys.readouterr().out
    summary = json.load(open(os.path.join(pred_folder(dataset), "summary.json")))
    assert code == 0 and "CT" in out and len(summary["metric_per_case"]) == 5
    assert "HD95" not in summary["foreground_mean"] and summary["nnunet_mulmod"]["cases_left_out"] == ["case_005"]


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_DATA, "totalseg_example")),
                    reason="real sample data not found at <repo>/../shared/data/totalseg_example")
def test_real_ct_labels_shifted_by_one_slice(tmp_path):
    # Real anatomy (TotalSegmentator CT sample, 3 mm voxels) shifted by one slice along z: every surface voxel
    # has the shifted copy of itself 3 mm away, so HD95 and ASSD of each organ lie in (0, 3] mm; Dice matches
    # nnU-Net's.
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    image = sitk.ReadImage(os.path.join(SHARED_DATA, "totalseg_example", "example_seg.nii.gz"))
    seg = sitk.GetArrayFromImage(image)
    organs = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver", 6: "stomach"}
    remapped = np.zeros(seg.shape, np.uint8)
    for new, old in enumerate(organs, start=1):
        remapped[seg == old] = new
    shifted = np.zeros_like(remapped)
    shifted[1:] = remapped[:-1]
    for folder, array in (("ref", remapped), ("pred", shifted)):
        os.makedirs(tmp_path / folder)
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(image)
        sitk.WriteImage(out, str(tmp_path / folder / "ct_0001.nii.gz"))
    dataset_json = {"labels": {"background": 0, **{n: i for i, n in enumerate(organs.values(), start=1)}},
                    "file_ending": ".nii.gz", "channel_names": {"0": "CT"}, "numTraining": 1,
                    "modalities": ["CT"], "case_modalities": {"ct_0001": "CT"}}
    summary = evaluate_folder(str(tmp_path / "ref"), str(tmp_path / "pred"), dataset_json, num_processes=1,
                              progress=False)
    theirs = compute_metrics_on_folder(str(tmp_path / "ref"), str(tmp_path / "pred"), None, SimpleITKIO(),
                                       ".nii.gz", [1, 2, 3, 4, 5], None, 1)
    for label in range(1, 6):
        m = summary["metric_per_case"][0]["metrics"][str(label)]
        assert m["Dice"] == pytest.approx(theirs["metric_per_case"][0]["metrics"][label]["Dice"])
        assert 0 < m["HD95"] <= 3.0 + 1e-6 and 0 < m["ASSD"] <= 3.0 + 1e-6
    assert summary["per_modality"]["CT"]["n_cases"] == 1


def test_region_based_dataset_uses_nnunets_region_keys(dataset, tmp_path):
    # BraTS-style regions: "whole" = labels 1-3, "core" = 2-3; keys are nnU-Net's str(tuple)
    from nnunetv2.evaluation.evaluate_predictions import load_summary_json
    region_json = dict(json.load(open(dataset["dataset_json"])),
                       labels={"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3},
                       regions_class_order=[1, 2, 3])
    out = str(tmp_path / "regions.json")
    summary = evaluate_folder(dataset["labels"], pred_folder(dataset), region_json, out, num_processes=1,
                              progress=False)
    assert set(summary["mean"]) == {"(1, 2, 3)", "(2, 3)", "(3,)"}
    assert summary["nnunet_mulmod"]["label_names"]["(2, 3)"] == "core"
    case = summary["metric_per_case"][0]["metrics"]
    ref = sitk.GetArrayFromImage(sitk.ReadImage(summary["metric_per_case"][0]["reference_file"]))
    assert case["(1, 2, 3)"]["n_ref"] == int((ref > 0).sum()) and case["(2, 3)"]["n_ref"] == int((ref >= 2).sum())
    assert set(load_summary_json(out)["mean"]) == {(1, 2, 3), (2, 3), (3,)}
