"""The modality-tag schema of nnunet-mulmod: the one place that says which modality each case is.

Converters write it, trainers and the predictor read it. It lives in the nnU-Net ``dataset.json``
as three extra keys (nnU-Net keeps unknown keys verbatim and copies dataset.json to
nnUNet_preprocessed and to every results folder, so the map travels with a trained model)::

    "modalities": ["CT", "MR"],                 # the vocabulary, in a fixed order
    "case_modalities": {                        # every training case AND every test case
        "amos_0001": "CT",
        "amos_0507": "MR"
    },
    "channel_modalities": {"0": "T2", "1": "ADC"}   # optional: aligned multi-channel cases (Zeus)

Rules
- ``modalities`` is a vocabulary, not a CT/MR flag: any number of names (``CT``, ``MR-T1``,
  ``MR-T2``, ``ADC`` ...). Its order is the row order of text-embedding tables; never re-order it
  for a dataset that already has trained models.
- A name is letters, digits, ``-`` and ``_``, starting with a letter or digit.
- Every value of ``case_modalities`` and ``channel_modalities`` must be in ``modalities``.
- Every modality has an intensity *family*, which chooses the intensity protocol (the full name chooses the
  text prompt): ``CT`` (Hounsfield units: the CT window), ``MR`` (arbitrary magnitudes: the MR protocol) or
  ``other`` (its own normalisation: per-image z-score, e.g. PET as SUV z-score). It is read from the name
  (see ``FAMILY_NAME_PREFIXES``: ``CT*`` is CT; ``MR*``, ``T1*``, ``T2*``, ``FLAIR``, ``ADC``, ``DWI`` ...
  are MR; ``PET*``, ``SPECT*`` are other) unless dataset.json declares it::

    "modality_families": {"CBCT": "CT", "XR": "other"}

  A name that is neither declared nor placed by its prefix is an error (never quietly MR).

Everything here is plain Python (no torch): it is imported by converters and at start-up.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Mapping, Optional

MODALITIES_KEY = "modalities"
CASE_MODALITIES_KEY = "case_modalities"
CHANNEL_MODALITIES_KEY = "channel_modalities"
MODALITY_FAMILIES_KEY = "modality_families"

FAMILIES = ("CT", "MR", "other")
# family -> name prefixes (case-insensitive) that place a modality name in it without a declaration
FAMILY_NAME_PREFIXES = {
    "CT": ("CT", "CBCT"),
    "MR": ("MR", "T1", "T2", "FLAIR", "ADC", "DWI", "PD", "SWI", "DCE", "DIXON"),
    "other": ("PET", "SPECT"),
}
UNKNOWN_FAMILY = "unknown"

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


class ModalityError(ValueError):
    """A dataset's modality tags are missing or inconsistent. The message names the case and the fix."""


def validate_modality_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise ModalityError(
            f"Invalid modality name {name!r}: use letters, digits, '-' and '_' (e.g. 'CT', 'MR-T1').")
    return name


def modality_family(name: str, dataset_json: Optional[Mapping] = None) -> str:
    """'CT', 'MR' or 'other' (see module docstring): dataset.json's declaration, else the name's prefix;
    'unknown' for a name neither places (get_modalities refuses such datasets)."""
    declared = dict((dataset_json or {}).get(MODALITY_FAMILIES_KEY, {}))
    if name in declared:
        return declared[name]
    upper = name.upper()
    for family, prefixes in FAMILY_NAME_PREFIXES.items():
        if upper.startswith(prefixes):
            return family
    return UNKNOWN_FAMILY


def accepted_family_names() -> str:
    """The prefixes that place a name, for error messages: 'CT: CT*, CBCT*; MR: MR*, T1*, ...'."""
    return "; ".join(f"{family}: " + ", ".join(f"{p}*" for p in prefixes)
                     for family, prefixes in FAMILY_NAME_PREFIXES.items())


