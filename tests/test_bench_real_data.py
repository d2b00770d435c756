"""The real-data benchmark's own pieces: the CPU configuration it derives from nnU-Net's plans and its split."""
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from bench_real_data import derive_cpu_plans, stratified_splits  # noqa: E402


def test_split_validates_every_case_once_with_both_modalities_in_every_fold():
    case_modalities = {**{f"btcv_{i:02d}": "CT" for i in range(20)}, **{f"chaos_{i:02d}": "MR" for i in range(12)}}
    splits = stratified_splits(case_modalities)
    assert len(splits) == 5
    validated = [c for s in splits for c in s["val"]]
    assert sorted(validated) == sorted(case_modalities)
    for s in splits:
        assert not set(s["train"]) & set(s["val"]) and set(s["train"]) | set(s["val"]) == set(case_modalities)
        counts = {m: sum(case_modalities[c] == m for c in s["val"]) for m in ("CT", "MR")}
        assert counts["CT"] == 4 and counts["MR"] in (2, 3)
    assert max(len(s["val"]) for s in splits) - min(len(s["val"]) for s in splits) <= 1
    assert stratified_splits(case_modalities) == splits  # seeded


def test_cpu_plans_build_the_documented_network(tmp_path):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    conv = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": 7, "features_per_stage": [32, 64, 128, 256, 512, 512, 512],
                            "conv_op": "torch.nn.modules.conv.Conv2d", "kernel_sizes": [[3, 3]] * 7,
                            "strides": [[1, 1]] + [[2, 2]] * 6, "n_conv_per_stage": [2] * 7,
                            "n_conv_per_stage_decoder": [2] * 6, "conv_bias": True,
                            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                            "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    two_d = {"data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor", "batch_size": 49,
             "patch_size": [256, 256], "spacing": [1.25, 1.25], "normalization_schemes": ["ZScoreNormalization"],
             "use_mask_for_norm": [False], "architecture": conv, "batch_dice": True,
             "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
             "resampling_fn_data_kwargs": {}, "resampling_fn_seg_kwargs": {},
             "resampling_fn_probabilities": "resample_data_or_seg_to_shape", "resampling_fn_probabilities_kwargs": {}}
    plans = {"dataset_name": "Dataset961_RealCTMRDev", "plans_name": "nnUNetPlans",
             "original_median_spacing_after_transp": [5, 1.25, 1.25], "original_median_shape_after_transp": [76, 249, 256],
             "image_reader_writer": "NibabelIOWithReorient", "transpose_forward": [0, 1, 2],
             "transpose_backward": [0, 1, 2], "configurations": {"2d": two_d, "3d_fullres": dict(two_d)},
             "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
             "foreground_intensity_properties_per_channel": {}}
    (tmp_path / "nnUNetPlans.json").write_text(json.dumps(plans))
    derive_cpu_plans(str(tmp_path))
    written = json.loads((tmp_path / "nnUNetPlansCPU.json").read_text())
    assert written["plans_name"] == "nnUNetPlansCPU" and list(written["configurations"]) == ["2d"]
    config = written["configurations"]["2d"]
    assert (config["spacing"], config["patch_size"], config["batch_size"]) == ([2.5, 2.5], [128, 128], 16)
    assert config["data_identifier"] == "nnUNetPlansCPU_2d"  # preprocessed beside nnU-Net's own 2d data
    assert config["normalization_schemes"] == ["ZScoreNormalization"]  # nnU-Net's plan, unchanged
    manager = PlansManager(str(tmp_path / "nnUNetPlansCPU.json"))
    network = nnUNetTrainer.build_network_architecture(manager, manager.get_configuration("2d"), 1, 5, True)
    assert network.encoder.output_channels == [16, 32, 64, 128, 256, 256]
    outputs = network(torch.zeros(1, 1, 128, 128))
    assert [tuple(o.shape[2:]) for o in outputs] == [(128, 128), (64, 64), (32, 32), (16, 16), (8, 8)]


