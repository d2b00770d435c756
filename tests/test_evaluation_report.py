"""nnunet_mulmod_report: tables and PNG figures from a tiny synthetic results folder."""
import json
import os

import numpy as np
import pytest

from nnunet_mulmod.evaluation.evaluate_folder import evaluate_folder
from nnunet_mulmod.evaluation.report import main as report_main
from nnunet_mulmod.evaluation.tables import load_case_metrics
from synthetic import make_synthetic_dataset


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    data = make_synthetic_dataset(str(root / "data"), n_cases=8, shape=(8, 24, 24), n_classes=3, folds=2,
                                  spacing=(3.0, 1.0, 1.0), seed=2,
                                  methods={"good": {"shift": 1, "drop": 0.0}, "bad": {"shift": 3, "drop": 0.3}})
    for method, folds in data["predictions"].items():
        for fold, folder in folds.items():
            evaluate_folder(data["labels"], folder, data["dataset_json"],
                            str(root / "results" / method / f"fold_{fold}" / "summary.json"), num_processes=1,
                            missing="skip", progress=False)
    with open(root / "results" / "report_settings.json", "w", encoding="utf-8") as f:
        json.dump({"title": "Toy table", "settings": [{"name": "Baseline", "path": "bad"},
                                                      {"name": "Ours", "path": "good"}]}, f)
    return {"root": root, "data": data, "results": str(root / "results")}


def read_png_shape(path):
    import matplotlib.image
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(path).shape


def test_report_cli_writes_tables_and_figures(results):
    out = str(results["root"] / "out")
    code = report_main([results["results"], "-o", out, "-m", "Dice", "HD95", "-img", results["data"]["images"],
                        "-djfile", results["data"]["dataset_json"]])
    assert code == 0
    for name in ("report.md", "tables.csv", "per_case.csv", "tables.tex"):
        assert os.path.getsize(os.path.join(out, name)) > 100
    for name in ("dice_per_class.png", "dice_per_modality_boxplot.png", "hd95_per_class.png", "qualitative.png"):
        h, w, _ = read_png_shape(os.path.join(out, name))
        assert h > 300 and w > 300
    # qualitative figure: 2 rows (CT, MR) x (image, ground truth, 2 settings) panels -> wider than tall
    h, w, _ = read_png_shape(os.path.join(out, "qualitative.png"))
    assert w > 1.3 * h

    md = open(os.path.join(out, "report.md")).read()
    assert md.startswith("# Toy table")
    # rows in report_settings.json order with display names, one table per modality
    ct_table = md.split("**Dice (%), CT**")[1].split("**Dice (%), MR**")[0]
    assert ct_table.index("| Baseline |") < ct_table.index("| Ours |")
    tex = open(os.path.join(out, "tables.tex")).read()
    assert r"\multicolumn{4}{c}{CT}" in tex and r"\multicolumn{4}{c}{MR}" in tex


def test_table_cells_are_mean_and_std_over_folds_of_per_fold_means(results):
    import pandas as pd
    out = str(results["root"] / "out2")
    assert report_main([results["results"], "-o", out]) == 0
    stats = pd.read_csv(os.path.join(out, "tables.csv"))
    # recompute "Ours", MR, organ2 by hand from the summaries
    per_fold = []
    for fold in (0, 1):
        summary = json.load(open(os.path.join(results["results"], "good", f"fold_{fold}", "summary.json")))
        values = [c["metrics"]["2"]["Dice"] for c in summary["metric_per_case"] if c["modality"] == "MR"]
        per_fold.append(np.nanmean(values))
    row = stats[(stats.setting == "Ours") & (stats.modality == "MR") & (stats.label_name == "organ2")].iloc[0]
    assert row["mean"] == pytest.approx(np.mean(per_fold)) and row["std"] == pytest.approx(np.std(per_fold, ddof=1))
    assert row["n_folds"] == 2
    md = open(os.path.join(out, "report.md")).read()
    assert f"{100 * np.mean(per_fold):.2f} ± {100 * np.std(per_fold, ddof=1):.2f}" in md
    # the better setting is bold in the Avg column
    avg = stats[(stats.label_name == "Avg") & (stats.modality == "CT")].set_index("setting")["mean"]
    assert avg["Ours"] > avg["Baseline"]
    assert f"**{100 * avg['Ours']:.2f}" in md


