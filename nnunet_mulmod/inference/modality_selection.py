"""Which modality's prompts a MulModSeg model uses for each case it predicts.

Per case, the first that applies:
1. given by the user: ``nnunet_mulmod_predict --modality CT`` or ``--modality_map map.json``
   (case id -> modality), or the Python API ``predict_with_modalities``; ``--modality auto`` asks for
   automatic detection of every case (to measure it, or when the dataset map must not be used);
2. the dataset's map: ``case_modalities`` in the model folder's dataset.json, if it lists the case;
3. automatic: the network's modality classifier, trained alongside, decides per sliding-window patch.
``wrong_prompt`` then swaps the chosen modality for the next one in the vocabulary (CT <-> MR with two):
the paper's Table 7.

nnU-Net's predictor gives the network image patches only, never the case's name. So that the plain
``nnUNetv2_predict`` follows the same order, ``nnUNetPredictor.predict_from_data_iterator`` is wrapped
when this module is imported (nnU-Net imports it while looking up a MulModSeg trainer): the wrapper
reads each case's name from the item nnU-Net's iterator hands over, selects its modality on the
network just before that case is predicted, and logs the choice. Networks that are not MulModSeg
networks pass through untouched.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Dict, Iterable, Mapping, Optional, Tuple

from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from nnunet_mulmod.modality import CASE_MODALITIES_KEY, ModalityError
from nnunet_mulmod.modeling.mulmodseg_net import MulModSegNet


def _unwrap(network):
    from nnunet_mulmod.training.mulmodseg_trainer import unwrap_network
    return unwrap_network(network)


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
        for name in [modality] + list(self.modality_map.values()):
            if name is not None and name != AUTO and name not in self.modalities:
                raise ModalityError(f"Unknown modality {name!r}: this model was trained with {self.modalities}.")

    def resolve(self, case_id: Optional[str]) -> Tuple[Optional[str], str]:
        """(modality name or None for automatic detection, how it was chosen)."""
        if case_id is not None and case_id in self.modality_map:
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


def _select_modalities_per_case(predictor: nnUNetPredictor, network: MulModSegNet, data_iterator: Iterable):
    resolver = getattr(predictor, "mulmod_resolver", None) or CaseModalityResolver(
        network.modalities, predictor.dataset_json)
    network.auto_votes = None
    pending_auto_case = None

    def report_auto(case):
        votes = network.auto_votes or [0] * len(network.modalities)
        total = max(sum(votes), 1)
        best = max(range(len(votes)), key=lambda i: votes[i])
        detail = ", ".join(f"{m} {v}/{total}" for m, v in zip(network.modalities, votes) if v)
        print(f"[nnunet-mulmod] {case}: modality {network.modalities[best]} (automatic detection; patches: {detail})")
        network.auto_votes = None

    try:
        for item in data_iterator:
            if pending_auto_case is not None:
                report_auto(pending_auto_case)
                pending_auto_case = None
            case_id = case_id_from_output_file(item.get("ofile"))
            name, source = resolver.resolve(case_id)
            network.selected_modality = None if name is None else network.modality_index(name)
            if name is None:
                network.auto_votes = [0] * len(network.modalities)
                pending_auto_case = case_id or "image"
            else:
                print(f"[nnunet-mulmod] {case_id or 'image'}: modality {name} ({source})")
            yield item
        if pending_auto_case is not None:
            report_auto(pending_auto_case)
    finally:
        network.selected_modality = None


def install_predictor_hook() -> None:
    if getattr(nnUNetPredictor.predict_from_data_iterator, "_mulmod_hook", False):
        return
    original = nnUNetPredictor.predict_from_data_iterator

    @functools.wraps(original)
    def predict_from_data_iterator(self, data_iterator, *args, **kwargs):
        network = _unwrap(self.network) if getattr(self, "network", None) is not None else None
        if isinstance(network, MulModSegNet):
            data_iterator = _select_modalities_per_case(self, network, data_iterator)
        return original(self, data_iterator, *args, **kwargs)

    predict_from_data_iterator._mulmod_hook = True
    nnUNetPredictor.predict_from_data_iterator = predict_from_data_iterator


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


install_predictor_hook()