def test_dice_summary_means_organs_per_case_before_cases_and_keeps_every_case():
    import pandas as pd
    from bench_real_data import dice_summary

    rows = [("ct_a", "CT", "liver", 0.9), ("ct_a", "CT", "spleen", 0.5), ("ct_b", "CT", "liver", 0.7),
            ("ct_b", "CT", "spleen", 0.3), ("mr_a", "MR", "liver", 0.8), ("mr_a", "MR", "spleen", 0.6)]
    summary = dice_summary(pd.DataFrame(rows, columns=["case_id", "modality", "label_name", "value"]))
    assert summary["dice"]["CT"] == pytest.approx({"liver": 0.8, "spleen": 0.4, "mean": 0.6, "n_cases": 2})
    assert summary["dice"]["MR"]["mean"] == pytest.approx(0.7) and summary["dice"]["MR"]["n_cases"] == 1
    assert summary["case_dice"] == {
        "ct_a": {"modality": "CT", "mean": pytest.approx(0.7), "organs": {"liver": 0.9, "spleen": 0.5}},
        "ct_b": {"modality": "CT", "mean": pytest.approx(0.5), "organs": {"liver": 0.7, "spleen": 0.3}},
        "mr_a": {"modality": "MR", "mean": pytest.approx(0.7), "organs": {"liver": 0.8, "spleen": 0.6}}}


def _results(steps, case_means):
    """A results.json of one nnUNetTrainer run: {case: (modality, mean Dice)}. Its runs say they did not mirror
    (as our trainers since 2026-12-07: renamed to one of them, the run is a current one)."""
    case_dice = {c: {"modality": m, "mean": v} for c, (m, v) in case_means.items()}
    return {"steps": steps, "folds": [0], "comparisons": [], "runs": {"nnUNetTrainer": {
        "trainer": "nnUNetTrainer_40epochs_100it_10val", "dice": {}, "case_dice": case_dice,
        "wall_seconds": 60.0, "step_seconds": [1.0], "mirrored": False}}}


def test_stored_runs_are_paired_case_by_case_with_this_runs_baseline():
    from bench_real_data import add_stored_runs

    cases = {f"ct_{i}": ("CT", 0.5 + 0.05 * i) for i in range(6)}
    cases.update({"mr_0": ("MR", 0.8), "mr_1": ("MR", 0.6)})
    results = _results(4000, cases)
    earlier = _results(4000, {c: (m, v + (0.1 if m == "CT" else -0.2 if c == "mr_0" else 0.0))
                              for c, (m, v) in cases.items()})
    earlier["runs"]["nnUNetTrainerMulModSeg"] = earlier["runs"].pop("nnUNetTrainer")
    add_stored_runs(results, {"earlier/results.json": earlier})
    assert results["runs"]["nnUNetTrainerMulModSeg (stored)"]["stored_from"] == "earlier/results.json"
    rows = {r["modality"]: r for r in results["comparisons"]}
    assert rows["CT"]["n"] == 6 and rows["CT"]["mean_difference"] == pytest.approx(0.1)
    assert (rows["CT"]["n_higher"], rows["CT"]["n_lower"]) == (6, 0)
    assert rows["CT"]["p_value"] == pytest.approx(2 / 2 ** 6)  # all six differences of one sign: the exact minimum
    assert rows["MR"]["mean_difference"] == pytest.approx(-0.1) and (rows["MR"]["n_higher"], rows["MR"]["n_lower"]) == (0, 1)
    assert rows["all"]["n"] == 8


def test_stored_runs_of_another_schedule_or_split_are_refused():
    from bench_real_data import BenchmarkError, add_stored_runs

    cases = {"ct_0": ("CT", 0.5), "mr_0": ("MR", 0.6)}
    with pytest.raises(BenchmarkError, match="2000 steps"):
        add_stored_runs(_results(4000, cases), {"old.json": _results(2000, cases)})
    with pytest.raises(BenchmarkError, match="only there: \\['ct_9'\\]"):
        add_stored_runs(_results(4000, cases), {"old.json": _results(4000, {"ct_9": ("CT", 0.5), "mr_0": ("MR", 0.6)})})
    without_baseline = _results(4000, cases)
    without_baseline["runs"]["nnUNetTrainerALT"] = without_baseline["runs"].pop("nnUNetTrainer")
    assert add_stored_runs(without_baseline, {}) is without_baseline  # nothing to pair: no baseline needed
    with pytest.raises(BenchmarkError, match="needs nnUNetTrainer"):
        add_stored_runs(without_baseline, {"old.json": _results(4000, cases)})
    earlier = _results(4000, cases)
    del earlier["runs"]["nnUNetTrainer"]["case_dice"]
    with pytest.raises(BenchmarkError, match="keeps no per-case Dice"):
        add_stored_runs(_results(4000, cases), {"old.json": earlier})