def test_nnunet_results_folder_with_nnunets_own_summaries(results, tmp_path):
    # nnUNet_results/DatasetXXX layout: <trainer>/fold_0/validation/summary.json from nnU-Net's evaluation (no
    # modality, no case ids) and dataset.json in the trainer folder: modalities come from that dataset.json
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    trainer = tmp_path / "Dataset001_Toy" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    os.makedirs(trainer / "fold_0" / "validation")
    compute_metrics_on_folder(results["data"]["labels"], results["data"]["predictions"]["good"][0],
                              str(trainer / "fold_0" / "validation" / "summary.json"), SimpleITKIO(), ".nii.gz",
                              [1, 2, 3], None, 1)
    with open(results["data"]["dataset_json"]) as f:
        dataset = json.load(f)
    json.dump(dataset, open(trainer / "dataset.json", "w", encoding="utf-8"))
    df = load_case_metrics(str(tmp_path / "Dataset001_Toy"))
    assert set(df["setting"]) == {"nnUNetTrainer__nnUNetPlans__3d_fullres"}
    modality_by_case = df.drop_duplicates("case_id").set_index("case_id")["modality"].to_dict()
    assert modality_by_case == {c: dataset["case_modalities"][c] for c in modality_by_case}
    assert set(df["label_name"]) == {"organ1", "organ2", "organ3"}


def test_results_of_another_dataset_in_the_same_folder_are_named(results, tmp_path):
    import shutil
    folder = tmp_path / "mixed"
    shutil.copytree(results["results"], folder)
    summary_file = folder / "good" / "fold_0" / "summary.json"
    summary = json.load(open(summary_file))
    summary["nnunet_mulmod"]["label_names"] = {"1": "tumour", "2": "edema", "3": "necrosis"}
    json.dump(summary, open(summary_file, "w", encoding="utf-8"))
    assert report_main([str(folder), "-o", str(tmp_path / "o")]) == 1
    # the CLI names the settings and their label sets
    from nnunet_mulmod.evaluation.evaluate_folder import EvaluationError
    with pytest.raises(EvaluationError, match="different label sets.*tumour"):
        load_case_metrics(str(folder))


def test_display_orientation_flips_ras_stored_images_to_the_radiological_view():
    from nnunet_mulmod.evaluation.figures import _display_orientation
    a = np.arange(6).reshape(2, 3)
    ras = {"sitk_stuff": {"direction": (-1, 0, 0, 0, -1, 0, 0, 0, 1)}}  # a NIfTI stored RAS, as SimpleITK reads it
    lps = {"sitk_stuff": {"direction": (1, 0, 0, 0, 1, 0, 0, 0, 1)}}
    np.testing.assert_array_equal(_display_orientation(ras)(a), a[::-1, ::-1])
    np.testing.assert_array_equal(_display_orientation(lps)(a), a)
    np.testing.assert_array_equal(_display_orientation({})(a), a)


def test_demo_draws_its_figures_with_the_report_figure_code(results, tmp_path):
    """One figures module: the demo's overlay is the report's qualitative figure; one CT window."""
    import torch
    from nnunet_mulmod.evaluation.figures import (CT_SOFT_TISSUE_WINDOW, display_window, loss_curves_from_checkpoint,
                                    plot_training_curves)
    from nnunet_mulmod.demo.run_demo import make_overlay

    with open(os.path.join(results["results"], "good", "fold_0", "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    with open(results["data"]["dataset_json"], encoding="utf-8") as f:
        dataset_json = json.load(f)
    overlay = make_overlay(os.path.dirname(results["data"]["dataset_json"]), summary, dataset_json,
                           str(tmp_path / "overlay.png"))
    height, width, _ = read_png_shape(overlay)
    assert height > 200 and width > 3 * 200  # one row per modality; image, ground truth, prediction

    assert display_window(np.zeros((4, 4)), "CT") == CT_SOFT_TISSUE_WINDOW == (-160.0, 240.0)  # W400 L40
    low, high = display_window(np.arange(100.0).reshape(10, 10), "MR-T2")
    assert 0 < low < high < 99  # percentiles of the slice
    assert display_window(np.ones((4, 4)), "MR") == (1.0, 2.0)  # a flat slice still gets a range

    checkpoint = tmp_path / "checkpoint_final.pth"
    torch.save({"logging": {"train_losses": [1.0, 0.5], "train_loss_CT": [1.1, 0.4], "mean_fg_dice": [0.1, 0.4],
                            "epoch_end_timestamps": [1.0, 2.0]}}, checkpoint)
    curves = loss_curves_from_checkpoint(str(checkpoint))
    assert curves == {"train_losses": [1.0, 0.5], "train_loss_CT": [1.1, 0.4]}
    read_png_shape(plot_training_curves(curves, str(tmp_path / "curves.png"), pseudo_dice=[0.1, 0.4]))
