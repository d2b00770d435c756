"""Every nnUNetPredictor path selects and logs each case's modality for a MulModSeg model (or refuses clearly):
predict_from_files_sequential (nnUNetv2_predict -npp 0 -nps 0), predict_single_npy_array and
predict_from_data_iterator (nnUNetv2_predict, predict_from_list_of_npy_arrays). A tiny real 2d model, real
preprocessing and export; what the network was told per case is recorded at its sliding-window entry."""
import copy
import os
import re
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_mulmod.inference.modality_selection import set_prediction_modality
from nnunet_mulmod.modality import ModalityError
from nnunet_mulmod.training.mulmodseg_trainer import PLANS_KEY, nnUNetTrainerMulModSeg

sys.path.insert(0, os.path.dirname(__file__))
from tiny_trainer import ARCH  # noqa: E402  (the tiny 2d U-Net of the trainer-level tests)

PLANS = {"dataset_name": "Dataset992_PathToy", "plans_name": "nnUNetPlans",
         "original_median_spacing_after_transp": [1, 1, 1], "original_median_shape_after_transp": [1, 16, 16],
         "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
         "configurations": {"2d": {"data_identifier": "d", "preprocessor_name": "DefaultPreprocessor",
                                   "batch_size": 2, "patch_size": [16, 16], "spacing": [1, 1],
                                   "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
                                   "architecture": ARCH, "batch_dice": True,
                                   "resampling_fn_data": "resample_data_or_seg_to_shape",
                                   "resampling_fn_seg": "resample_data_or_seg_to_shape",
                                   "resampling_fn_data_kwargs": {}, "resampling_fn_seg_kwargs": {},
                                   "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                                   "resampling_fn_probabilities_kwargs": {}}},
         "experiment_planner_used": "x", "label_manager": "LabelManager",
         "foreground_intensity_properties_per_channel": {"0": {"mean": 0, "std": 1, "percentile_00_5": -1, "percentile_99_5": 1}},
         PLANS_KEY: {"modalities": ["CT", "MR"], "class_names": ["background", "liver"], "embed_dim": 6,
                     "controller_hidden": 8, "controller_version": 2}}
DATASET_JSON = {"name": "Dataset992_PathToy", "channel_names": {"0": "CT_or_MR"},
                "labels": {"background": 0, "liver": 1}, "numTraining": 2, "file_ending": ".nii.gz",
                "modalities": ["CT", "MR"], "case_modalities": {"ct_case": "CT", "mr_case": "MR"}}
LOG = re.compile(r"\[nnunet-mulmod\] (.+?): modality (\S+) \((.+)\)")


@pytest.fixture
def predictor():
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(copy.deepcopy(PLANS))
    configuration = plans_manager.get_configuration("2d")
    torch.manual_seed(0)
    network = nnUNetTrainerMulModSeg.build_network_architecture(plans_manager, configuration, 1, 2, False)
    with torch.no_grad():
        network.text_embeddings.normal_()
        network.modality_classifier.fitted.fill_(1)  # as after training (automatic detection refuses otherwise)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, perform_everything_on_device=False,
                                device=torch.device("cpu"), allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, configuration, [copy.deepcopy(network.state_dict())],
                                    copy.deepcopy(DATASET_JSON), "nnUNetTrainerMulModSeg", None)
    seen = []  # per case: the modality index the network was told (None: automatic detection)
    original = predictor.predict_sliding_window_return_logits

    def recording(data):
        seen.append(network.selected_modality)
        return original(data)

    predictor.predict_sliding_window_return_logits = recording
    predictor.seen = seen
    return predictor


def image(value: float) -> np.ndarray:
    rng = np.random.RandomState(0)
    return (value + 10 * rng.randn(1, 1, 16, 16)).astype(np.float32)  # channel, z, y, x


def write_inputs(folder, names):
    os.makedirs(folder, exist_ok=True)
    files = []
    for name in names:
        path = os.path.join(folder, f"{name}_0000.nii.gz")
        sitk.WriteImage(sitk.GetImageFromArray(image(100)[0]), path)
        files.append([path])
    return files


def logged(capsys):
    return [m.groups() for m in LOG.finditer(capsys.readouterr().out)]


def test_sequential_path_selects_each_case_from_the_dataset_map(predictor, tmp_path, capsys):
    files = write_inputs(str(tmp_path / "in"), ["ct_case", "mr_case", "new_scan"])
    (tmp_path / "out").mkdir()  # nnUNetv2_predict makes it before this call
    predictor.predict_from_files_sequential(files, str(tmp_path / "out"))
    assert predictor.seen == [0, 1, None]
    log = logged(capsys)
    assert log[0] == ("ct_case", "CT", "dataset.json case_modalities")
    assert log[1] == ("mr_case", "MR", "dataset.json case_modalities")
    assert log[2][0] == "new_scan" and log[2][2].startswith("automatic detection; patches:")
    assert {"ct_case.nii.gz", "mr_case.nii.gz", "new_scan.nii.gz"} <= set(os.listdir(tmp_path / "out"))
    # the selection is per case: nothing is left on the network afterwards
    assert predictor.network.selected_modality is None


def test_sequential_path_without_output_files_takes_names_from_the_inputs(predictor, tmp_path, capsys):
    files = write_inputs(str(tmp_path / "in"), ["mr_case", "ct_case"])
    predictor.predict_from_files_sequential(files, None)
    assert predictor.seen == [1, 0]
    assert [entry[:2] for entry in logged(capsys)] == [("mr_case", "MR"), ("ct_case", "CT")]


def test_single_npy_array_uses_the_output_name_or_the_users_modality(predictor, tmp_path, capsys):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    [[path]] = write_inputs(str(tmp_path / "in"), ["scan"])
    array, props = SimpleITKIO().read_images([path])  # as nnU-Net's docstring asks: read with the model's reader
    predictor.predict_single_npy_array(array, props, None, str(tmp_path / "mr_case"))
    assert os.path.isfile(tmp_path / "mr_case.nii.gz")
    predictor.predict_single_npy_array(image(100), props)  # no name, no user choice: detection, logged as such
    set_prediction_modality(predictor, "CT")
    seg = predictor.predict_single_npy_array(image(100), props)
    assert predictor.seen == [1, None, 0] and seg.shape == (1, 16, 16)
    log = logged(capsys)
    assert log[0] == ("mr_case", "MR", "dataset.json case_modalities")
    assert log[1][0] == "image (no case name given)" and log[1][2].startswith("automatic detection")
    assert log[2] == ("image (no case name given)", "CT", "given by the user")


def test_data_iterator_path_selects_per_case(predictor, tmp_path, capsys):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    [[path]] = write_inputs(str(tmp_path / "in"), ["scan"])
    array, props = SimpleITKIO().read_images([path])
    set_prediction_modality(predictor, modality_map={"ct_case": "MR"})  # the user's map wins over the dataset's
    predictor.predict_from_list_of_npy_arrays([array, array.copy(), array.copy()], None, [props] * 3,
                                              [str(tmp_path / "ct_case"), str(tmp_path / "mr_case"), None],
                                              num_processes=1, num_processes_segmentation_export=1)
    assert predictor.seen == [1, 1, None]
    log = logged(capsys)
    assert log[0] == ("ct_case", "MR", "given by the user (modality map)")
    assert log[1] == ("mr_case", "MR", "dataset.json case_modalities")
    assert log[2][0] == "image (no case name given)" and log[2][2].startswith("automatic detection")


def test_refusals_are_clear_and_come_before_predicting(predictor, tmp_path):
    with pytest.raises(ModalityError, match=r"Unknown modality 'XR': this model was trained with \['CT', 'MR'\]"):
        set_prediction_modality(predictor, "XR")
    with pytest.raises(ModalityError, match=r"Unknown modality 'PET' for case 'scan1' in the modality map"):
        set_prediction_modality(predictor, modality_map={"scan1": "PET"})
    set_prediction_modality(predictor, wrong_prompt=True)
    with pytest.raises(ModalityError, match=r"Case None: the mistaken-prompt switch needs the case's true modality"):
        predictor.predict_single_npy_array(image(100), {"spacing": [1.0, 1.0, 1.0]})
    assert predictor.seen == []


def test_automatic_detection_refuses_a_classifier_that_was_never_fitted(predictor, tmp_path):
    # a checkpoint of nnunet-mulmod <= 0.3 loads its classifier unfitted: cases with a known modality predict,
    # a case that would need detection is refused before anything is predicted for it
    with torch.no_grad():
        predictor.network.modality_classifier.fitted.zero_()
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    predictor.list_of_parameters = [copy.deepcopy(predictor.network.state_dict())]
    [[path]] = write_inputs(str(tmp_path / "in"), ["scan"])
    array, props = SimpleITKIO().read_images([path])
    predictor.predict_single_npy_array(array, props, None, str(tmp_path / "ct_case"))
    assert os.path.isfile(tmp_path / "ct_case.nii.gz")
    with pytest.raises(ModalityError, match=r"modality classifier was never fitted.*--modality CT\|MR"):
        predictor.predict_single_npy_array(array, props, None, str(tmp_path / "new_scan"))
    assert not os.path.exists(tmp_path / "new_scan.nii.gz")
    assert predictor.seen == [0] and predictor.network.selected_modality is None


def test_predict_cli_checks_the_modality_before_the_model_loads(tmp_path, capsys):
    import json

    from nnunet_mulmod.inference.cli import main
    model = tmp_path / "model"
    model.mkdir()
    (model / "plans.json").write_text(json.dumps(PLANS))
    (model / "dataset.json").write_text(json.dumps(DATASET_JSON))
    # no fold_0/checkpoint: loading the model would fail with nnU-Net's error, so ours must come first
    for extra, expected in ((["--modality", "XR"], "Unknown modality 'XR': this model was trained with ['CT', 'MR']"),
                            ([], "is not a trained model folder")):
        folder = str(model) if extra else str(tmp_path / "nowhere")
        with pytest.raises(SystemExit) as e:
            main(["-i", str(tmp_path), "-o", str(tmp_path / "out"), "-m", folder, "-device", "cpu"] + extra)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 1 and err.startswith("ERROR: ") and expected in err and "\n" not in err
        assert not (tmp_path / "out").exists()
    plans = dict(PLANS)
    del plans[PLANS_KEY]
    (model / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(SystemExit):
        main(["-i", str(tmp_path), "-o", str(tmp_path / "out"), "-m", str(model), "-device", "cpu"])
    assert "is not a MulModSeg model" in capsys.readouterr().err