def test_results_table_lists_stored_runs_their_paired_test_and_every_timing_round():
    from bench_real_data import add_stored_runs, results_markdown

    cases = {f"ct_{i}": ("CT", 0.5 + 0.05 * i) for i in range(6)}
    results = _results(4000, cases)
    earlier = _results(4000, {c: (m, v + 0.1) for c, (m, v) in cases.items()})
    earlier["runs"]["nnUNetTrainerMulModSeg"] = earlier["runs"].pop("nnUNetTrainer")
    add_stored_runs(results, {"earlier/results.json": earlier})
    for run in results["runs"].values():
        run["dice"] = {"CT": {"liver": 0.7, "mean": 0.7, "n_cases": 6}}
    results["figure"] = "./pseudo_dice_vs_steps.png"
    results["step_timing"] = {"vanilla": {"step_s": 1.0, "step_cpu_s": 2.0}, "mulmodseg": {"step_s": 1.1,
                              "step_cpu_s": 2.1}, "ratios": [1.05, 1.15]}
    text = results_markdown(results, {"labels": {"background": 0, "liver": 1}, "modalities": ["CT"],
                                      "case_modalities": {}})
    assert "| nnUNetTrainerMulModSeg (stored) | 70.0 | 70.0 |" in text
    assert "| nnUNetTrainerMulModSeg (stored) | nnUNetTrainer | CT | 6 | +10.00 | 6 / 0 | 0.0312 |" in text
    assert "ratio 1.100 (CPU time 1.050); ratio of each round: 1.050, 1.150." in text


def test_runs_of_different_folds_combine_into_one_table_and_one_paired_test():
    from bench_real_data import combine_results

    def fold(f, shift, organs=True):
        cases = {f"ct_{f}{i}": ("CT", 0.6 + 0.02 * i) for i in range(3)}
        cases[f"mr_{f}"] = ("MR", 0.7)
        results = _results(4000, cases)
        results["folds"] = [f]
        mulmodseg = {c: {"modality": m, "mean": v + shift, **({"organs": {"liver": v + shift}} if organs else {})}
                     for c, (m, v) in cases.items()}
        for v in results["runs"]["nnUNetTrainer"]["case_dice"].values():
            v["organs"] = {"liver": v["mean"]}
        results["runs"]["nnUNetTrainerMulModSeg"] = {"trainer": "t", "case_dice": mulmodseg, "wall_seconds": 30.0,
                                                     "step_seconds": [1.1], "auto_detection": {c: "CT" for c in cases},
                                                     "mirrored": False}
        return results

    session_1, session_2 = fold(0, 0.1), fold(1, 0.1)
    # a later session that paired with session 1 carries a copy of its MulModSeg run: counted once
    session_2["runs"]["nnUNetTrainerMulModSeg (stored)"] = dict(session_1["runs"]["nnUNetTrainerMulModSeg"])
    combined = combine_results({"s1.json": session_1, "s2.json": session_2})
    assert combined["folds"] == [0, 1] and set(combined["runs"]) == {"nnUNetTrainer", "nnUNetTrainerMulModSeg"}
    mulmodseg = combined["runs"]["nnUNetTrainerMulModSeg"]
    assert mulmodseg["dice"]["CT"]["n_cases"] == 6 and mulmodseg["dice"]["CT"]["liver"] == pytest.approx(0.72)
    assert mulmodseg["wall_seconds"] == 60.0 and mulmodseg["auto_detection_correct"] == 6  # the MRs were called CT
    rows = {r["modality"]: r for r in combined["comparisons"]}
    assert rows["CT"]["n"] == 6 and rows["CT"]["mean_difference"] == pytest.approx(0.1) and rows["all"]["n"] == 8
    assert rows["CT"]["p_value"] == pytest.approx(2 / 2 ** 6)
    # organ columns only where every case kept its organs
    assert "liver" not in combine_results({"a": fold(0, 0.1), "b": fold(1, 0.1, organs=False)})[
        "runs"]["nnUNetTrainerMulModSeg"]["dice"]["CT"]


def test_combining_two_runs_of_one_trainer_on_one_fold_or_two_schedules_is_refused():
    from bench_real_data import BenchmarkError, combine_results

    cases = {"ct_0": ("CT", 0.5), "mr_0": ("MR", 0.6)}
    with pytest.raises(BenchmarkError, match="two runs of nnUNetTrainer validated ct_0"):
        combine_results({"a.json": _results(4000, cases), "b.json": _results(4000, {**cases, "ct_0": ("CT", 0.7)})})
    with pytest.raises(BenchmarkError, match="different steps"):
        combine_results({"a.json": _results(4000, cases), "b.json": _results(2000, cases)})