def check_modality_families(modalities: Iterable[str], dataset_json: Optional[Mapping] = None,
                            where: str = "dataset.json") -> None:
    """Every modality must have an intensity family: one error naming the ones that have none, and the fix."""
    declared = dict((dataset_json or {}).get(MODALITY_FAMILIES_KEY, {}))
    bad_declarations = {m: f for m, f in declared.items() if f not in FAMILIES}
    if bad_declarations:
        raise ModalityError(f"{where} '{MODALITY_FAMILIES_KEY}' declares unknown families {bad_declarations}; "
                            f"the families are {list(FAMILIES)}.")
    unplaced = [m for m in modalities if modality_family(m, dataset_json) == UNKNOWN_FAMILY]
    if unplaced:
        raise ModalityError(
            f"{where}: cannot tell the intensity family of modality {unplaced} (it chooses the intensity protocol). "
            f"Names are placed by prefix ({accepted_family_names()}); declare others in dataset.json, e.g. "
            f'"{MODALITY_FAMILIES_KEY}": {{"{unplaced[0]}": "other"}} (families: CT, MR, other = per-image '
            f"z-score), or rename the modality.")


def modality_prompt_text(name: str) -> str:
    """How a modality is written inside a text prompt: 'MR-T1' -> 'MR T1'."""
    return re.sub(r"[-_]+", " ", name).strip()


def get_modalities(dataset_json: Mapping) -> List[str]:
    if MODALITIES_KEY not in dataset_json:
        raise ModalityError(
            f"dataset.json has no '{MODALITIES_KEY}' list. nnunet-mulmod needs the modality vocabulary and a "
            f"modality per case: convert the dataset with one of the nnunet_mulmod_convert_* commands, or add the keys "
            f"yourself with nnunet_mulmod.modality.set_modalities (schema: nnunet_mulmod/modality.py, README).")
    modalities = list(dataset_json[MODALITIES_KEY])
    if not modalities:
        raise ModalityError(f"dataset.json '{MODALITIES_KEY}' is empty.")
    for m in modalities:
        validate_modality_name(m)
    if len(set(modalities)) != len(modalities):
        raise ModalityError(f"dataset.json '{MODALITIES_KEY}' has duplicates: {modalities}")
    check_modality_families(modalities, dataset_json)
    return modalities


def get_case_modalities(dataset_json: Mapping) -> Dict[str, str]:
    vocabulary = get_modalities(dataset_json)
    if CASE_MODALITIES_KEY not in dataset_json:
        raise ModalityError(
            f"dataset.json has no '{CASE_MODALITIES_KEY}' map (case id -> modality). Add one entry per training "
            f"and test case (schema: nnunet_mulmod/modality.py).")
    case_modalities = dict(dataset_json[CASE_MODALITIES_KEY])
    unknown = {c: m for c, m in case_modalities.items() if m not in vocabulary}
    if unknown:
        shown = ", ".join(f"{c}: {m!r}" for c, m in list(unknown.items())[:10])
        raise ModalityError(
            f"dataset.json '{CASE_MODALITIES_KEY}' uses modalities that are not in '{MODALITIES_KEY}' "
            f"{vocabulary}: {shown}{' ...' if len(unknown) > 10 else ''}. Add them to '{MODALITIES_KEY}' or fix the tags.")
    return case_modalities


def get_channel_modalities(dataset_json: Mapping) -> Dict[int, str]:
    """Channel index -> modality for aligned multi-channel datasets. Errors name the missing channels."""
    vocabulary = get_modalities(dataset_json)
    n_channels = len(dataset_json["channel_names"])
    if CHANNEL_MODALITIES_KEY not in dataset_json:
        raise ModalityError(
            f"dataset.json has no '{CHANNEL_MODALITIES_KEY}' map (channel index -> modality) for its "
            f"{n_channels} channels {dict(dataset_json['channel_names'])}. Add e.g. "
            f'"{CHANNEL_MODALITIES_KEY}": {{"0": "T2", "1": "ADC"}} with names from {vocabulary}.')
    raw = dataset_json[CHANNEL_MODALITIES_KEY]
    mapping = {int(k): v for k, v in raw.items()}
    missing = [c for c in range(n_channels) if c not in mapping]
    if missing:
        raise ModalityError(
            f"dataset.json '{CHANNEL_MODALITIES_KEY}' has no modality for channel(s) {missing} "
            f"({[dataset_json['channel_names'][str(c)] for c in missing]}). Add them.")
    unknown = {c: m for c, m in mapping.items() if m not in vocabulary}
    if unknown:
        raise ModalityError(f"dataset.json '{CHANNEL_MODALITIES_KEY}' uses unknown modalities {unknown}; "
                            f"known: {vocabulary}.")
    return mapping


