"""A MulModSeg checkpoint trained before the current code still predicts, through nnU-Net's own predictor.

The checkpoint is built in the layout of nnunet-mulmod's first releases (commits 347a4a4 / b52ef2e): the layout file
tests/legacy/mulmodseg_347a4a4_state_dict_layout.json was dumped from the network those commits build for the plans
of tests/test_prediction_paths.py. Then the modality classifier was a bare nn.Linear on the pooled bottleneck (``modality_classifier.weight`` /
``.bias``) and the plans had no ``controller_version`` (the authors' controller layout). It is loaded by
``nnUNetPredictor.initialize_from_trained_model_folder`` (trainer found by its name, network rebuilt from the plans,
``load_state_dict``) and predicts with an explicit modality; automatic detection refuses clearly (the old classifier's
features no longer exist)."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nnunet_mulmod.modality import ModalityError
from test_prediction_paths import PLANS as PREDICTION_PLANS

LAYOUT = Path(__file__).parent / "legacy" / "mulmodseg_347a4a4_state_dict_layout.json"
# the plans.json such a run wrote into its results folder: test_prediction_paths's tiny 2d model (the layout file was
# dumped for it), whose "mulmodseg" section then had no controller_version
OLD_PLANS = copy.deepcopy(PREDICTION_PLANS)
OLD_PLANS["dataset_name"] = "Dataset993_Legacy"
del OLD_PLANS["mulmodseg"]["controller_version"]
DATASET_JSON = {"name": "Dataset993_Legacy", "channel_names": {"0": "CT_or_MR"}, "labels": {"background": 0, "liver": 1},
                "numTraining": 2, "file_ending": ".nii.gz", "modalities": ["CT", "MR"],
                "case_modalities": {"ct_case": "CT", "mr_case": "MR"}}


def canonical(key: str) -> str:
    """One name per tensor: the U-Net's state_dict lists shared modules under several names (the decoder holds the
    encoder; a conv block's ``all_modules`` holds its conv and norm), all with the same values in a real checkpoint."""
    key = key.replace("decoder.encoder.", "encoder.", 1)
    return key.replace("all_modules.0.", "conv.").replace("all_modules.1.", "norm.")


def legacy_state_dict() -> dict:
    """Random weights in the old layout (every key and shape from the layout file)."""
    layout = json.loads(LAYOUT.read_text())["state_dict"]
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for key, shape in layout.items():
        name = canonical(key)
        if name not in tensors:
            tensors[name] = torch.randn(shape, generator=generator) * 0.3
        assert list(tensors[name].shape) == shape, key
    return {key: tensors[canonical(key)].clone() for key in layout}


@pytest.fixture
def legacy_model_folder(tmp_path, monkeypatch):
    folder = tmp_path / "Dataset993_Legacy" / "nnUNetTrainerMulModSeg__nnUNetPlans__2d"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(OLD_PLANS))
    (folder / "dataset.json").write_text(json.dumps(DATASET_JSON))
    weights = legacy_state_dict()
    torch.save({"network_weights": weights, "trainer_name": "nnUNetTrainerMulModSeg",
                "init_args": {"plans": copy.deepcopy(OLD_PLANS), "configuration": "2d", "fold": 0,
                              "dataset_json": DATASET_JSON, "device": "cpu"},
                "inference_allowed_mirroring_axes": (0, 1), "current_epoch": 5, "optimizer_state": None,
                "grad_scaler_state": None, "logging": {}, "_best_ema": None},
               folder / "fold_0" / "checkpoint_final.pth")
    return folder, weights


def test_the_layout_file_is_the_old_one():
    layout = json.loads(LAYOUT.read_text())["state_dict"]
    assert layout["modality_classifier.weight"] == [2, 16] and layout["modality_classifier.bias"] == [2]
    assert not any(k.startswith("modality_classifier.linear") or k.endswith("feature_mean") for k in layout)


def test_a_checkpoint_of_the_first_releases_predicts_with_an_explicit_modality(legacy_model_folder, capsys):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_mulmod.inference.modality_selection import set_prediction_modality
    from nnunet_mulmod.modeling.mulmodseg_net import MulModSegNet
    from nnunet_mulmod.training.unwrap import unwrap_network

    folder, weights = legacy_model_folder
    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, perform_everything_on_device=False,
                                device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), (0,), "checkpoint_final.pth")
    network = unwrap_network(predictor.network)
    assert isinstance(network, MulModSegNet)
    # every segmentation weight of the old checkpoint is in the network, unchanged (the text table too)
    loaded = network.state_dict()
    for key, value in weights.items():
        if not key.startswith("modality_classifier."):
            assert torch.equal(loaded[key], value), key
    assert int(network.modality_classifier.fitted) == 0  # the old classifier's features no longer exist
    assert network.controller.normalized is False  # plans without controller_version: the authors' layout

    rng = np.random.RandomState(0)
    image = (100 + 10 * rng.randn(1, 1, 16, 16)).astype(np.float32)
    props = {"spacing": [1.0, 1.0, 1.0]}
    outputs = {}
    for modality in ("CT", "MR"):
        set_prediction_modality(predictor, modality)
        seg, probabilities = predictor.predict_single_npy_array(image, props, None, None, True)
        assert seg.shape == (1, 16, 16) and set(np.unique(seg)) <= {0, 1}
        assert probabilities.shape == (2, 1, 16, 16) and np.allclose(probabilities.sum(0), 1, atol=1e-4)
        outputs[modality] = probabilities
    assert not np.allclose(outputs["CT"], outputs["MR"])  # each modality's prompts from the checkpoint are used
    log = capsys.readouterr().out
    assert "modality CT (given by the user)" in log and "modality MR (given by the user)" in log

    set_prediction_modality(predictor, "auto")
    with pytest.raises(ModalityError):
        predictor.predict_single_npy_array(image, props)