def test_combine_command_writes_the_combined_table_and_refuses_a_file_that_is_not_results(tmp_path, capsys):
    from bench_real_data import main

    cases = {"ct_0": ("CT", 0.5), "mr_0": ("MR", 0.6)}
    for name, shift in (("a.json", 0.0), ("b.json", 0.1)):
        results = _results(4000, {c: (m, v + shift) for c, (m, v) in cases.items()})
        if shift:
            results["runs"]["nnUNetTrainerALT"] = results["runs"].pop("nnUNetTrainer")
        (tmp_path / name).write_text(json.dumps(results))
    assert main(["-o", str(tmp_path / "out"), "--combine", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    table = (tmp_path / "out" / "combined_results.md").read_text()
    assert "| nnUNetTrainerALT | – / – / – / – | 60.0 | – / – / – / – | 70.0 |" in table and "| nnUNetTrainerALT | nnUNetTrainer | CT | 1 | +10.00 |" in table
    (tmp_path / "c.json").write_text("not json")
    assert main(["-o", str(tmp_path / "out2"), "--combine", str(tmp_path / "c.json")]) == 1
    assert "c.json: not a readable results.json" in capsys.readouterr().err and not (tmp_path / "out2").exists()
    (tmp_path / "d.json").write_text(json.dumps({"steps": 4000}))
    assert main(["-o", str(tmp_path / "out2"), "--combine", str(tmp_path / "d.json")]) == 1
    assert "d.json: not a results.json of this benchmark" in capsys.readouterr().err


def test_stored_runs_are_read_and_checked_before_anything_is_converted_or_trained(tmp_path):
    from bench_real_data import BenchmarkError, RealDataBenchmark

    other_schedule = tmp_path / "old.json"
    other_schedule.write_text(json.dumps(_results(2000, {"ct_0": ("CT", 0.5)})))
    benchmark = RealDataBenchmark(str(tmp_path / "out"), str(tmp_path / "no_data"), 4000, 100, 10, [0],
                                  ["nnUNetTrainer"], 1, False)
    for stored, message in ((tmp_path / "missing.json", "missing.json: not a readable"), (other_schedule, "2000 steps")):
        with pytest.raises(BenchmarkError, match=message):
            benchmark.all(timing=False, paired_with=[str(stored)])
        assert not (tmp_path / "out" / "nnUNet_raw").exists()


def test_every_run_is_paired_with_nnunet_and_with_nnunet_without_mirroring_where_those_ran():
    from bench_real_data import baseline_pairs, combine_results

    assert baseline_pairs(["nnUNetTrainer", "nnUNetTrainerNoMirroring", "nnUNetTrainerMulModSeg"]) == [
        ("nnUNetTrainerNoMirroring", "nnUNetTrainer"), ("nnUNetTrainerMulModSeg", "nnUNetTrainer"),
        ("nnUNetTrainerMulModSeg", "nnUNetTrainerNoMirroring")]
    assert baseline_pairs(["nnUNetTrainerNoMirroring", "nnUNetTrainerALT"]) == [
        ("nnUNetTrainerALT", "nnUNetTrainerNoMirroring")]
    cases = {f"ct_{i}": ("CT", 0.5 + 0.05 * i) for i in range(6)}
    results = _results(4000, cases)
    for name, shift in (("nnUNetTrainerNoMirroring", 0.2), ("nnUNetTrainerMulModSeg", 0.25)):
        run = _results(4000, {c: (m, v + shift) for c, (m, v) in cases.items()})["runs"]["nnUNetTrainer"]
        results["runs"][name] = run
    combined = combine_results({"a.json": results})
    rows = {(r["trainer"], r["baseline"]): r for r in combined["comparisons"] if r["modality"] == "CT"}
    assert set(rows) == {("nnUNetTrainerNoMirroring", "nnUNetTrainer"), ("nnUNetTrainerMulModSeg", "nnUNetTrainer"),
                         ("nnUNetTrainerMulModSeg", "nnUNetTrainerNoMirroring")}
    assert rows[("nnUNetTrainerMulModSeg", "nnUNetTrainerNoMirroring")]["mean_difference"] == pytest.approx(0.05)
    assert rows[("nnUNetTrainerMulModSeg", "nnUNetTrainer")]["mean_difference"] == pytest.approx(0.25)


def test_organ_mixups_name_swapped_kidneys_and_the_cases_where_they_happen(tmp_path):
    import numpy as np
    import SimpleITK as sitk
    from bench_real_data import LABELS, organ_confusion, organ_mixups

    reference = np.zeros((2, 10, 10), dtype=np.uint8)
    reference[:, 1:4, 1:4] = 2  # kidney_right, 18 voxels
    reference[:, 6:9, 6:9] = 3  # kidney_left, 18 voxels
    reference[:, 0, 5:9] = 4  # liver, 8 voxels
    swapped = reference.copy()
    swapped[reference == 2], swapped[reference == 3] = 3, 2  # both kidneys swapped in this case
    right = reference.copy()
    right[0, 0, 5] = 1  # one liver voxel called spleen: 1 of 8 in this case (12.5 %), 1 of 16 over both (6 %)
    for folder, arrays in (("ref", {"a": reference, "b": reference}), ("pred", {"a": swapped, "b": right})):
        (tmp_path / folder).mkdir()
        for case, array in arrays.items():
            sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / folder / f"{case}.nii.gz"))
    confusion = organ_confusion(str(tmp_path / "pred"), str(tmp_path / "ref"), ["a", "b"], len(LABELS))
    assert np.asarray(confusion["a"])[2, 3] == 18 and np.asarray(confusion["b"])[4, 1] == 1
    mixups = organ_mixups(confusion, LABELS)
    assert [(m["reference"], m["predicted"]) for m in mixups] == [("kidney_right", "kidney_left"),
                                                                  ("kidney_left", "kidney_right"), ("liver", "spleen")]
    assert mixups[0]["share"] == pytest.approx(0.5) and mixups[0]["cases"] == {"a": 1.0}
    assert mixups[2]["share"] == pytest.approx(1 / 16) and mixups[2]["cases"] == {"b": 0.125}
    assert organ_mixups(confusion, LABELS, min_share=0.1) == mixups[:2]


