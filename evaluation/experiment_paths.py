"""Where an experiment finds its dataset, the models nnU-Net trains and the test cases (and their modalities)."""
from __future__ import annotations

import json
import os
from typing import Dict, List, Mapping, Optional, Sequence

from .experiment_state import ExperimentError


def env_folder(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ExperimentError(f"${name} is not set; set nnUNet_raw, nnUNet_preprocessed and nnUNet_results as for "
                              f"nnU-Net itself.")
    return value


def dataset_name(dataset: str) -> str:
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    try:
        return maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError) as e:
        raise ExperimentError(f"Dataset {dataset}: {e}") from e


def model_folder(dataset: str, trainer: str, plans: str, configuration: str) -> str:
    return os.path.join(env_folder("nnUNet_results"), dataset, f"{trainer}__{plans}__{configuration}")


def test_case_ids(images_folder: str, file_ending: str) -> List[str]:
    from nnunetv2.utilities.utils import get_identifiers_from_splitted_dataset_folder
    if not os.path.isdir(images_folder):
        raise ExperimentError(f"Test image folder {images_folder} does not exist; give one with --test_folder.")
    ids = list(get_identifiers_from_splitted_dataset_folder(images_folder, file_ending))
    if not ids:
        raise ExperimentError(f"{images_folder} holds no images named CASE_XXXX{file_ending}.")
    return list(ids)


def test_modalities(dataset_json: Mapping, case_ids: Sequence[str], modality_map_file: Optional[str],
                    required: bool = True) -> Dict[str, str]:
    """Each test case's modality: --test_modality_map first, then dataset.json's case_modalities.

    ``required``: every case must have one (prompted models and single-modality rows need it; Zeus's aligned
    multi-channel cases have none, and the report then groups them as untagged)."""
    from nnunet_mulmod.modality import lookup_case_modality
    given = {}
    if modality_map_file:
        with open(modality_map_file) as f:
            given = json.load(f)
    result, missing = {}, []
    for case in case_ids:
        modality = given.get(case) or lookup_case_modality(dataset_json, case)
        if modality is None:
            missing.append(case)
        else:
            result[case] = modality
    if missing and required:
        raise ExperimentError(
            f"No modality for test case(s) {missing[:10]}{' ...' if len(missing) > 10 else ''}: the experiment "
            f"predicts and reports per modality. Add them to dataset.json 'case_modalities' "
            f"(nnunet_mulmod.modality.set_modalities) or pass --test_modality_map FILE ({{case_id: modality}}).")
    return result
