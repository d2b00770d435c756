"""The tests' synthetic data, written by one writer: tiny nnU-Net datasets that are fast to plan, preprocess and
train, and small evaluation sets with predictions of made-up methods.

- :func:`write_dataset`: unpaired CT+MR cases with the modality schema (MulModSeg tests, experiments).
- :func:`write_aligned_dataset`: aligned two-channel T2+ADC slices (the Zeus end-to-end test).
- :func:`make_synthetic_dataset`: references, images and per-method predictions (evaluation, report, compare
  tests and benchmarks/bench_evaluation.py).

Every volume is written by :func:`write_image`; shapes are built from :func:`ellipsoid`. Test code only: it is not
part of the installed package (the demo's realistic phantoms are, nnunet_mulmod/demo/phantoms.py).
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from nnunet_mulmod.modality import set_modalities

LABELS = {"background": 0, "liver": 1, "kidney_right": 2}
ZEUS_DATASET = "Dataset991_ZeusToy"


def ellipsoid(shape: Sequence[int], centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    """Boolean mask of the ellipsoid (an ellipse for a 2d shape) with these centre and semi-axes, in voxels."""
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1


def write_image(array: np.ndarray, path: str, spacing_zyx: Sequence[float]) -> None:
    """A [z, y, x] array as an image file (NIfTI by the name), spacing in the array's axis order."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    sitk.WriteImage(image, path)


def _write_dataset_json(folder: str, dataset_json: dict) -> None:
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(dataset_json, f, indent=2)


# ----------------------------------------------------------------------------------------------------------------------
# unpaired CT + MR (MulModSeg)
# ----------------------------------------------------------------------------------------------------------------------
def make_case(rng: np.random.RandomState, modality: str, shape=(16, 32, 32)) -> Tuple[np.ndarray, np.ndarray]:
    seg = np.zeros(shape, np.uint8)
    body = ellipsoid(shape, np.array(shape) / 2, (shape[0] * 0.6, shape[1] * 0.45, shape[2] * 0.45))
    c1 = np.array(shape) / 2 + rng.uniform(-2, 2, 3) + np.array([0, -4, -5])
    c2 = np.array(shape) / 2 + rng.uniform(-2, 2, 3) + np.array([0, 5, 6])
    seg[ellipsoid(shape, c1, (4, rng.uniform(5, 7), rng.uniform(5, 7))) & body] = 1
    seg[ellipsoid(shape, c2, (3, rng.uniform(3, 4), rng.uniform(3, 4))) & body] = 2
    if modality.startswith("CT"):
        img = np.where(body, 40.0, -1000.0)
        img[seg == 1] = 90.0
        img[seg == 2] = 180.0
        img += rng.normal(0, 15, shape)
    else:
        img = np.where(body, 300.0, 5.0)
        img[seg == 1] = 120.0
        img[seg == 2] = 650.0
        img = np.abs(img + rng.normal(0, 25, shape))
    return img.astype(np.float32), seg


def write_dataset(raw_folder: str, dataset_id: int = 777, name: str = "MulModTiny",
                  n_train: Dict[str, int] = None, n_test: Dict[str, int] = None, seed: int = 0,
                  shape=(16, 32, 32)) -> Tuple[str, dict]:
    """Writes DatasetXXX_name with imagesTr/labelsTr/imagesTs/labelsTs and the modality schema."""
    n_train = n_train or {"CT": 4, "MR": 4}
    n_test = n_test or {"CT": 1, "MR": 1}
    folder = os.path.join(raw_folder, f"Dataset{dataset_id:03d}_{name}")
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    rng = np.random.RandomState(seed)
    case_modalities = {}
    for split, counts in (("Tr", n_train), ("Ts", n_test)):
        for modality, n in counts.items():
            for i in range(n):
                case = f"{modality.lower().replace('-', '')}_{split.lower()}_{i:03d}"
                img, seg = make_case(rng, modality, shape)
                for arr, path in ((img, f"images{split}/{case}_0000.nii.gz"), (seg, f"labels{split}/{case}.nii.gz")):
                    write_image(arr, os.path.join(folder, path), (3.0, 1.5, 1.5))
                case_modalities[case] = modality
    dataset_json = {"channel_names": {"0": "CT_or_MR"}, "labels": dict(LABELS),
                    "numTraining": sum(n_train.values()), "file_ending": ".nii.gz", "name": name}
    set_modalities(dataset_json, case_modalities, vocabulary=list(n_train.keys()))
    _write_dataset_json(folder, dataset_json)
    return folder, dataset_json


# ----------------------------------------------------------------------------------------------------------------------
# aligned T2 + ADC (Zeus)
# ----------------------------------------------------------------------------------------------------------------------
def make_aligned_case(rng, n_slices=1, size=40):
    """Two aligned channels (a 'T2' and an 'ADC'-like contrast) of one synthetic anatomy, labels 1 and 2. One slice:
    nnU-Net then plans only the 2d configuration (planning 3d costs a minute on 2 cores)."""
    seg = np.zeros((n_slices, size, size), np.uint8)
    for z in range(n_slices):
        seg[z][ellipsoid((size, size), (20 + rng.uniform(-3, 3), 20 + rng.uniform(-3, 3)), (10, 12))] = 1
        seg[z][ellipsoid((size, size), (20 + rng.uniform(-2, 2), 20 + rng.uniform(-2, 2)), (4, 4))] = 2
    t2 = np.choose(seg, [100.0, 300.0, 600.0]) + rng.normal(0, 20, seg.shape)
    adc = np.choose(seg, [900.0, 700.0, 200.0]) + rng.normal(0, 30, seg.shape)
    return [t2.astype(np.float32), adc.astype(np.float32)], seg


