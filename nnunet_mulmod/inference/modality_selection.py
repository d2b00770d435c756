"""Which modality's prompts a MulModSeg model uses for each case it predicts.

Per case, the first that applies:
1. given by the user: ``nnunet_mulmod_predict --modality CT`` or ``--modality_map map.json``
   (case id -> modality), or the Python API ``predict_with_modalities``; ``--modality auto`` asks for
   automatic detection of every case (to measure it, or when the dataset map must not be used);
2. the dataset's map: ``case_modalities`` in the model folder's dataset.json, if it lists the case;
3. automatic: the network's modality classifier, trained alongside, decides per sliding-window patch.
``wrong_prompt`` then swaps the chosen modality for the next one in the vocabulary (CT <-> MR with two):
the paper's Table 7.

nnU-Net's predictor gives the network image patches only, never the case's name. So that every way of
predicting follows the same order, the predictor hook (installed by ``nnunet_mulmod.nnunet_integration.install``,
which MulModSeg's ``build_network_architecture`` calls, so plain ``nnUNetv2_predict`` gets it too) wraps the
``nnUNetPredictor`` methods a case passes through, calling the functions below:
``predict_logits_from_preprocessed_data``, which every path calls once per case, selects the case's modality
on the network, predicts, logs the choice (``[nnunet-mulmod] CASE: modality MR (source)``) and clears it; the
case's name comes from the path that knows it: ``predict_from_data_iterator`` (``nnUNetv2_predict``,
``predict_from_files``, ``predict_from_list_of_npy_arrays``: the item's output file),
``predict_from_files_sequential`` (``nnUNetv2_predict -npp 0 -nps 0``: the output or input file names) and
``predict_single_npy_array`` (``output_file_truncated``). A case without a name gets the user's modality
(``set_prediction_modality``) or automatic detection, logged as such. Networks that are not MulModSeg
networks pass through untouched.
"""
from __future__ import annotations

import json
import os
from collections import deque
from contextlib import contextmanager
from typing import Dict, Iterable, Mapping, Optional, Tuple

from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from nnunet_mulmod.modality import CASE_MODALITIES_KEY, ModalityError
from nnunet_mulmod.modeling.mulmodseg_net import MulModSegNet
from nnunet_mulmod.training.unwrap import unwrap_network as _unwrap


AUTO = "auto"


class CaseModalityResolver:
    """Applies the order above for one model (its modality vocabulary and dataset.json)."""

    def __init__(self, modalities, dataset_json: Optional[Mapping] = None, modality: Optional[str] = None,
                 modality_map: Optional[Mapping[str, str]] = None, wrong_prompt: bool = False):
        self.modalities = list(modalities)
        self.dataset_map: Dict[str, str] = dict((dataset_json or {}).get(CASE_MODALITIES_KEY, {}))
        self.modality = modality
        self.modality_map = dict(modality_map or {})
        self.wrong_prompt = wrong_prompt
        if modality is not None and modality != AUTO and modality not in self.modalities:
            raise ModalityError(f"Unknown modality {modality!r}: this model was trained with {self.modalities}. "
                                f"Give one of them, or '{AUTO}' for automatic detection.")
        for case, name in self.modality_map.items():
            if name != AUTO and name not in self.modalities:
                raise ModalityError(f"Unknown modality {name!r} for case {case!r} in the modality map: this model was "
                                    f"trained with {self.modalities}. Fix that entry of the map.")

    def resolve(self, case_id: Optional[str]) -> Tuple[Optional[str], str]:
        """(modality name or None for automatic detection, how it was chosen)."""
        if case_id is not None and self.modality_map.get(case_id) == AUTO:
            name, source = None, "automatic detection (modality map)"
        elif case_id is not None and case_id in self.modality_map:
            name, source = self.modality_map[case_id], "given by the user (modality map)"
        elif self.modality == AUTO:
            name, source = None, "automatic detection"
        elif self.modality is not None:
            name, source = self.modality, "given by the user"
        elif case_id is not None and case_id in self.dataset_map and self.dataset_map[case_id] in self.modalities:
            name, source = self.dataset_map[case_id], "dataset.json case_modalities"
        else:
            name, source = None, "automatic detection"
        if self.wrong_prompt:
            if name is None:
                raise ModalityError(
                    f"Case {case_id!r}: the mistaken-prompt switch needs the case's true modality; give it with "
                    f"--modality or --modality_map (automatic detection cannot be swapped).")
            swapped = self.modalities[(self.modalities.index(name) + 1) % len(self.modalities)]
            name, source = swapped, f"MISTAKEN PROMPT: {name} case prompted as {swapped} ({source})"
        return name, source


def case_id_from_output_file(ofile: Optional[str]) -> Optional[str]:
    return None if ofile is None else os.path.basename(ofile)


