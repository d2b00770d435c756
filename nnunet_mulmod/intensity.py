"""MulModSeg's intensity protocol, applied per case (CT or MR) inside nnU-Net's own preprocessing.

The problem: nnU-Net normalises per *channel*, the same way for every case, and finds normalizers only inside
its own package. A single-channel dataset that mixes CT and MR needs a per-*case* choice: the paper clips CT to
[-275, 125] HU and scales to [0, 1], and clips MR at its own 0.5/99.5 percentiles then min-max scales to [0, 1]
(the authors' code: CT [-125, 275], MR z-score).

The design (no change to any nnU-Net command):

1. Channel names select the protocol. The converters name the mixed channel ``CT_or_MR`` (paper) or
   ``CT_or_MR_code`` (authors' code). At interpreter start-up (``nnunet_mulmod.pth`` ->
   ``_autoregister`` -> ``_intensity_hook``) a post-import hook adds these names to nnU-Net's
   ``channel_name_to_normalization_mapping`` and places :class:`MulModIntensityNormalization` /
   :class:`MulModCodeIntensityNormalization` in ``default_normalization_schemes`` and
   ``MulModPreprocessor`` in ``default_preprocessor``: the planner writes the class name into the plans and
   ``nnUNetv2_plan_and_preprocess`` workers, the trainer and ``nnUNetv2_predict`` find it by name, in every
   (spawned) process.
2. Each case's family (CT, MR or other, see nnunet_mulmod.modality; other = per-image z-score, e.g. PET) is
   decided in this order (:func:`decide_family`):
   a. ``NNUNET_MULMOD_INTENSITY_FAMILY=CT|MR|other`` in the environment (explicit override, e.g. predicting a folder
      of new MR scans; spawned workers inherit it);
   b. the case's tag in dataset.json ``case_modalities`` -- used when the plans name ``MulModPreprocessor``
      (the plans variants of ``nnunet_mulmod_plans_variant`` do; ``-preprocessor_name MulModPreprocessor``
      for nnU-Net's planner), which reads the case id from the image file name;
   c. the intensities (CT or MR only: an 'other' case needs (a) or (b)): CT in Hounsfield units always holds
      air and fat well below -100 (and padding at -1024 or lower); MR magnitudes are >= 0. CT if the 1st
      percentile is below -100.
   With nnU-Net's DefaultPreprocessor only (c) is available; for ordinary HU CT and magnitude MR it agrees
   with the tags. Custom windows (``mulmod_intensity`` in a plans configuration) need MulModPreprocessor.

Window and percentile settings are the protocol; the same plans travel with the trained model, so prediction
uses exactly the training protocol.
"""
from __future__ import annotations

import os
import sys
from typing import Mapping, Optional, Sequence

import numpy as np
from nnunetv2.preprocessing.normalization.default_normalization_schemes import ImageNormalization

from nnunet_mulmod.modality import FAMILIES, check_modality_families, lookup_case_modality, modality_family

FAMILY_OVERRIDE_ENV = "NNUNET_MULMOD_INTENSITY_FAMILY"
PAPER_PROTOCOL = {"ct_window": (-275.0, 125.0), "mr_percentiles": (0.5, 99.5), "mr_scaling": "minmax"}
CODE_PROTOCOL = {"ct_window": (-125.0, 275.0), "mr_percentiles": None, "mr_scaling": "zscore"}
CT_DETECTION_THRESHOLD_HU = -100.0


