"""MulModSeg intensity protocol through the real nnU-Net commands: nnUNetv2_plan_and_preprocess, the plans
variant + nnUNetv2_preprocess, and nnUNetv2_predict on a tiny synthetic CT+MR dataset."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conversion_fixtures import nnunet_env  # noqa: F401 (pytest fixture)
from conversion_fixtures import read_json, run_cli, shared_data, write_volume
from nnunet_mulmod.dataset_conversion.own_data import main as convert_own_data

SHAPE = (16, 20, 20)


def case_images():
    """HU CT with air; a CT crop without air or fat (HU 10..100: looks like MR to an intensity rule); MR >= 20."""
    rng = np.random.default_rng(0)
    ct = np.full(SHAPE, -1000.0)
    ct[:, 3:-3, 3:-3] = 50 + rng.normal(0, 60, (SHAPE[0], SHAPE[1] - 6, SHAPE[2] - 6))
    ct[4:8, 6:10, 6:10] = 400  # bone, above the window
    soft_ct = rng.uniform(10, 100, SHAPE)
    mr = rng.gamma(2.0, 150.0, SHAPE) + 20
    return {"ct_air": (ct.astype(np.int16), "CT"), "ct_soft": (soft_ct.astype(np.int16), "CT"),
            "mr_a": (mr.astype(np.int16), "MR"), "mr_b": ((mr * 0.5 + 30).astype(np.int16), "MR")}


def expected_ct(image, window=(-275, 125)):
    return (np.clip(image.astype(np.float64), *window) - window[0]) / (window[1] - window[0])


def expected_mr(image):
    low, high = np.percentile(image.astype(np.float64), [0.5, 99.5])
    clipped = np.clip(image.astype(np.float64), low, high)
    return (clipped - clipped.min()) / (clipped.max() - clipped.min())


def as_nnunet_reads(image):
    """The dataset uses NibabelIOWithReorient (RAS): nnU-Net's array of an LPS-written volume is flipped in x, y."""
    return image[:, ::-1, ::-1]


def preprocessed(env, plans_identifier, case):
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    folder = Path(env["nnUNet_preprocessed"]) / "Dataset520_Intensity" / f"{plans_identifier}_3d_fullres"
    data, seg, _, properties = nnUNetDatasetBlosc2(str(folder)).load_case(case)
    return as_nnunet_reads(np.asarray(data[0]))


