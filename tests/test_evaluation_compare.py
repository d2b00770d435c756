"""nnunet_mulmod_compare: paired differences and Wilcoxon p-values on constructed cases."""
import json
import os

import numpy as np
import pandas as pd
import pytest

from nnunet_mulmod.evaluation.compare import compare_models, holm, main as compare_main
from nnunet_mulmod.evaluation.evaluate_folder import EvaluationError
from synthetic import make_synthetic_dataset

DATASET_JSON = {"labels": {"background": 0, "liver": 1, "spleen": 2}, "file_ending": ".nii.gz",
                "channel_names": {"0": "x"}, "numTraining": 0}


def write_summary(path, dice_per_case, modalities):
    """A summary.json as nnunet_mulmod_evaluate writes it, with chosen liver Dice values (spleen = 0.5)."""
    cases = [{"case_id": f"c{i}", "modality": modalities[i], "reference_file": f"/ref/c{i}.nii.gz",
              "prediction_file": f"/pred/c{i}.nii.gz",
              "metrics": {"1": {"Dice": d, "IoU": d / (2 - d)}, "2": {"Dice": 0.5, "IoU": 1 / 3}}}
             for i, d in enumerate(dice_per_case)]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"metric_per_case": cases, "mean": {}, "foreground_mean": {},
                   "nnunet_mulmod": {"label_names": {"1": "liver", "2": "spleen"}}}, f)
    return path


def test_wilcoxon_p_value_and_median_difference_on_constructed_cases(tmp_path):
    base = np.array([0.70, 0.72, 0.60, 0.80, 0.75, 0.66, 0.71, 0.69])
    # better on all 8 cases, by distinct amounts: exact two-sided p = 2 / 2^8
    improved = base + np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08])
    # n=6: +1 .. +5 and -6 (x0.01): W- = 6; 14 of the 64 sign patterns have W- <= 6 -> p = 2 * 14/64
    mixed = base.copy()
    mixed[:6] += np.array([0.01, 0.02, 0.03, 0.04, 0.05, -0.06])
    mods = ["CT"] * 4 + ["MR"] * 4
    inputs = {"nnU-Net": write_summary(str(tmp_path / "a.json"), base, mods),
              "MulModSeg": write_summary(str(tmp_path / "b.json"), improved, mods),
              "mixed": write_summary(str(tmp_path / "c.json"), mixed, mods)}
    result = compare_models(inputs, dataset_json=DATASET_JSON, output_folder=str(tmp_path / "out"))
    s = result["statistics"].set_index(["model", "modality", "class"])
    row = s.loc[("MulModSeg", "all", "liver")]
    assert row["n"] == 8 and row["n_higher"] == 8 and row["p_value"] == pytest.approx(2 / 2 ** 8)
    assert row["median_difference"] == pytest.approx(0.045)
    row = s.loc[("mixed", "all", "liver")]
    assert row["n_equal"] == 2 and row["p_value"] == pytest.approx(28 / 64)  # zero differences are dropped
    # spleen is identical everywhere: p = 1, no difference
    assert s.loc[("MulModSeg", "all", "spleen"), "p_value"] == 1.0
    # per modality: 4 CT cases, all better -> p = 2/16, and the wording says n is too small
    assert s.loc[("MulModSeg", "CT", "liver"), "p_value"] == pytest.approx(2 / 16)
    md = open(result["paths"]["markdown"]).read()
    assert "n < 6" in md and "MulModSeg is better on these cases" in md
    assert "p = 0.0078" in md
    per_case = pd.read_csv(result["paths"]["per_case_csv"])
    got = per_case[(per_case.model == "MulModSeg") & (per_case["class"] == "liver")].set_index("case_id")
    assert len(got) == 8 and got.loc["c7", "difference"] == pytest.approx(0.08)


def test_holm_adjustment():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, np.nan]), [0.03, 0.06, 0.06, np.nan])


def test_different_case_sets_are_an_error_unless_asked(tmp_path):
    a = write_summary(str(tmp_path / "a.json"), [0.5, 0.6, 0.7], ["CT"] * 3)
    b = write_summary(str(tmp_path / "b.json"), [0.5, 0.6], ["CT"] * 2)
    with pytest.raises(EvaluationError, match="b lacks \\['c2'\\].*--common_cases_only"):
        compare_models({"a": a, "b": b}, dataset_json=DATASET_JSON, output_folder=str(tmp_path / "o"))
    result = compare_models({"a": a, "b": b}, dataset_json=DATASET_JSON, output_folder=str(tmp_path / "o"),
                            common_cases_only=True)
    assert set(result["statistics"]["n"]) == {2}