def case_id_from_input_files(files, file_ending: str) -> Optional[str]:
    """nnU-Net's case id of a list of channel files (CASE_0000.nii.gz ...), as its predictor derives it."""
    if not files or not isinstance(files[0], str):
        return None
    return os.path.basename(files[0])[:-(len(file_ending) + 5)]


def mulmod_network(predictor: nnUNetPredictor) -> Optional[MulModSegNet]:
    network = _unwrap(predictor.network) if getattr(predictor, "network", None) is not None else None
    return network if isinstance(network, MulModSegNet) else None


def pending_cases(predictor: nnUNetPredictor) -> deque:
    """Names of the cases about to be predicted, in order: each prediction path that knows them queues them here
    and ``predict_logits_from_preprocessed_data`` (which every path calls once per case) takes the next one."""
    if "_mulmod_pending_cases" not in predictor.__dict__:
        predictor._mulmod_pending_cases = deque()
    return predictor._mulmod_pending_cases


def predict_case_with_its_modality(predictor: nnUNetPredictor, network: MulModSegNet, predict, data):
    """Selects the case's modality on the network, predicts, logs the choice, and clears the selection."""
    pending = pending_cases(predictor)
    case_id = pending.popleft() if pending else None
    resolver = getattr(predictor, "mulmod_resolver", None) or CaseModalityResolver(
        network.modalities, predictor.dataset_json)
    name, source = resolver.resolve(case_id)
    label = case_id or "image (no case name given)"
    if name is None:
        network.require_fitted_classifier()  # here, not in the (possibly compiled) forward
    network.selected_modality = None if name is None else network.modality_index(name)
    network.auto_votes = [0] * len(network.modalities) if name is None else None
    if name is not None:
        print(f"[nnunet-mulmod] {label}: modality {name} ({source})")
    try:
        result = predict(data)
        if name is None:
            votes = network.auto_votes
            total = max(sum(votes), 1)
            best = max(range(len(votes)), key=lambda i: votes[i])
            detail = ", ".join(f"{m} {v}/{total}" for m, v in zip(network.modalities, votes) if v)
            print(f"[nnunet-mulmod] {label}: modality {network.modalities[best]} (automatic detection; "
                  f"patches: {detail})")
        return result
    finally:
        network.selected_modality = None
        network.auto_votes = None


def queue_case(predictor: nnUNetPredictor, case_id: Optional[str]) -> None:
    pending_cases(predictor).append(case_id)


def queue_cases_of_data_iterator(predictor: nnUNetPredictor, data_iterator: Iterable):
    for item in data_iterator:
        queue_case(predictor, case_id_from_output_file(item.get("ofile")))
        yield item


def queue_cases_of_file_lists(predictor: nnUNetPredictor, inputs, outputs) -> None:
    """The cases of ``_manage_input_and_output_lists``'s result, in its order (output names, else input names)."""
    names = [case_id_from_output_file(o) for o in outputs] if outputs is not None else \
        [case_id_from_input_files(files, predictor.dataset_json["file_ending"]) for files in inputs]
    pending_cases(predictor).extend(names)


@contextmanager
def pending_cases_cleared(predictor: nnUNetPredictor):
    """No names left over from an earlier (failed) call, before and after one prediction call."""
    pending_cases(predictor).clear()
    try:
        yield
    finally:
        pending_cases(predictor).clear()


_queue_cases_of_data_iterator = queue_cases_of_data_iterator  # the name tests/test_compile.py imports


def set_prediction_modality(predictor: nnUNetPredictor, modality: Optional[str] = None,
                            modality_map: Optional[Mapping[str, str]] = None, wrong_prompt: bool = False) -> None:
    """For Python users of nnUNetPredictor (any of its prediction methods): the modality of every case, or per
    case id, for a MulModSeg model loaded into ``predictor``. Unknown names are refused here, before predicting."""
    from nnunet_mulmod.nnunet_integration import install

    install()  # the predictor hook that applies the choice (idempotent)
    network = mulmod_network(predictor)
    if network is None:
        raise ModalityError("set_prediction_modality needs a predictor with a MulModSeg model loaded "
                            "(initialize_from_trained_model_folder first).")
    predictor.mulmod_resolver = CaseModalityResolver(network.modalities, predictor.dataset_json, modality,
                                                     modality_map, wrong_prompt)


def load_modality_map(path: str) -> Dict[str, str]:
    try:
        with open(path) as f:
            mapping = json.load(f)
    except (OSError, ValueError) as e:
        raise ModalityError(f"Cannot read modality map {path}: {e}. Expected a JSON object "
                            f'{{"case_id": "CT", ...}}.') from e
    if not isinstance(mapping, dict):
        raise ModalityError(f"Modality map {path} must be a JSON object {{case_id: modality}}.")
    return {str(k): str(v) for k, v in mapping.items()}
