"""Prompt texts for a dataset's text-embedding table: readable class names and the paper's templates.

One prompt per (modality, class): ``template.format(modality=modality_prompt_text(m), cls=name)``,
where ``name`` is the readable form of the dataset.json label name (modality texts can be overridden
too: ``{"CT": "computed tomography imaging"}``).

Readable names, in this order (first match wins):

1. the user's override file, ``{label_name: prompt_name}`` (``--names names.json``);
2. a table of known abbreviations and synonyms (``KNOWN_NAMES``: AMOS ``postcava`` -> "inferior vena
   cava", MM-WHS ``LV`` -> "left ventricle", ...), matched case-insensitively on the whole label name
   with ``_``/``-``/spaces treated alike;
3. the generic rule: ``_`` -> space, ``/`` -> " or ", a side word (left/right, or a lone L/R) moves to
   the front (``adrenal_gland_left`` -> "left adrenal gland"), words are lower-cased unless they look
   like an acronym or an index (``vertebrae_L1`` -> "vertebrae L1").

Plain Python (no torch): safe to import anywhere.
"""
from __future__ import annotations

import json
import os
import re
import string
from typing import Dict, List, Mapping, Optional, Tuple

from nnunet_mulmod.modality import class_names, get_modalities, modality_prompt_text
from nnunet_mulmod.text.table import DEFAULT_TEMPLATE, TEMPLATES


class PromptError(ValueError):
    """A template or a name-override file is invalid. The message names the problem and the fix."""


# Keys: lower-case label names with '_', '-' and runs of spaces replaced by one space.
KNOWN_NAMES: Dict[str, str] = {
    "background": "background",
    "bg": "background",
    # AMOS 2022
    "postcava": "inferior vena cava",
    "ivc": "inferior vena cava",
    "prostate/uterus": "prostate or uterus",
    "gall bladder": "gallbladder",
    "arota": "aorta",  # the typo in MulModSeg's public prompt list
    # MM-WHS (whole heart)
    "ra": "right atrium",
    "la": "left atrium",
    "rv": "right ventricle",
    "lv": "left ventricle",
    "myo": "myocardium",
    "lv myo": "myocardium",
    "aa": "ascending aorta",
    "pa": "pulmonary artery",
    "la cavity": "left atrium",
    "ra cavity": "right atrium",
    "lv cavity": "left ventricle",
    "rv cavity": "right ventricle",
    # MSD prostate, BraTS / MSD brain
    "pz": "peripheral zone of the prostate",
    "tz": "transition zone of the prostate",
    "ncr": "necrotic tumor core",
    "net": "non-enhancing tumor",
    "ed": "peritumoral edema",
    "et": "enhancing tumor",
    "tc": "tumor core",
    "wt": "whole tumor",
}

_SIDE_WORDS = {"left": "left", "right": "right", "l": "left", "r": "right", "lt": "left", "rt": "right"}