@pytest.fixture
def tiny_dataset(tmp_path, nnunet_env):
    images = case_images()
    rows = ["case_id,image,label,modality"]
    for case, (image, modality) in images.items():
        label = np.zeros(SHAPE, np.uint8)
        label[5:11, 6:14, 6:14] = 1
        write_volume(tmp_path / f"{case}.nii.gz", image)
        write_volume(tmp_path / f"{case}_seg.nii.gz", label)
        rows.append(f"{case},{case}.nii.gz,{case}_seg.nii.gz,{modality}")
    (tmp_path / "cases.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "labels.json").write_text(json.dumps({"background": 0, "organ": 1}))
    convert_own_data(["--csv", str(tmp_path / "cases.csv"), "--labels", str(tmp_path / "labels.json"), "-d", "520",
                      "--name", "Intensity", "-np", "1"])
    return images


def test_protocol_through_nnunet_commands(tiny_dataset, nnunet_env, tmp_path):
    images = tiny_dataset
    # 1) the unchanged nnU-Net command; its planner picks our normalizer from the channel name, its spawned workers
    # find MulModPreprocessor by name, and the dataset.json tag decides (ct_soft has no air: detection would say MR)
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", 520, "-c", "3d_fullres", "-np", 1, "-npfp", 1,
             "-preprocessor_name", "MulModPreprocessor"], nnunet_env)
    plans = read_json(Path(nnunet_env["nnUNet_preprocessed"]) / "Dataset520_Intensity" / "nnUNetPlans.json")
    configuration = plans["configurations"]["3d_fullres"]
    assert configuration["normalization_schemes"] == ["MulModIntensityNormalization"]
    assert plans["transpose_forward"] == [0, 1, 2] and configuration["spacing"] == [1.0, 1.0, 1.0]  # no resampling
    for case in ("ct_air", "ct_soft"):
        np.testing.assert_allclose(preprocessed(nnunet_env, "nnUNetPlans", case), expected_ct(images[case][0]),
                                   atol=1e-5)
    np.testing.assert_allclose(preprocessed(nnunet_env, "nnUNetPlans", "mr_a"), expected_mr(images["mr_a"][0]),
                               atol=1e-5)

    # 2) the MulModSeg plans variant (MulModPreprocessor, custom CT window recorded in the plans)
    run_cli(["nnunet_mulmod_plans_variant", "-d", 520, "-preset", "mulmodseg", "--spacing", 1, 1, 1,
             "--patch_size", 16, 16, 16, "--ct_window", -100, 200], nnunet_env)
    variant = read_json(Path(nnunet_env["nnUNet_preprocessed"]) / "Dataset520_Intensity" / "nnUNetPlans_MulModSeg.json")
    assert variant["configurations"]["3d_fullres"]["mulmod_intensity"] == {"ct_window": [-100.0, 200.0]}

    # 3) nnUNetv2_predict on a new, untagged scan (its spawned preprocessing worker must find MulModPreprocessor
    # and the normalizer by name, or it fails)
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    plans = read_json(Path(nnunet_env["nnUNet_preprocessed"]) / "Dataset520_Intensity" / "nnUNetPlans_MulModSeg.json")
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    network = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                     1, 2, deep_supervision=False)
    model = Path(nnunet_env["nnUNet_results"]) / "Dataset520_Intensity" / "nnUNetTrainer__nnUNetPlans_MulModSeg__3d_fullres"
    (model / "fold_0").mkdir(parents=True)
    torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": None},
               model / "fold_0" / "checkpoint_final.pth")
    (model / "plans.json").write_text(json.dumps(plans))
    (model / "dataset.json").write_bytes((Path(nnunet_env["nnUNet_raw"]) / "Dataset520_Intensity" / "dataset.json").read_bytes())
    (tmp_path / "new").mkdir()
    write_volume(tmp_path / "new" / "new_scan_0000.nii.gz", images["mr_a"][0], spacing=(1.0, 1.0, 1.0))
    run_cli(["nnUNetv2_predict", "-i", tmp_path / "new", "-o", tmp_path / "pred", "-d", 520, "-p",
             "nnUNetPlans_MulModSeg", "-c", "3d_fullres", "-f", 0, "-device", "cpu", "--disable_tta", "-npp", 1,
             "-nps", 1], nnunet_env)
    prediction = sitk.ReadImage(str(tmp_path / "pred" / "new_scan.nii.gz"))
    assert prediction.GetSize() == SHAPE[::-1]