def test_runs_from_before_mirroring_followed_the_classes_are_marked_mirrored_and_kept_apart():
    """results.json files written before 2026-12-07 have no "mirrored" key: their MulModSeg runs mirrored, today's do
    not (kidney_left/right), so a combined table shows them as another recipe instead of pooling the two."""
    from bench_real_data import combine_results

    old = _results(4000, {"ct_0": ("CT", 0.5), "mr_0": ("MR", 0.6)})
    old["runs"]["nnUNetTrainerMulModSeg"] = {k: v for k, v in old["runs"]["nnUNetTrainer"].items() if k != "mirrored"}
    del old["runs"]["nnUNetTrainer"]["mirrored"]  # nnUNetTrainer mirrors anyway: no mark
    new = _results(4000, {"ct_1": ("CT", 0.7), "mr_1": ("MR", 0.8)})
    new["folds"] = [1]
    new["runs"]["nnUNetTrainerMulModSeg"] = dict(new["runs"]["nnUNetTrainer"])
    combined = combine_results({"old.json": old, "new.json": new})
    assert set(combined["runs"]) == {"nnUNetTrainer", "nnUNetTrainerMulModSeg (mirrored)", "nnUNetTrainerMulModSeg"}
    assert set(combined["runs"]["nnUNetTrainer"]["case_dice"]) == {"ct_0", "mr_0", "ct_1", "mr_1"}
    assert set(combined["runs"]["nnUNetTrainerMulModSeg"]["case_dice"]) == {"ct_1", "mr_1"}
    assert set(combined["runs"]["nnUNetTrainerMulModSeg (mirrored)"]["case_dice"]) == {"ct_0", "mr_0"}


def test_train_seconds_leaves_out_the_pause_before_a_continued_run():
    from bench_real_data import step_seconds, train_seconds
    # three epochs of 10 s, then the run stood still for 1000 s and was continued with --c for two epochs of 12 s
    logging = {"epoch_start_timestamps": [0.0, 10.0, 20.0, 1030.0, 1042.0],
               "epoch_end_timestamps": [10.0, 20.0, 30.0, 1042.0, 1054.0]}
    assert train_seconds(logging) == pytest.approx(54.0)
    assert step_seconds(logging, iterations=4) == pytest.approx(11.0 / 4)  # median of 10, 10, 12, 12; first left out