def _lookup_key(label_name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", label_name.strip().lower()).strip()


def _readable_word(word: str) -> str:
    # Acronyms (CTV, L1, T12) keep their case; ordinary words are lower-cased ("Liver" -> "liver").
    if word.isalpha() and not (len(word) > 1 and word.isupper()):
        return word.lower()
    return word


def readable_class_name(label_name: str) -> str:
    """The name of a class as written in a prompt: kidney_right -> 'right kidney', postcava -> 'inferior vena cava'."""
    known = KNOWN_NAMES.get(_lookup_key(label_name))
    if known is not None:
        return known
    text = label_name.strip().replace("/", " or ")
    words = [w for w in re.split(r"[\s_]+", text) if w]
    # Hyphens join words ("non-enhancing") except in FreeSurfer-style names ("Left-Cerebral-Cortex").
    words = [part for w in words for part in
             (w.split("-") if any(p.lower() in ("left", "right") for p in w.split("-")) else [w]) if part]
    sides = [_SIDE_WORDS[w.lower()] for w in words if w.lower() in _SIDE_WORDS]
    if len(words) > 1 and len(sides) == 1:
        words = [w for w in words if w.lower() not in _SIDE_WORDS]
        remainder = " ".join(words)
        # The part without the side may itself be a known name ("gall_bladder_left").
        remainder = KNOWN_NAMES.get(_lookup_key(remainder), " ".join(_readable_word(w) for w in words))
        return f"{sides[0]} {remainder}"
    return " ".join(_readable_word(w) for w in words)


def load_name_overrides(path: str) -> Dict[str, str]:
    """Reads a ``{label_name: prompt_name}`` JSON file (``--names``; also ``--modality_names``)."""
    if not os.path.isfile(path):
        raise PromptError(f"Name override file {path} does not exist. It must be a JSON object "
                          f'{{"label_name": "prompt name", ...}}.')
    try:
        with open(path) as f:
            overrides = json.load(f)
    except json.JSONDecodeError as e:
        raise PromptError(f"Name override file {path} is not valid JSON ({e}). Expected "
                          f'{{"label_name": "prompt name", ...}}.') from e
    if not isinstance(overrides, dict) or not all(isinstance(k, str) and isinstance(v, str) and v.strip()
                                                  for k, v in overrides.items()):
        raise PromptError(f"Name override file {path} must be a JSON object mapping label names to non-empty "
                          f'prompt names, e.g. {{"postcava": "inferior vena cava"}}.')
    return overrides


def class_prompt_names(dataset_json: Mapping, name_overrides: Optional[Mapping[str, str]] = None) -> List[str]:
    """Readable names of the dataset's classes, in label-value order (background first)."""
    classes = class_names(dataset_json)
    name_overrides = dict(name_overrides or {})
    unknown = sorted(set(name_overrides) - set(classes))
    if unknown:
        # A typo in an override would otherwise be ignored silently and the default name used.
        raise PromptError(f"Name overrides for labels that are not in dataset.json: {unknown}. "
                          f"The dataset's labels are {classes}.")
    return [name_overrides.get(c, readable_class_name(c)) for c in classes]


def resolve_template(template: str) -> Tuple[str, str]:
    """'V1'/'V2'/'V3' or a custom text -> (template name, template text). Custom texts are validated."""
    if template in TEMPLATES:
        return template, TEMPLATES[template]
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:  # unbalanced braces
        raise PromptError(f"Custom template {template!r} is malformed ({e}). Use {{cls}} and {{modality}} as "
                          f"placeholders and '{{{{' / '}}}}' for literal braces.") from e
    unknown = sorted({f for f in fields if f not in ("cls", "modality")})
    if unknown:
        raise PromptError(f"Custom template {template!r} has unknown placeholder(s) "
                          f"{', '.join('{' + f + '}' for f in unknown)}. Only {{cls}} (the class name) and "
                          f"{{modality}} (the modality, e.g. 'CT', 'MR T1') are allowed. Named templates: "
                          f"{sorted(TEMPLATES)}.")
    if "cls" not in fields:
        raise PromptError(f"Custom template {template!r} has no {{cls}} placeholder: every class would get the "
                          f"same prompt. Example: 'A {{modality}} scan showing the {{cls}}.'")
    return "custom", template


def modality_prompt_names(dataset_json: Mapping, modality_overrides: Optional[Mapping[str, str]] = None) -> List[str]:
    """How each modality is written in prompts: 'MR-T1' -> 'MR T1', unless overridden ({'CT': 'computed tomography'})."""
    modalities = get_modalities(dataset_json)
    modality_overrides = dict(modality_overrides or {})
    unknown = sorted(set(modality_overrides) - set(modalities))
    if unknown:
        raise PromptError(f"Modality name overrides for modalities that are not in dataset.json: {unknown}. "
                          f"The dataset's modalities are {modalities}.")
    return [modality_overrides.get(m, modality_prompt_text(m)) for m in modalities]


def build_prompts(dataset_json: Mapping, template: str = DEFAULT_TEMPLATE,
                  name_overrides: Optional[Mapping[str, str]] = None,
                  modality_overrides: Optional[Mapping[str, str]] = None) -> Tuple[List[List[str]], str, str]:
    """Prompts of a dataset's text table.

    Returns ``(prompts, template_name, template_text)``; ``prompts[m][k]`` is the text for modality
    ``dataset_json['modalities'][m]`` and class ``k`` (label value order, background included).
    ``name_overrides``: {label_name: prompt name}; ``modality_overrides``: {modality: prompt text}.
    """
    template_name, template_text = resolve_template(template)
    modality_texts = modality_prompt_names(dataset_json, modality_overrides)
    names = class_prompt_names(dataset_json, name_overrides)
    prompts = [[template_text.format(modality=m, cls=n) for n in names] for m in modality_texts]
    return prompts, template_name, template_text