def test_preprocessor_family_order(tiny_dataset, nnunet_env, monkeypatch):
    """What nnU-Net's preprocessing and prediction workers call (run_case): MulModPreprocessor uses tag >
    detection, the environment override first, and the plans' window; DefaultPreprocessor can only detect."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_mulmod.plans_extensions.mulmod_preprocessor import MulModPreprocessor, case_id_from_image_file

    assert case_id_from_image_file("/x/ct_soft_0000.nii.gz", ".nii.gz") == "ct_soft"
    raw = Path(nnunet_env["nnUNet_raw"]) / "Dataset520_Intensity"
    dataset_json = read_json(raw / "dataset.json")
    plans = {"dataset_name": "Dataset520_Intensity", "plans_name": "p", "original_median_spacing_after_transp": [1, 1, 1],
             "original_median_shape_after_transp": list(SHAPE), "image_reader_writer": "SimpleITKIO",
             "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
             "foreground_intensity_properties_per_channel": {"0": {}},
             "configurations": {"3d_fullres": {
                 "data_identifier": "x", "preprocessor_name": "MulModPreprocessor", "batch_size": 2,
                 "patch_size": [16, 16, 16], "median_image_size_in_voxels": list(SHAPE), "spacing": [1.0, 1.0, 1.0],
                 "normalization_schemes": ["MulModIntensityNormalization"], "use_mask_for_norm": [False],
                 "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
                 "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                 "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                 "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                 "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
                 "architecture": {"network_class_name": "x", "arch_kwargs": {}, "_kw_requires_import": []}}}}
    manager = PlansManager(plans)
    configuration = manager.get_configuration("3d_fullres")
    preprocessor = MulModPreprocessor(verbose=False)
    soft = case_images()["ct_soft"][0]

    def run(file_name, preprocessor=preprocessor, configuration=configuration):
        data, _, _ = preprocessor.run_case([str(raw / "imagesTr" / file_name)], None, manager, configuration,
                                           dataset_json)
        return data[0]  # these plans read with SimpleITKIO: no flip

    monkeypatch.delenv("NNUNET_MULMOD_INTENSITY_FAMILY", raising=False)
    np.testing.assert_allclose(run("ct_soft_0000.nii.gz"), expected_ct(soft), atol=1e-5)  # tagged CT
    # nnU-Net's DefaultPreprocessor cannot see the tags: a CT without air/fat is detected as MR (documented)
    np.testing.assert_allclose(run("ct_soft_0000.nii.gz", DefaultPreprocessor(verbose=False)), expected_mr(soft),
                               atol=1e-5)
    air = case_images()["ct_air"][0]
    np.testing.assert_allclose(run("ct_air_0000.nii.gz", DefaultPreprocessor(verbose=False)), expected_ct(air),
                               atol=1e-5)
    # a window recorded in the plans (nnunet_mulmod_plans_variant --ct_window) replaces the protocol's
    windowed = type(configuration)({**configuration.configuration, "mulmod_intensity": {"ct_window": [-100, 200]}})
    np.testing.assert_allclose(run("ct_soft_0000.nii.gz", configuration=windowed), expected_ct(soft, (-100, 200)),
                               atol=1e-5)
    del dataset_json["case_modalities"]["ct_soft"]
    np.testing.assert_allclose(run("ct_soft_0000.nii.gz"), expected_mr(soft), atol=1e-5)  # untagged: detection
    monkeypatch.setenv("NNUNET_MULMOD_INTENSITY_FAMILY", "CT")
    np.testing.assert_allclose(run("ct_soft_0000.nii.gz"), expected_ct(soft), atol=1e-5)  # explicit override


def test_family_detection_on_real_scans():
    from nnunet_mulmod.intensity import MulModCodeIntensityNormalization, detect_family
    folder = shared_data("totalseg_example")
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "example_ct_sm.nii.gz"))).astype(np.float32)
    mr = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "example_mr_sm.nii.gz"))).astype(np.float32)
    assert detect_family(ct) == "CT" and detect_family(mr) == "MR"
    code = MulModCodeIntensityNormalization(intensityproperties={})
    normalized_mr = code.run(mr.copy())
    assert abs(normalized_mr.mean()) < 1e-4 and abs(normalized_mr.std() - 1) < 1e-3  # authors' code: z-score MR
    np.testing.assert_allclose(code.run(ct.copy()), expected_ct(ct, (-125, 275)), atol=1e-5)


def test_startup_hook_is_cheap_and_can_be_switched_off():
    probe = ("import sys; heavy = [m for m in ('numpy', 'torch', 'nnunetv2') if m in sys.modules]; "
             "assert not heavy, heavy; "
             "from nnunetv2.preprocessing.normalization.map_channel_name_to_normalization import get_normalization_scheme;"
             "print(get_normalization_scheme('CT_or_MR').__name__)")
    env = {k: v for k, v in os.environ.items() if k != "NNUNET_MULMOD_NO_AUTOREGISTER"}
    on = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, encoding="utf-8", errors="replace", check=True)
    assert on.stdout.strip() == "MulModIntensityNormalization"
    off = subprocess.run([sys.executable, "-c", probe], env={**env, "NNUNET_MULMOD_NO_AUTOREGISTER": "1"},
                         capture_output=True, text=True, encoding="utf-8", errors="replace", check=True)
    assert off.stdout.strip() == "ZScoreNormalization"
