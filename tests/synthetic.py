"""Tiny synthetic CT+MR nnU-Net datasets for the MulModSeg tests (fast to plan, preprocess and train)."""
from __future__ import annotations

import json
import os
from typing import Dict, Tuple

import numpy as np
import SimpleITK as sitk

from nnunet_mulmod.modality import set_modalities

LABELS = {"background": 0, "liver": 1, "kidney_right": 2}


def _ellipsoid(shape, center, radii):
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return (((zz - center[0]) / radii[0]) ** 2 + ((yy - center[1]) / radii[1]) ** 2 +
            ((xx - center[2]) / radii[2]) ** 2) <= 1


def make_case(rng: np.random.RandomState, modality: str, shape=(16, 32, 32)) -> Tuple[np.ndarray, np.ndarray]:
    seg = np.zeros(shape, np.uint8)
    body = _ellipsoid(shape, np.array(shape) / 2, (shape[0] * 0.6, shape[1] * 0.45, shape[2] * 0.45))
    c1 = np.array(shape) / 2 + rng.uniform(-2, 2, 3) + np.array([0, -4, -5])
    c2 = np.array(shape) / 2 + rng.uniform(-2, 2, 3) + np.array([0, 5, 6])
    seg[_ellipsoid(shape, c1, (4, rng.uniform(5, 7), rng.uniform(5, 7))) & body] = 1
    seg[_ellipsoid(shape, c2, (3, rng.uniform(3, 4), rng.uniform(3, 4))) & body] = 2
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
                    im = sitk.GetImageFromArray(arr)
                    im.SetSpacing((1.5, 1.5, 3.0))
                    sitk.WriteImage(im, os.path.join(folder, path))
                case_modalities[case] = modality
    dataset_json = {"channel_names": {"0": "CT_or_MR"}, "labels": dict(LABELS),
                    "numTraining": sum(n_train.values()), "file_ending": ".nii.gz", "name": name}
    set_modalities(dataset_json, case_modalities, vocabulary=list(n_train.keys()))
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(dataset_json, f, indent=2)
    return folder, dataset_json
