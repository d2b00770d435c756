"""nnU-Net's DefaultPreprocessor plus the case's modality tag for the MulModSeg intensity normalization.

nnU-Net calls ``run_case(image_files, ...)`` for every training case (nnUNetv2_preprocess workers) and every
file to predict (nnUNetv2_predict). The case id is the first image file name without ``_0000`` and the
file ending; its tag in dataset.json ``case_modalities`` (nnU-Net hands us the dataset.json) tells the
normalizer whether the case is CT or MR. Cases without a tag (a new scan at prediction time) fall back to
``NNUNET_MULMOD_INTENSITY_FAMILY`` or the intensities (nnunet_mulmod.intensity.decide_family).
A configuration's optional ``"mulmod_intensity"`` entry (written by nnunet_mulmod_plans_variant) overrides the
window/percentiles of the protocol named by the channel.

nnU-Net finds this class by name (``"preprocessor_name": "MulModPreprocessor"`` in the plans) because
nnunet_mulmod.nnunet_integration registers it in ``nnunetv2.preprocessing.preprocessors.default_preprocessor``.
"""
from __future__ import annotations

import os
from typing import List, Optional, Union

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from nnunet_mulmod.intensity import NORMALIZATION_CLASSES, decide_family


def case_id_from_image_file(image_file: str, file_ending: str) -> str:
    name = os.path.basename(image_file)
    if name.endswith(file_ending):
        name = name[: -len(file_ending)]
    return name[:-5] if len(name) > 5 and name[-5] == "_" and name[-4:].isdigit() else name


class MulModPreprocessor(DefaultPreprocessor):
    def __init__(self, verbose: bool = True):
        super().__init__(verbose)
        self._case_id: Optional[str] = None
        self._dataset_json: Optional[dict] = None

    def run_case(self, image_files: List[str], seg_file: Union[str, None], plans_manager, configuration_manager,
                 dataset_json: Union[dict, str]):
        if isinstance(dataset_json, str):
            dataset_json = load_json(dataset_json)
        self._case_id = case_id_from_image_file(image_files[0], dataset_json["file_ending"])
        self._dataset_json = dataset_json
        try:
            return super().run_case(image_files, seg_file, plans_manager, configuration_manager, dataset_json)
        finally:
            self._case_id, self._dataset_json = None, None

    def _normalize(self, data: np.ndarray, seg: np.ndarray, configuration_manager: ConfigurationManager,
                   foreground_intensity_properties_per_channel: dict) -> np.ndarray:
        ours = {cls.__name__: cls for cls in NORMALIZATION_CLASSES}
        schemes = configuration_manager.normalization_schemes
        if not any(s in ours for s in schemes):
            return super()._normalize(data, seg, configuration_manager, foreground_intensity_properties_per_channel)
        protocol = configuration_manager.configuration.get("mulmod_intensity")
        for c in range(data.shape[0]):
            if schemes[c] in ours:
                family = decide_family(self._case_id, self._dataset_json, data[c])
                normalizer = ours[schemes[c]](use_mask_for_norm=False,
                                              intensityproperties=foreground_intensity_properties_per_channel[str(c)],
                                              family=family, protocol=protocol)
                data[c] = normalizer.run(data[c], seg[0])
            else:  # other channels: exactly nnU-Net's handling, one channel at a time
                data[c:c + 1] = self._normalize_channel(data, seg, configuration_manager,
                                                           foreground_intensity_properties_per_channel, c)
        return data

    def _normalize_channel(self, data, seg, configuration_manager, properties, c):
        single = ConfigurationManager({**configuration_manager.configuration,
                                       "normalization_schemes": [configuration_manager.normalization_schemes[c]],
                                       "use_mask_for_norm": [configuration_manager.use_mask_for_norm[c]]})
        return DefaultPreprocessor._normalize(self, data[c:c + 1].copy(), seg, single, {"0": properties[str(c)]})

