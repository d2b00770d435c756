"""Our trainers do not mirror (in training nor at test time) when the dataset has left/right classes: a mirrored
abdomen shows the left kidney where the right one belongs. Otherwise they mirror as nnU-Net does."""
import copy
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from nnunet_mulmod.training.mirroring import lateral_class_names  # noqa: E402

LATERAL_LABELS = {"background": 0, "kidney_left": 1, "kidney_right": 2}


def test_lateral_class_names_are_the_names_with_left_or_right_as_a_word():
    labels = {"background": 0, "kidney_left": 1, "Right Kidney": 2, "left-atrium": 3, "liver": 4, "leftover": 5,
              "brightness_right_side": 6, "adrenal_gland_RIGHT": 7, "spleen": 8}
    assert lateral_class_names(labels) == ["kidney_left", "Right Kidney", "left-atrium", "brightness_right_side",
                                           "adrenal_gland_RIGHT"]
    assert lateral_class_names({"background": 0, "liver": 1, "kidney": 2}) == []


@pytest.fixture
def tiny_env(tmp_path, monkeypatch):
    from tiny_trainer import write_tiny_preprocessed
    base = write_tiny_preprocessed(str(tmp_path / "pre"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "res"))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    return base


def built_mirroring(trainer_class, dataset_json, monkeypatch):
    """(mirror axes nnU-Net's training transforms were built with, one per modality stream; the test-time mirroring
    axes the checkpoint will carry; the training log) of a trainer whose data loaders were just built."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from tiny_trainer import PLANS

    built = []
    original = nnUNetTrainer.get_training_transforms

    def recording(patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes, *args, **kwargs):
        built.append(mirror_axes)
        return original(patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes, *args, **kwargs)

    monkeypatch.setattr(nnUNetTrainer, "get_training_transforms", staticmethod(recording))
    plans = dict(copy.deepcopy(PLANS), continue_training=False)
    trainer = trainer_class(plans, "2d", 0, copy.deepcopy(dataset_json), torch.device("cpu"))
    trainer.initialize()
    trainer.get_dataloaders()
    with open(trainer.log_file, encoding="utf-8") as f:
        return built, trainer.inference_allowed_mirroring_axes, f.read()


def test_left_right_classes_switch_mirroring_off_in_training_and_at_test_time(tiny_env, monkeypatch):
    from nnunet_mulmod.text.table import one_hot_table
    from nnunet_mulmod.training.mulmodseg_trainer import (nnUNetTrainerALT, nnUNetTrainerCTOnly,
                                                           nnUNetTrainerMulModSeg, nnUNetTrainerMulModSegMirroring)
    from tiny_trainer import DATASET_JSON

    lateral = dict(copy.deepcopy(DATASET_JSON), labels=dict(LATERAL_LABELS))
    table = os.path.join(tiny_env, "lateral_table.pt")
    one_hot_table(lateral).save(table)
    monkeypatch.setenv("nnUNet_mulmod_text_table", table)
    for trainer_class in (nnUNetTrainerMulModSeg, nnUNetTrainerALT, nnUNetTrainerCTOnly):
        built, test_time, log = built_mirroring(trainer_class, lateral, monkeypatch)
        assert built and all(axes is None for axes in built), (trainer_class.__name__, built)
        assert test_time is None, trainer_class.__name__
        assert log.count("Mirroring off, in training and at test time: classes kidney_left, kidney_right are "
                         "left/right-specific") == 1
    # the ablation keeps nnU-Net's mirroring (2d: both axes) whatever the classes
    built, test_time, log = built_mirroring(nnUNetTrainerMulModSegMirroring, lateral, monkeypatch)
    assert built and all(tuple(axes) == (0, 1) for axes in built) and tuple(test_time) == (0, 1)
    assert "Mirroring off" not in log


def test_classes_without_sides_keep_nnunet_mirroring(tiny_env, monkeypatch):
    from nnunet_mulmod.training.mulmodseg_trainer import nnUNetTrainerMulModSeg
    from tiny_trainer import DATASET_JSON

    built, test_time, log = built_mirroring(nnUNetTrainerMulModSeg, DATASET_JSON, monkeypatch)  # liver, spleen
    assert len(built) == 2 and all(tuple(axes) == (0, 1) for axes in built)  # one stream per modality (ALT)
    assert tuple(test_time) == (0, 1) and "Mirroring off" not in log


def test_an_unknown_mirroring_setting_is_refused(tiny_env, monkeypatch):
    from nnunet_mulmod.training.mulmodseg_trainer import nnUNetTrainerMulModSeg
    from tiny_trainer import DATASET_JSON

    class nnUNetTrainerMulModSegTypo(nnUNetTrainerMulModSeg):
        mirroring = "no"

    with pytest.raises(ValueError, match=r"nnUNetTrainerMulModSegTypo.mirroring must be one of \('auto', 'on', "
                                         r"'off'\), not 'no'"):
        built_mirroring(nnUNetTrainerMulModSegTypo, DATASET_JSON, monkeypatch)


def test_every_trainer_of_the_package_follows_the_rule():
    """The README says every trainer we register mirrors by this rule: a trainer that bypasses the base would not."""
    from nnunet_mulmod.nnunet_trainers import registered_trainers
    from nnunet_mulmod.training.mirroring import nnUNetTrainerNoMirroringIfLateral

    trainers = registered_trainers()
    assert {"nnUNetTrainerMulModSeg", "nnUNetTrainerZeus", "nnUNetTrainerCTOnly", "nnUNetTrainerALTPrimus"} <= set(trainers)
    assert [n for n, cls in trainers.items() if not issubclass(cls, nnUNetTrainerNoMirroringIfLateral)] == []
