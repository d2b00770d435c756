"""The demo's synthetic CT/MR phantom generator and its nnU-Net dataset writer."""
import json
import os

import numpy as np
import pytest

from nnunet_mulmod.demo.phantoms import (AIR, CHANNEL_NAME, CT_MEAN_HU, LABELS, MR_MEAN, make_anatomy, make_phantom,
                                         write_phantom_dataset)
from nnunet_mulmod.modality import get_case_modalities

ORGANS = {name: value for name, value in LABELS.items() if value}


def organ_mean(phantom, organ, correct_bias=False):
    image = phantom.image / phantom.bias_field if correct_bias else phantom.image
    return float(image[phantom.label == ORGANS[organ]].mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ct_is_in_hounsfield_units(seed):
    ct = make_phantom("CT", seed)
    for organ, value in ORGANS.items():
        assert abs(organ_mean(ct, organ) - CT_MEAN_HU[value]) < 12, organ
    assert 25 < organ_mean(ct, "kidney_left") < 40 and 50 < organ_mean(ct, "liver") < 70
    # the image corner is outside the body: air
    assert abs(float(ct.image[:, :3, :3].mean()) + 1000) < 15
    assert ct.image.min() >= -1024 and ct.bias_field is None


@pytest.mark.parametrize("seed", [0, 1])
def test_mr_is_non_negative_with_a_bias_field_and_its_own_contrast(seed):
    mr = make_phantom("MR", seed)
    assert mr.image.min() >= 0
    field = mr.bias_field
    assert field.shape == mr.image.shape and field.max() / field.min() > 1.5
    # The same organ is brighter where the field is strong: compare liver voxels in the upper and lower
    # halves of the field. Dividing by the field removes most of that difference (so it is the field, not noise).
    liver = mr.label == ORGANS["liver"]
    strong = field > np.median(field[liver])
    raw_ratio = mr.image[liver & strong].mean() / mr.image[liver & ~strong].mean()
    corrected = mr.image / field
    corrected_ratio = corrected[liver & strong].mean() / corrected[liver & ~strong].mean()
    assert raw_ratio > 1.08
    assert abs(corrected_ratio - 1) < abs(raw_ratio - 1) / 2
    # MR contrast is not CT contrast: the organ order is reversed (bias-corrected means)
    ct = make_phantom("CT", seed)
    assert organ_mean(ct, "liver") > organ_mean(ct, "spleen") > organ_mean(ct, "kidney_right")
    assert (organ_mean(mr, "liver", True) < organ_mean(mr, "spleen", True)
            < organ_mean(mr, "kidney_right", True))
    assert MR_MEAN[ORGANS["liver"]] < MR_MEAN[ORGANS["kidney_left"]]


def test_ct_and_mr_have_the_same_label_set_and_all_organs():
    for seed in range(4):
        for modality in ("CT", "MR"):
            phantom = make_phantom(modality, seed)
            assert set(np.unique(phantom.label)) == set(LABELS.values()), (modality, seed)
            assert phantom.label.dtype == np.uint8
            for organ, value in ORGANS.items():  # each organ is big enough to segment on this grid
                assert (phantom.label == value).sum() > 150, (modality, seed, organ)


def test_subjects_differ_and_a_seed_reproduces_its_subject():
    a, b = make_phantom("CT", 0), make_phantom("CT", 1)
    again = make_phantom("CT", 0)
    np.testing.assert_array_equal(a.image, again.image)
    np.testing.assert_array_equal(a.label, again.label)
    for organ, value in ORGANS.items():
        overlap = 2 * ((a.label == value) & (b.label == value)).sum() / ((a.label == value).sum() + (b.label == value).sum())
        assert overlap < 0.95, organ  # position, size, shape differ between subjects


def test_organs_are_not_separable_by_an_intensity_threshold():
    """Dice must measure shape and context: no intensity interval picks an organ out of the body well."""
    for modality in ("CT", "MR"):
        phantom = make_phantom(modality, 3)
        body = make_anatomy(np.random.default_rng(3)).tissue != AIR  # same seed -> same anatomy
        values = phantom.image[body]
        cuts = np.quantile(values, np.linspace(0, 1, 41))
        best = {}
        for organ, value in ORGANS.items():
            mask = (phantom.label == value)[body]
            best[organ] = max(2 * (m & mask).sum() / (m.sum() + mask.sum())
                              for i, lo in enumerate(cuts) for hi in cuts[i + 1:]
                              for m in [(values >= lo) & (values <= hi)])
        # the demo's target is a mean foreground Dice of 0.7; the best threshold is far from it
        assert np.mean(list(best.values())) < 0.5, (modality, best)
        assert max(best[o] for o in ("spleen", "kidney_right", "kidney_left")) < 0.5, (modality, best)
        assert best["liver"] < 0.85, (modality, best)


def test_unknown_modality_is_refused():
    with pytest.raises(ValueError, match="'CT' or 'MR'"):
        make_phantom("PET", 0)


def test_written_dataset_passes_nnunet_integrity_check(tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    shape, spacing = (24, 20, 16), (13.0, 13.0, 14.0)
    folder = write_phantom_dataset(str(tmp_path), dataset_id=991, name="PhantomTest", n_train=(2, 3), n_test=(1, 1),
                                   seed=5, shape_xyz=shape, spacing_xyz=spacing, progress=False)
    assert os.path.basename(folder) == "Dataset991_PhantomTest"
    verify_dataset_integrity(folder, num_processes=1)

    with open(os.path.join(folder, "dataset.json")) as f:
        dataset_json = json.load(f)
    assert dataset_json["numTraining"] == 5 and dataset_json["labels"] == LABELS
    # one channel that mixes CT and MR: must not be called CT (nnU-Net would CT-normalise the MR cases)
    assert dataset_json["channel_names"] == {"0": CHANNEL_NAME} and CHANNEL_NAME.lower() != "ct"
    case_modalities = get_case_modalities(dataset_json)
    train_ids = sorted(f[:-len(".nii.gz")] for f in os.listdir(os.path.join(folder, "labelsTr")))
    test_ids = sorted(f[:-len(".nii.gz")] for f in os.listdir(os.path.join(folder, "labelsTs")))
    assert sorted(case_modalities) == sorted(train_ids + test_ids)  # train AND test cases are tagged
    assert sorted(os.listdir(os.path.join(folder, "imagesTs"))) == [f"{c}_0000.nii.gz" for c in test_ids]
    assert [case_modalities[c] for c in train_ids].count("MR") == 3 and not set(train_ids) & set(test_ids)

    import SimpleITK as sitk
    for case, modality in case_modalities.items():
        sub = "imagesTr" if case in train_ids else "imagesTs"
        image = sitk.ReadImage(os.path.join(folder, sub, f"{case}_0000.nii.gz"))
        assert image.GetSize() == shape and np.allclose(image.GetSpacing(), spacing)
        array = sitk.GetArrayFromImage(image)
        assert (array.min() < -900) == (modality == "CT"), case  # CT has air in HU, MR does not go negative

    # CT and MR are different subjects (unpaired): no CT label map equals an MR one
    labels = {c: sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, "labelsTr", f"{c}.nii.gz")))
              for c in train_ids}
    ct = [c for c in train_ids if case_modalities[c] == "CT"]
    mr = [c for c in train_ids if case_modalities[c] == "MR"]
    assert all((labels[c] != labels[m]).any() for c in ct for m in mr)

    # the integrity check has teeth: a missing label file is caught
    os.remove(os.path.join(folder, "labelsTr", f"{train_ids[0]}.nii.gz"))
    with pytest.raises(Exception):
        verify_dataset_integrity(folder, num_processes=1)


