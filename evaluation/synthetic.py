"""Small synthetic nnU-Net datasets with predictions, for tests, the benchmark and trying the reports.

Each case has one ellipsoid per class; a "method" is the reference with every structure shifted by up to
``shift`` voxels and randomly dropped with probability ``drop``, so better methods get smaller values.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional, Sequence

import numpy as np
import SimpleITK as sitk


def _ellipsoid_label_map(shape, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    seg = np.zeros(shape, dtype=np.uint8)
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    for label in range(1, n_classes + 1):
        radii = [rng.uniform(0.08, 0.16) * s for s in shape]
        centre = [rng.uniform(0.25, 0.75) * s for s in shape]
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1
        seg[inside] = label
    return seg


def perturb(seg: np.ndarray, n_classes: int, shift: int, drop: float, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros_like(seg)
    for label in range(1, n_classes + 1):
        if rng.random() < drop:
            continue
        offsets = tuple(int(rng.integers(-shift, shift + 1)) for _ in seg.shape)
        out[np.roll(seg == label, offsets, axis=tuple(range(seg.ndim)))] = label
    return out


def write_nifti(array: np.ndarray, path: str, spacing_zyx: Sequence[float]) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    sitk.WriteImage(image, path)


def make_synthetic_dataset(root: str, n_cases: int = 6, shape=(24, 32, 32), n_classes: int = 3,
                           spacing=(3.0, 1.0, 1.0), modalities: Sequence[str] = ("CT", "MR"),
                           methods: Optional[Dict[str, dict]] = None, folds: int = 1, seed: int = 0,
                           with_images: bool = True) -> dict:
    """Writes root/dataset.json, root/labelsTs, root/imagesTs (optional) and per method and fold a prediction
    folder root/predictions/<method>/fold_<k>. Cases alternate between the modalities; fold k holds the
    cases i with (i // len(modalities)) % folds == k (every fold has every modality). Returns the paths."""
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
        write_nifti(seg, os.path.join(labels_dir, case_id + ".nii.gz"), spacing)
        if with_images:
            # CT-like: organs brighter than background, in HU; MR-like: other contrast order, arbitrary units
            means = (np.linspace(40, 200, n_classes + 1) if modality.upper().startswith("CT")
                     else np.linspace(600, 100, n_classes + 1))
            image = means[seg] + rng.normal(0, 20, shape)
            write_nifti(image.astype(np.int16), os.path.join(images_dir, case_id + "_0000.nii.gz"), spacing)
        for method, params in methods.items():
            prediction = perturb(seg, n_classes, params["shift"], params["drop"], rng)
            fold = (i // len(modalities)) % folds
            write_nifti(prediction, os.path.join(prediction_dirs[method][fold], case_id + ".nii.gz"), spacing)
    dataset_json = {
        "channel_names": {"0": "either_CT_or_MR"},
        "labels": {"background": 0, **{f"organ{k}": k for k in range(1, n_classes + 1)}},
        "numTraining": 0,
        "file_ending": ".nii.gz",
        "modalities": list(modalities),
        "case_modalities": case_modalities,
    }
    with open(os.path.join(root, "dataset.json"), "w") as f:
        json.dump(dataset_json, f, indent=2)
    return {"dataset_json": os.path.join(root, "dataset.json"), "labels": labels_dir,
            "images": images_dir if with_images else None, "predictions": prediction_dirs,
            "case_modalities": case_modalities}
