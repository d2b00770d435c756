"""nnunet_mulmod_plans_variant: MulModSeg/Zeus plans derived from nnU-Net's own plans of an AMOS-like dataset."""
import json
from pathlib import Path

import numpy as np
import pytest

from conversion_fixtures import nnunet_env  # noqa: F401 (pytest fixture)
from conversion_fixtures import read_json, run_cli, synthetic_pair, write_volume
from nnunet_mulmod.dataset_conversion.own_data import main as convert_own_data
from nnunet_mulmod.plans_extensions.plans_variant import main as plans_variant


def failing_variant(args, capsys) -> str:
    """Runs the command in this process; it must exit with status 1. Returns its stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        plans_variant([str(a) for a in args])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def plan_amos_like(tmp_path, env, intensity="paper", dataset_id=530):
    """A tiny raw dataset plus the fingerprint of an AMOS-like one (0.78 x 0.78 x 5 mm; small shapes keep the planner fast), then
    nnU-Net's own ExperimentPlanner writes nnUNetPlans.json (fingerprint extraction itself is nnU-Net's job)."""
    rows = ["case_id,image,label,modality"]
    for i, modality in enumerate(("CT", "MR")):
        image, label = synthetic_pair(i, modality=modality)
        write_volume(tmp_path / f"i{i}.nii.gz", image, spacing=(0.78, 0.78, 5.0))
        write_volume(tmp_path / f"l{i}.nii.gz", label, spacing=(0.78, 0.78, 5.0))
        rows.append(f"case{i},i{i}.nii.gz,l{i}.nii.gz,{modality}")
    (tmp_path / "cases.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "labels.json").write_text(json.dumps({"background": 0, "a": 1, "b": 2}))
    convert_own_data(["--csv", str(tmp_path / "cases.csv"), "--labels", str(tmp_path / "labels.json"), "-d",
                      str(dataset_id), "--name", "AmosLike", "--intensity", intensity, "-np", "1"])
    name = f"Dataset{dataset_id}_AmosLike"
    preprocessed = Path(env["nnUNet_preprocessed"]) / name
    preprocessed.mkdir()
    fingerprint = {"foreground_intensity_properties_per_channel": {"0": {
        "max": 3000.0, "mean": 80.0, "median": 70.0, "min": -1000.0, "percentile_00_5": -900.0,
        "percentile_99_5": 900.0, "std": 150.0}},
        "median_relative_size_after_cropping": 1.0,
        "shapes_after_crop": [[60, 200, 200], [50, 200, 200]], "spacings": [[5.0, 0.78, 0.78], [5.0, 0.78, 0.78]]}
    (preprocessed / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    ExperimentPlanner(dataset_id).plan_experiment()
    return preprocessed


def build_and_run(configuration, input_shape):
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    arch = configuration["architecture"]
    network = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                     1, 3, deep_supervision=False)
    network.eval()
    with torch.no_grad():
        return network(torch.zeros((1, 1) + tuple(input_shape))).shape


def test_mulmodseg_and_zeus_variants(tmp_path, nnunet_env, capsys):
    folder = plan_amos_like(tmp_path, nnunet_env)
    original = (folder / "nnUNetPlans.json").read_bytes()
    source = json.loads(original)
    assert source["transpose_forward"] == [0, 1, 2]  # z (5 mm) first

    run_cli(["nnunet_mulmod_plans_variant", "-d", 530, "-preset", "mulmodseg"], nnunet_env)
    plans = read_json(folder / "nnUNetPlans_MulModSeg.json")
    assert (folder / "nnUNetPlans.json").read_bytes() == original  # nnU-Net's own plans untouched
    assert plans["plans_name"] == "nnUNetPlans_MulModSeg" and list(plans["configurations"]) == ["3d_fullres"]
    configuration = plans["configurations"]["3d_fullres"]
    assert configuration["spacing"] == [2.0, 1.5, 1.5]  # 1.5 x 1.5 x 2.0 mm (x, y, z) in nnU-Net's (z, y, x) order
    assert configuration["patch_size"] == [96, 96, 96]
    assert configuration["data_identifier"] == "nnUNetPlans_MulModSeg_3d_fullres"
    assert configuration["preprocessor_name"] == "MulModPreprocessor"
    assert configuration["normalization_schemes"] == ["MulModIntensityNormalization"]
    # median shape rescaled to the new spacing: 55 * 5 / 2 slices, 200 * 0.78 / 1.5 in-plane
    assert configuration["median_image_size_in_voxels"] == pytest.approx([137.5, 104.0, 104.0], abs=0.1)
    arch = configuration["architecture"]["arch_kwargs"]
    assert arch["n_stages"] == len(arch["strides"]) == len(arch["kernel_sizes"]) == len(arch["features_per_stage"])
    downsampling = np.prod(np.array(arch["strides"]), axis=0)
    assert all(96 % d == 0 and 96 // d >= 4 for d in downsampling)
    assert arch["features_per_stage"][0] == 32 and max(arch["features_per_stage"]) == 320
    assert build_and_run(configuration, (32, 32, 32)) == (1, 3, 32, 32, 32)

    assert "nnUNetPlans_MulModSeg.json exists. Pass --overwrite" in failing_variant(
        ["-d", 530, "-preset", "mulmodseg"], capsys)

    plans_variant(["-d", "Dataset530_AmosLike", "-preset", "zeus"])
    zeus = read_json(folder / "nnUNetPlans_Zeus.json")
    assert list(zeus["configurations"]) == ["2d"]
    configuration = zeus["configurations"]["2d"]
    assert configuration["patch_size"] == [256, 256]
    assert configuration["spacing"] == source["configurations"]["2d"]["spacing"]
    assert build_and_run(configuration, (256, 256)) == (1, 3, 256, 256)
    assert (folder / "nnUNetPlans.json").read_bytes() == original


def test_errors(tmp_path, nnunet_env, capsys):
    assert "Could not find a dataset with the ID 531" in failing_variant(["-d", 531, "-preset", "mulmodseg"], capsys)
    plan_amos_like(tmp_path, nnunet_env, intensity="zscore", dataset_id=532)
    assert "apply to the MulModSeg intensity channel only" in failing_variant(
        ["-d", 532, "-preset", "mulmodseg", "--ct_window", -100, 200], capsys)
    (Path(nnunet_env["nnUNet_preprocessed"]) / "Dataset532_AmosLike" / "nnUNetPlans.json").unlink()
    assert "Run nnUNetv2_plan_and_preprocess -d 532" in failing_variant(["-d", 532, "-preset", "zeus"], capsys)