def modality_of_case(dataset_json: Mapping, case_id: str) -> str:
    case_modalities = get_case_modalities(dataset_json)
    if case_id not in case_modalities:
        raise ModalityError(
            f"Case {case_id!r} has no modality tag in dataset.json '{CASE_MODALITIES_KEY}'. Add "
            f'"{case_id}": "<one of {get_modalities(dataset_json)}>" to that map.')
    return case_modalities[case_id]


def lookup_case_modality(dataset_json: Mapping, case_id: str) -> Optional[str]:
    """The case's modality if the dataset lists it, else None (no error)."""
    return dict(dataset_json.get(CASE_MODALITIES_KEY, {})).get(case_id)


def require_case_modalities(dataset_json: Mapping, case_ids: Iterable[str]) -> Dict[str, str]:
    """Map for the given cases; one error listing every case that has no tag."""
    case_modalities = get_case_modalities(dataset_json)
    case_ids = list(case_ids)
    missing = [c for c in case_ids if c not in case_modalities]
    if missing:
        shown = ", ".join(missing[:10]) + (f" ... ({len(missing)} in all)" if len(missing) > 10 else "")
        raise ModalityError(
            f"{len(missing)} case(s) have no modality tag in dataset.json '{CASE_MODALITIES_KEY}': {shown}. "
            f"Add an entry per case (schema: nnunet_mulmod/modality.py) and copy the updated dataset.json to "
            f"nnUNet_raw and nnUNet_preprocessed.")
    return {c: case_modalities[c] for c in case_ids}


def set_modalities(dataset_json: dict, case_modalities: Mapping[str, str],
                   vocabulary: Optional[Iterable[str]] = None,
                   channel_modalities: Optional[Mapping[int, str]] = None,
                   families: Optional[Mapping[str, str]] = None) -> dict:
    """Writes the schema into ``dataset_json`` (in place, also returned), validated.

    ``vocabulary`` fixes the order; by default the modalities in order of first appearance. ``families``
    declares the intensity family of modalities whose name does not place them (module docstring).
    """
    if vocabulary is None:
        vocabulary = []
        for m in list(case_modalities.values()) + list((channel_modalities or {}).values()):
            if m not in vocabulary:
                vocabulary.append(m)
    dataset_json[MODALITIES_KEY] = [validate_modality_name(m) for m in vocabulary]
    if families:
        dataset_json[MODALITY_FAMILIES_KEY] = dict(families)
    dataset_json[CASE_MODALITIES_KEY] = {str(k): v for k, v in sorted(case_modalities.items())}
    if channel_modalities is not None:
        dataset_json[CHANNEL_MODALITIES_KEY] = {str(int(k)): v for k, v in sorted(channel_modalities.items())}
        get_channel_modalities(dataset_json)
    get_case_modalities(dataset_json)
    return dataset_json


def class_names(dataset_json: Mapping) -> List[str]:
    """Label names ordered by label value (background first), as the network's output channels are.

    Region-based label definitions (lists of values) are not supported by MulModSeg: one prompt per output.
    """
    labels = dataset_json["labels"]
    items = []
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            raise ModalityError(
                f"Label {name!r} is a region ({value}); MulModSeg needs one integer label per class.")
        items.append((int(value), name))
    items.sort()
    values = [v for v, _ in items if v != labels.get("ignore", -1)]
    if values != list(range(len(values))):
        raise ModalityError(f"dataset.json labels must be consecutive integers from 0, got {values}.")
    return [n for v, n in items if n != "ignore"]