def test_cli_compares_prediction_folders_end_to_end(tmp_path, capsys):
    data = make_synthetic_dataset(str(tmp_path / "data"), n_cases=6, shape=(8, 16, 16), n_classes=2, seed=5,
                                  methods={"vanilla": {"shift": 2, "drop": 0.2}, "ours": {"shift": 0, "drop": 0.0}},
                                  with_images=False)
    out = str(tmp_path / "cmp")
    code = compare_main(["-i", data["predictions"]["vanilla"][0], data["predictions"]["ours"][0],
                         "-n", "nnU-Net", "MulModSeg", "-ref", data["labels"], "-djfile", data["dataset_json"],
                         "-o", out, "-np", "1", "-m", "Dice", "HD95"])
    assert code == 0
    stats = pd.read_csv(os.path.join(out, "comparison.csv"))
    avg = stats[(stats["class"] == "Avg") & (stats.metric == "Dice") & (stats.modality == "all")].iloc[0]
    # "ours" is the reference itself: Dice 1 on every case, so it is higher on every case
    assert avg["n"] == 6 and avg["n_higher"] == 6 and avg["mean"] == pytest.approx(1.0)
    assert set(stats.modality) == {"all", "CT", "MR"} and set(stats.metric) == {"Dice", "HD95"}
    # the computed summaries form a results folder the report reads
    assert os.path.isfile(os.path.join(out, "summaries", "MulModSeg", "fold_0", "summary.json"))
    # a prediction folder of another dataset is refused with the reason
    other = dict(json.load(open(data["dataset_json"])), labels={"background": 0, "tumour": 1})
    json.dump(other, open(os.path.join(data["predictions"]["ours"][0], "dataset.json"), "w"))
    code = compare_main(["-i", data["predictions"]["vanilla"][0], data["predictions"]["ours"][0], "-n", "a", "b",
                         "-ref", data["labels"], "-djfile", data["dataset_json"], "-o", out, "-np", "1"])
    assert code == 1 and "another dataset" in capsys.readouterr().err


def test_nnunet_training_output_folders_pool_their_folds(tmp_path, monkeypatch):
    # nnUNet_results/Dataset001_Toy/<trainer>/fold_<k>/validation: each training case appears in one fold; the
    # reference defaults to nnUNet_preprocessed/Dataset001_Toy/gt_segmentations
    import shutil
    data = make_synthetic_dataset(str(tmp_path / "data"), n_cases=8, shape=(8, 16, 16), n_classes=2, seed=6, folds=2,
                                  methods={"vanilla": {"shift": 2, "drop": 0.2}, "ours": {"shift": 1, "drop": 0.0}},
                                  with_images=False)
    preprocessed = tmp_path / "nnUNet_preprocessed"
    shutil.copytree(data["labels"], preprocessed / "Dataset001_Toy" / "gt_segmentations")
    monkeypatch.setenv("nnUNet_preprocessed", str(preprocessed))
    trainers = {}
    for method, trainer in (("vanilla", "nnUNetTrainer__nnUNetPlans__3d_fullres"),
                            ("ours", "nnUNetTrainerMulModSeg__nnUNetPlans__3d_fullres")):
        folder = tmp_path / "nnUNet_results" / "Dataset001_Toy" / trainer
        for fold, predictions in data["predictions"][method].items():
            shutil.copytree(predictions, folder / f"fold_{fold}" / "validation")
        shutil.copy(data["dataset_json"], folder / "dataset.json")
        trainers[method] = str(folder)
    result = compare_models({"nnU-Net": trainers["vanilla"], "MulModSeg": trainers["ours"]},
                            output_folder=str(tmp_path / "cmp"), num_processes=1)
    avg = result["statistics"].set_index(["modality", "class"]).loc[("all", "Avg")]
    assert avg["n"] == 8  # both folds pooled, each case once
    assert sorted(os.listdir(tmp_path / "cmp" / "summaries" / "MulModSeg")) == ["fold_0", "fold_1"]