def test_writer_refuses_to_overwrite_unless_asked(tmp_path):
    kwargs = dict(dataset_id=992, name="P", n_train=(1, 1), n_test=(0, 0), shape_xyz=(24, 20, 16),
                  spacing_xyz=(13.0, 13.0, 14.0), progress=False)
    write_phantom_dataset(str(tmp_path), **kwargs)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_phantom_dataset(str(tmp_path), **kwargs)
    write_phantom_dataset(str(tmp_path), overwrite=True, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# the demo runner's own pieces (the full demo run is minutes: not a unit test)
# ---------------------------------------------------------------------------------------------------------------------
def test_failing_step_reports_command_and_log(tmp_path):
    import sys
    from nnunet_mulmod.demo.run_demo import StepFailed, run_step
    log = str(tmp_path / "logs" / "step.log")
    with pytest.raises(StepFailed) as info:
        run_step("broken", [sys.executable, "-c", "print('working'); raise SystemExit('boom in step')"], log,
                   dict(os.environ))
    assert info.value.returncode == 1 and info.value.log_file == log
    assert "boom in step" in info.value.tail and "working" in open(log).read()
    with pytest.raises(StepFailed) as info:
        run_step("missing", ["no_such_command_nnunet_mulmod"], log, dict(os.environ))
    assert info.value.returncode == 127


def test_demo_plans_only_narrow_the_network(tmp_path):
    from nnunet_mulmod.demo.run_demo import CONFIGURATION, DEMO_PLANS, derive_demo_plans
    arch = {"n_stages": 5, "features_per_stage": [32, 64, 128, 256, 320], "strides": [[1, 1, 1]] + [[2, 2, 2]] * 4}
    plans = {"plans_name": "nnUNetPlans", "configurations": {CONFIGURATION: {
        "data_identifier": "nnUNetPlans_3d_fullres", "patch_size": [32, 40, 48], "batch_size": 2,
        "architecture": {"arch_kwargs": arch}}}}
    with open(tmp_path / "nnUNetPlans.json", "w", encoding="utf-8") as f:
        json.dump(plans, f)
    path = derive_demo_plans(str(tmp_path), base_features=16)
    with open(path) as f:
        derived = json.load(f)
    assert os.path.basename(path) == DEMO_PLANS + ".json" and derived["plans_name"] == DEMO_PLANS
    config = derived["configurations"][CONFIGURATION]
    assert config["architecture"]["arch_kwargs"]["features_per_stage"] == [16, 32, 64, 128, 256]
    # same preprocessed data, patch and batch as nnU-Net's plans; nnU-Net's own file untouched
    assert config["data_identifier"] == "nnUNetPlans_3d_fullres" and config["patch_size"] == [32, 40, 48]
    with open(tmp_path / "nnUNetPlans.json") as f:
        assert json.load(f) == plans


def test_training_progress_follows_nnunet_log_lines():
    from nnunet_mulmod.demo.run_demo import TrainingProgress
    progress = TrainingProgress(total_epochs=2)
    for line in ["2026-01-01 00:00:00.0: Epoch 0", "2026-01-01: train_loss per modality: CT 0.9, MR 1.1",
                 "2026-01-01: train_loss 1.0", "2026-01-01: Pseudo dice [np.float32(0.5), np.float32(0.7)]",
                 "2026-01-01: Epoch time: 9.5 s"]:
        progress(line)
    assert progress.bar.n == 1 and progress.postfix["pseudo Dice"] == "0.600"
    assert progress.postfix["per modality"] == "CT 0.9, MR 1.1"
    progress.close()


def test_demo_reads_auto_detected_modalities_from_predictor_log(tmp_path):
    from nnunet_mulmod.demo.run_demo import auto_detected_modalities

    log = tmp_path / "predict.log"
    log.write_text("[nnunet-mulmod] ct_1: modality CT (automatic detection; patches: CT 8/8)\n"
                   "Predicting ct_1:\n"
                   "[nnunet-mulmod] mr_2: modality CT (automatic detection; patches: CT 5/8, MR 3/8)\n"
                   "[nnunet-mulmod] mr_3: modality MR (dataset.json case_modalities)\n", encoding="utf-8")
    detected = auto_detected_modalities(str(log), {"ct_1": "CT", "mr_2": "MR", "mr_3": "MR"})
    assert detected == {"ct_1": "CT", "mr_2": "CT"}  # only automatic decisions count, wrong ones included