def detect_family(image: np.ndarray) -> str:
    """'CT' if the 1st intensity percentile is below -100 (HU: air, fat, padding), else 'MR'."""
    flat = image.ravel()
    sample = flat[:: max(1, flat.size // 1_000_000)]  # a million voxels decide as well as all of them
    return "CT" if float(np.percentile(sample, 1)) < CT_DETECTION_THRESHOLD_HU else "MR"


def decide_family(case_id: Optional[str] = None, dataset_json: Optional[Mapping] = None,
                  image: Optional[np.ndarray] = None) -> str:
    """Environment override > dataset.json tag > intensities (see module docstring)."""
    override = os.environ.get(FAMILY_OVERRIDE_ENV, "").strip()
    if override:
        family = override if override in FAMILIES else modality_family(override)
        if family not in FAMILIES:
            raise ValueError(f"{FAMILY_OVERRIDE_ENV}={override!r}: use one of {list(FAMILIES)}.")
        return family
    if case_id is not None and dataset_json is not None:
        tag = lookup_case_modality(dataset_json, case_id)
        if tag is not None:
            family = modality_family(tag, dataset_json)
            if family not in FAMILIES:
                check_modality_families([tag], dataset_json)  # raises, naming the modality and the fix
            return family
    if image is None:
        raise ValueError("decide_family needs a tagged case or the image")
    return detect_family(image)


def normalize_ct(image: np.ndarray, window: Sequence[float]) -> np.ndarray:
    low, high = float(window[0]), float(window[1])
    np.clip(image, low, high, out=image)
    image -= low
    image /= (high - low)
    return image


def normalize_mr(image: np.ndarray, percentiles: Optional[Sequence[float]], scaling: str) -> np.ndarray:
    if percentiles is not None:
        low, high = np.percentile(image, [float(percentiles[0]), float(percentiles[1])])
        np.clip(image, low, high, out=image)
    if scaling == "minmax":
        low, high = float(image.min()), float(image.max())
        image -= low
        image /= max(high - low, 1e-8)
    elif scaling == "zscore":
        mean, std = float(image.mean()), float(image.std())
        image -= mean
        image /= max(std, 1e-8)
    else:
        raise ValueError(f"mr_scaling must be 'minmax' or 'zscore', got {scaling!r}")
    return image


class MulModIntensityNormalization(ImageNormalization):
    """Per-case CT/MR normalization, MulModSeg paper protocol. ``family``/``protocol`` come from
    MulModPreprocessor; without them the family is detected from the intensities."""
    leaves_pixels_outside_mask_at_zero_if_use_mask_for_norm_is_true = False  # never masks: CT has no zero background
    default_protocol = PAPER_PROTOCOL

    def __init__(self, use_mask_for_norm: bool = None, intensityproperties: dict = None,
                 target_dtype=np.float32, family: Optional[str] = None, protocol: Optional[Mapping] = None):
        super().__init__(use_mask_for_norm, intensityproperties if intensityproperties is not None else {},
                         target_dtype)
        self.family = family
        self.protocol = {**self.default_protocol, **(protocol or {})}

    def run(self, image: np.ndarray, seg: np.ndarray = None) -> np.ndarray:
        image = image.astype(self.target_dtype, copy=False)
        family = self.family or decide_family(image=image)
        if family == "CT":
            return normalize_ct(image, self.protocol["ct_window"])
        if family == "other":  # its own normalisation (e.g. PET as SUV z-score): per-image z-score
            return normalize_mr(image, None, "zscore")
        return normalize_mr(image, self.protocol["mr_percentiles"], self.protocol["mr_scaling"])


class MulModCodeIntensityNormalization(MulModIntensityNormalization):
    """The authors' public code: CT [-125, 275] HU -> [0, 1]; MR z-score."""
    default_protocol = CODE_PROTOCOL


# channel name (nnU-Net matches case-insensitively) -> normalizer
CHANNEL_NAME_TO_NORMALIZATION = {
    "ct_or_mr": MulModIntensityNormalization,
    "ct_or_mr_code": MulModCodeIntensityNormalization,
}
NORMALIZATION_CLASSES = (MulModIntensityNormalization, MulModCodeIntensityNormalization)


def on_nnunet_module_imported(module) -> None:
    """Adds our classes to one of nnU-Net's lookup modules. Called by the start-up hook right after nnU-Net
    executed the module, and below for modules loaded before this one. Import cycles (this module or
    nnunet_mulmod.plans_extensions.mulmod_preprocessor being imported while nnU-Net's module loads) are resolved by
    whichever side finishes last: each registers with what is already there."""
    name = module.__name__
    if name.endswith("normalization.default_normalization_schemes"):
        for cls in NORMALIZATION_CLASSES:
            setattr(module, cls.__name__, cls)
    elif name.endswith("normalization.map_channel_name_to_normalization"):
        mapping = getattr(module, "channel_name_to_normalization_mapping", None)
        if mapping is not None:  # None: the module is still executing; the hook calls again when it is done
            for key, cls in CHANNEL_NAME_TO_NORMALIZATION.items():
                mapping.setdefault(key, cls)
    elif name.endswith("preprocessors.default_preprocessor"):
        pending = sys.modules.get("nnunet_mulmod.plans_extensions.mulmod_preprocessor")
        if pending is not None and not hasattr(pending, "MulModPreprocessor"):
            return  # being imported right now; it registers itself when done
        if hasattr(module, "DefaultPreprocessor"):
            from nnunet_mulmod.plans_extensions.mulmod_preprocessor import MulModPreprocessor
            setattr(module, MulModPreprocessor.__name__, MulModPreprocessor)


def _register_with_loaded_nnunet_modules() -> None:
    for name in ("nnunetv2.preprocessing.normalization.default_normalization_schemes",
                 "nnunetv2.preprocessing.normalization.map_channel_name_to_normalization",
                 "nnunetv2.preprocessing.preprocessors.default_preprocessor"):
        if name in sys.modules:
            on_nnunet_module_imported(sys.modules[name])


def register_with_nnunet() -> None:
    """Registers in this process only (idempotent): for code run with NNUNET_MULMOD_NO_AUTOREGISTER=1. nnU-Net's
    spawned preprocessing/prediction workers re-import nnU-Net and need the start-up hook to find the classes."""
    import importlib
    for name in ("nnunetv2.preprocessing.normalization.default_normalization_schemes",
                 "nnunetv2.preprocessing.normalization.map_channel_name_to_normalization",
                 "nnunetv2.preprocessing.preprocessors.default_preprocessor"):
        on_nnunet_module_imported(importlib.import_module(name))


_register_with_loaded_nnunet_modules()
