"""MM-WHS converter: ct_train/ct_train_1001_image.nii.gz + _label.nii.gz layout, substructure codes, splits."""
from pathlib import Path

import numpy as np
import pytest

from conversion_fixtures import nnunet_env  # noqa: F401 (pytest fixture)
from conversion_fixtures import case_files, read_array, read_json, run_cli, verify_with_nnunet, write_volume
from nnunet_mulmod.dataset_conversion.common import ConversionError
from nnunet_mulmod.dataset_conversion.mmwhs import main

CODES = (205, 420, 500, 550, 600, 820, 850)
FLIPPED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def heart(seed: int, la_code: int = 420):
    rng = np.random.default_rng(seed)
    label = np.zeros((8, 32, 32), dtype=np.uint16)
    for i, code in enumerate(CODES):
        label[1:7, 2 + 4 * i:5 + 4 * i, 4:28] = la_code if code == 420 else code
    image = (rng.random(label.shape) * 500 + label / 4).astype(np.int16)
    return image, label


def make_mmwhs(root: Path, n_per_modality: int = 4) -> Path:
    folder = root / "MM-WHS 2017 Dataset"
    for modality in ("ct", "mr"):
        for i in range(n_per_modality):
            number = 1001 + i
            # some MR labels use 421 for LA; MR volumes come in different orientations
            image, label = heart(number + (0 if modality == "ct" else 50), la_code=421 if modality == "mr" and i == 1 else 420)
            direction = FLIPPED if modality == "mr" and i % 2 else None
            for kind, array in (("image", image), ("label", label)):
                write_volume(folder / f"{modality}_train" / f"{modality}_train_{number}_{kind}.nii.gz", array,
                             spacing=(0.9, 0.9, 1.6), direction=direction)
    write_volume(folder / "ct_test" / "ct_test_2001_image.nii.gz", heart(7)[0], spacing=(0.9, 0.9, 1.6))
    return folder


def test_cross_modality_split(tmp_path, nnunet_env):
    source = make_mmwhs(tmp_path)
    run_cli(["nnunet_mulmod_convert_mmwhs", "-i", source, "-d", 506, "--split", "cross", "-np", 1], nnunet_env)
    out = Path(nnunet_env["nnUNet_raw"]) / "Dataset506_MMWHS"
    ct = [f"ct_{1001 + i}" for i in range(4)]
    mr = [f"mr_{1001 + i}" for i in range(4)]
    assert case_files(out, "imagesTr") == sorted(f"{c}_0000.nii.gz" for c in ct + mr)
    assert case_files(out, "imagesTs") == ["ct_2001_0000.nii.gz"]
    dataset_json = read_json(out / "dataset.json")
    assert list(dataset_json["labels"]) == ["background", "myocardium", "left_atrium", "left_ventricle",
                                            "right_atrium", "right_ventricle", "ascending_aorta", "pulmonary_artery"]
    assert dataset_json["labels"]["pulmonary_artery"] == 7
    assert dataset_json["case_modalities"] == {**{c: "CT" for c in ct + ["ct_2001"]}, **{c: "MR" for c in mr}}
    assert dataset_json["overwrite_image_reader_writer"] == "NibabelIOWithReorient"
    # substructure codes -> 1..7 in the paper's order; 421 is LA
    for case, number in (("mr_1002", 1002), ("ct_1003", 1003)):
        modality = case[:2]
        source_label = read_array(source / f"{modality}_train" / f"{modality}_train_{number}_label.nii.gz")
        converted = read_array(out / "labelsTr" / f"{case}.nii.gz")
        expected = np.zeros_like(converted)
        for target, code in enumerate(CODES, start=1):
            expected[(source_label == code) | ((code == 420) & (source_label == 421))] = target
        assert np.array_equal(converted, expected)
    assert 421 in read_array(source / "mr_train" / "mr_train_1002_label.nii.gz")
    # cross-modality: all MR + one CT half train, the other CT half validates; two folds with the halves swapped
    splits = read_json(out / "splits_final.json")
    assert len(splits) == 2
    halves = [sorted(s["val"]) for s in splits]
    assert sorted(halves[0] + halves[1]) == ct and not set(halves[0]) & set(halves[1])
    for fold, other in zip(splits, reversed(halves)):
        assert sorted(fold["train"]) == sorted(mr + other)
    verify_with_nnunet(out)


def test_75_25_split_and_unknown_code(tmp_path, nnunet_env):
    source = make_mmwhs(tmp_path)
    main(["-i", str(source), "-d", "507", "--split", "75_25", "-np", "1"])
    splits = read_json(Path(nnunet_env["nnUNet_raw"]) / "Dataset507_MMWHS" / "splits_final.json")
    assert len(splits) == 1
    assert sorted(c[:2] for c in splits[0]["val"]) == ["ct", "mr"]  # 1 of 4 per modality
    assert len(splits[0]["train"]) == 6

    _, label = heart(3)
    label[0, 0, 0] = 999
    write_volume(source / "mr_train" / "mr_train_1003_label.nii.gz", label, spacing=(0.9, 0.9, 1.6))
    with pytest.raises(ConversionError, match="Case mr_1003: label file .* contains values \\[999\\]"):
        main(["-i", str(source), "-d", "508", "-np", "1"])