def write_aligned_dataset(raw_root: str, n_train: int = 5) -> str:
    """Writes Dataset991_ZeusToy: n_train training cases and one test case of aligned T2 + ADC channels."""
    folder = os.path.join(raw_root, ZEUS_DATASET)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        os.makedirs(os.path.join(folder, sub))
    rng = np.random.RandomState(0)
    spacing_zyx = (3.0, 1.0, 1.0)
    for i in range(n_train + 1):
        channels, seg = make_aligned_case(rng)
        case = f"zeus_{i:03d}"
        images_dir = "imagesTr" if i < n_train else "imagesTs"
        for c, image in enumerate(channels):
            write_image(image, os.path.join(folder, images_dir, f"{case}_{c:04d}.nii.gz"), spacing_zyx)
        if i < n_train:
            write_image(seg, os.path.join(folder, "labelsTr", f"{case}.nii.gz"), spacing_zyx)
    dataset_json = {"name": ZEUS_DATASET, "channel_names": {"0": "T2", "1": "ADC"},
                    "labels": {"background": 0, "gland": 1, "lesion": 2}, "numTraining": n_train,
                    "file_ending": ".nii.gz", "modalities": ["T2", "ADC"],
                    "case_modalities": {f"zeus_{i:03d}": "T2" for i in range(n_train + 1)},
                    "channel_modalities": {"0": "T2", "1": "ADC"}}
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(dataset_json, f, indent=1)
    return folder


# ----------------------------------------------------------------------------------------------------------------------
# evaluation sets: references and predictions of made-up methods
# ----------------------------------------------------------------------------------------------------------------------
def _ellipsoid_label_map(shape, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    seg = np.zeros(shape, dtype=np.uint8)
    for label in range(1, n_classes + 1):
        radii = [rng.uniform(0.08, 0.16) * s for s in shape]
        centre = [rng.uniform(0.25, 0.75) * s for s in shape]
        seg[ellipsoid(shape, centre, radii)] = label
    return seg


def perturb(seg: np.ndarray, n_classes: int, shift: int, drop: float, rng: np.random.Generator) -> np.ndarray:
    """A 'method's' prediction: every structure shifted by up to ``shift`` voxels, dropped with probability ``drop``."""
    out = np.zeros_like(seg)
    for label in range(1, n_classes + 1):
        if rng.random() < drop:
            continue
        offsets = tuple(int(rng.integers(-shift, shift + 1)) for _ in seg.shape)
        out[np.roll(seg == label, offsets, axis=tuple(range(seg.ndim)))] = label
    return out


def make_synthetic_dataset(root: str, n_cases: int = 6, shape=(24, 32, 32), n_classes: int = 3,
                           spacing=(3.0, 1.0, 1.0), modalities: Sequence[str] = ("CT", "MR"),
                           methods: Optional[Dict[str, dict]] = None, folds: int = 1, seed: int = 0,
                           with_images: bool = True) -> dict:
    """Writes root/dataset.json, root/labelsTs, root/imagesTs (optional) and per method and fold a prediction
    folder root/predictions/<method>/fold_<k>. Each case has one ellipsoid per class; a method is the reference
    perturbed (:func:`perturb`) with its ``shift`` and ``drop``, so better methods get better values. Cases
    alternate between the modalities; fold k holds the cases i with (i // len(modalities)) % folds == k (every
    fold has every modality). Returns the paths."""
    rng = np.random.default_rng(seed)
    methods = methods if methods is not None else {"good": {"shift": 1, "drop": 0.0},
                                                   "worse": {"shift": 3, "drop": 0.15}}
    labels_dir = os.path.join(root, "labelsTs")
    images_dir = os.path.join(root, "imagesTs")
    os.makedirs(labels_dir, exist_ok=True)
    if with_images:
        os.makedirs(images_dir, exist_ok=True)
    case_modalities = {}
    prediction_dirs = {m: {k: os.path.join(root, "predictions", m, f"fold_{k}") for k in range(folds)}
                       for m in methods}
    for dirs in prediction_dirs.values():
        for d in dirs.values():
            os.makedirs(d, exist_ok=True)
    for i in range(n_cases):
        case_id = f"case_{i:03d}"
        modality = modalities[i % len(modalities)]
        case_modalities[case_id] = modality
        seg = _ellipsoid_label_map(shape, n_classes, rng)
        write_image(seg, os.path.join(labels_dir, case_id + ".nii.gz"), spacing)
        if with_images:
            # CT-like: organs brighter than background, in HU; MR-like: other contrast order, arbitrary units
            means = (np.linspace(40, 200, n_classes + 1) if modality.upper().startswith("CT")
                     else np.linspace(600, 100, n_classes + 1))
            image = means[seg] + rng.normal(0, 20, shape)
            write_image(image.astype(np.int16), os.path.join(images_dir, case_id + "_0000.nii.gz"), spacing)
        for method, params in methods.items():
            prediction = perturb(seg, n_classes, params["shift"], params["drop"], rng)
            fold = (i // len(modalities)) % folds
            write_image(prediction, os.path.join(prediction_dirs[method][fold], case_id + ".nii.gz"), spacing)
    dataset_json = {
        "channel_names": {"0": "either_CT_or_MR"},
        "labels": {"background": 0, **{f"organ{k}": k for k in range(1, n_classes + 1)}},
        "numTraining": 0,
        "file_ending": ".nii.gz",
        "modalities": list(modalities),
        "case_modalities": case_modalities,
    }
    _write_dataset_json(root, dataset_json)
    return {"dataset_json": os.path.join(root, "dataset.json"), "labels": labels_dir,
            "images": images_dir if with_images else None, "predictions": prediction_dirs,
            "case_modalities": case_modalities}
