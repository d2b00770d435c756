"""Zeus instruction generation: one instruction text per (modality, class) of an aligned multi-channel dataset.

Zeus prompts its mask decoder with an instruction that a language model wrote for each modality and target.
Here the instructions are generated once, ahead of training, into a readable JSON file that the user can
inspect and edit before embedding it (``nnunet_mulmod_zeus_embed``)::

    {
      "format": "nnunet_mulmod.zeus_instructions/1",
      "dataset": "Dataset005_Prostate",
      "prompt_template": "Please analyze the given {instance} {modality} image and ...",
      "backend": "hf" | "vlm" | "json" | "template",
      "model": "<id or folder>" | null,
      "generation": {"seed": 0, "max_new_tokens": 160, "do_sample": false, ...},
      "instructions": [
        {"modality": "T2", "class": "peripheral_zone", "prompt": "...", "text": "...", "image": null}, ...
      ]
    }

Backends
- ``hf``: a Hugging Face causal LM (Vicuna/LLaMA-class, any ``AutoModelForCausalLM``) by hub id (from the local
  cache only, nothing is downloaded) or local folder. Deterministic: the seed is reset before every prompt, so an
  instruction does not depend on which other prompts were generated before it.
- ``vlm``: a Hugging Face vision-language model (``AutoModelForImageTextToText`` + ``AutoProcessor``) that gets a
  representative slice of the modality with the prompt (the slice of the training set with the largest area of
  the class, that channel's image; for background the slice with the most foreground).
- ``json``: instructions a user produced elsewhere, ``{modality: {class: text}}`` or this module's format.
- ``template``: an offline, model-free description built from the modality and class names.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from nnunet_mulmod.devices import resolve_device
from nnunet_mulmod.modality import (class_names as dataset_class_names, get_channel_modalities, get_modalities,
                                    modality_prompt_text)

INSTRUCTIONS_FORMAT = "nnunet_mulmod.zeus_instructions/1"
DEFAULT_INSTRUCTIONS_FILENAME = "zeus_instructions.json"
# The paper's prompt (Zeus, Sec. 3.1), <instance> -> {instance}, <modality> -> {modality}.
PAPER_PROMPT = ("Please analyze the given {instance} {modality} image and give as much important information in "
                "such a {modality} for segmenting {instance} as you can.")
BACKENDS = ("template", "json", "hf", "vlm")


class ZeusInstructionError(ValueError):
    """Instructions cannot be generated or read; the message says what is missing and how to provide it."""


def readable_class(name: str) -> str:
    """'peripheral_zone' -> 'peripheral zone' (how a label name is written inside a prompt)."""
    return name.replace("_", " ").replace("-", " ").strip()


def dataset_modalities_and_classes(dataset_json: Mapping) -> Tuple[List[str], List[str]]:
    """Modalities used by the dataset's channels (vocabulary order) and its class names (label order)."""
    channel_modalities = get_channel_modalities(dataset_json)
    used = set(channel_modalities.values())
    return [m for m in get_modalities(dataset_json) if m in used], dataset_class_names(dataset_json)


def paper_prompt(modality: str, class_name: str, template: str = PAPER_PROMPT) -> str:
    return template.format(instance=readable_class(class_name), modality=modality_prompt_text(modality))


def template_instruction(modality: str, class_name: str, all_classes: Sequence[str]) -> str:
    """Offline instruction: what the target is, in which modality, and what surrounds it. Needs no model."""
    mod = modality_prompt_text(modality)
    if class_name == all_classes[0]:  # background is label 0 (nnU-Net convention)
        targets = ", ".join(readable_class(c) for c in all_classes[1:]) or "any structure"
        return (f"This is a {mod} image. The background is every pixel that belongs to none of these targets: "
                f"{targets}. It includes air, other organs and tissues, and imaging artefacts of {mod}.")
    cls = readable_class(class_name)
    return (f"This is a {mod} image. Segment the {cls}. Find the {cls} by its typical location, shape and size, "
            f"and delineate its boundary where its {mod} intensity and texture differ from the adjacent tissue.")


def _load_hf(model: str, kind: str, allow_download: bool, device: str):
    """Loads (model, tokenizer-or-processor); a clear error when it is not available offline."""
    import transformers
    # A hub id is 'org/name'; anything else with a separator is meant as a folder.
    looks_like_path = os.path.isabs(model) or model.startswith((".", "~")) or model.count("/") > 1
    if looks_like_path and not os.path.isdir(model):
        raise ZeusInstructionError(f"Language model folder {model} does not exist.")
    try:
        if kind == "vlm":
            processor = transformers.AutoProcessor.from_pretrained(model, local_files_only=not allow_download)
            net = transformers.AutoModelForImageTextToText.from_pretrained(model, local_files_only=not allow_download)
        else:
            processor = transformers.AutoTokenizer.from_pretrained(model, local_files_only=not allow_download)
            net = transformers.AutoModelForCausalLM.from_pretrained(model, local_files_only=not allow_download)
    except (OSError, ValueError, KeyError) as e:
        raise ZeusInstructionError(
            f"Cannot load the {'vision-language' if kind == 'vlm' else 'language'} model {model!r} offline ({e}). "
            f"Pass a local folder that holds its config, weights and tokenizer (e.g. one written by "
            f"save_pretrained, or a snapshot of the hub repository) with --model /path/to/folder, or put it into "
            f"the Hugging Face cache first (huggingface-cli download {model}).") from e
    return net.to(device).eval(), processor


def _chat_prompt(tokenizer_or_processor, prompt: str, with_image: bool) -> str:
    """The model's own chat format when it has one (instruction-tuned models answer far better), else raw text."""
    if getattr(tokenizer_or_processor, "chat_template", None):
        content = [{"type": "image"}, {"type": "text", "text": prompt}] if with_image else prompt
        return tokenizer_or_processor.apply_chat_template([{"role": "user", "content": content}],
                                                          tokenize=False, add_generation_prompt=True)
    return prompt


def generate_with_hf(prompts: Sequence[str], model: str, generation: Mapping, images: Optional[Sequence] = None,
                     allow_download: bool = False, device: str = "cpu") -> List[str]:
    """Answers each prompt with a Hugging Face causal LM (images None) or vision-language model (one PIL image per
    prompt). Greedy by default; with do_sample the seed is reset before every prompt (order-independent)."""
    import torch
    import transformers
    kind = "vlm" if images is not None else "hf"
    net, processor = _load_hf(model, kind, allow_download, device)
    tokenizer = getattr(processor, "tokenizer", processor)
    settings = {k: v for k, v in generation.items() if k not in ("seed",)}
    if not settings.get("do_sample"):
        settings.pop("temperature", None)
        settings.pop("top_p", None)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers = []
    for i, prompt in enumerate(tqdm(prompts, desc=f"Generating instructions ({kind}: {os.path.basename(model)})")):
        transformers.set_seed(int(generation.get("seed", 0)))
        text = _chat_prompt(processor, prompt, images is not None)
        if images is not None:
            inputs = processor(text=text, images=[images[i]], return_tensors="pt")
        else:
            inputs = tokenizer(text, return_tensors="pt")
        inputs = {k: v.to(device) for k, v in inputs.items()}
        with torch.no_grad():
            out = net.generate(**inputs, pad_token_id=pad_id, **settings)
        new_tokens = out[0, inputs["input_ids"].shape[1]:]
        answers.append(tokenizer.decode(new_tokens, skip_special_tokens=True).strip())
    return answers


def representative_slices(raw_dataset_folder: str, dataset_json: Mapping, modalities: Sequence[str],
                          classes: Sequence[str], max_cases: int = 20) -> Dict[Tuple[str, str], dict]:
    """For each (modality, class): the 2D slice (first array axis) of the training set with the largest area of
    the class (for background: of any foreground), taken from the first channel of that modality.

    Returns {(modality, class): {"case", "channel", "slice", "pixels" (float array)}}.
    """
    import SimpleITK as sitk
    channel_modalities = get_channel_modalities(dataset_json)
    ending = dataset_json["file_ending"]
    labels_dir = os.path.join(raw_dataset_folder, "labelsTr")
    if not os.path.isdir(labels_dir):
        raise ZeusInstructionError(f"{labels_dir} does not exist: the vlm backend picks representative slices from "
                                   f"the raw training cases (nnUNet_raw). Convert the dataset first.")
    cases = sorted(f[:-len(ending)] for f in os.listdir(labels_dir) if f.endswith(ending))[:max_cases]
    if not cases:
        raise ZeusInstructionError(f"No training labels ending in {ending} in {labels_dir}.")
    best = {}  # class index -> (area, case, slice)
    for case in tqdm(cases, desc="Finding representative slices"):
        seg = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(labels_dir, case + ending)))
        seg = seg.reshape((-1,) + seg.shape[-2:])
        for k in range(len(classes)):
            area = ((seg > 0) if k == 0 else (seg == k)).sum(axis=(1, 2))
            z = int(np.argmax(area))
            if area[z] > best.get(k, (-1,))[0]:
                best[k] = (int(area[z]), case, z)
    result = {}
    for m in modalities:
        channel = min(c for c, mod in channel_modalities.items() if mod == m)
        for k, cls in enumerate(classes):
            _, case, z = best[k]
            image = sitk.GetArrayFromImage(sitk.ReadImage(
                os.path.join(raw_dataset_folder, "imagesTr", f"{case}_{channel:04d}{ending}")))
            result[(m, cls)] = {"case": case, "channel": channel, "slice": z,
                                "pixels": image.reshape((-1,) + image.shape[-2:])[z].astype(np.float32)}
    return result


def slice_to_pil(pixels: np.ndarray):
    """Grey 2D array -> RGB PIL image, windowed to the 0.5-99.5 percentiles (CT and MR alike)."""
    from PIL import Image
    lo, hi = np.percentile(pixels, (0.5, 99.5))
    scaled = np.clip((pixels - lo) / max(hi - lo, 1e-6), 0, 1)
    return Image.fromarray((scaled * 255).astype(np.uint8)).convert("RGB")


def read_user_instructions(path: str, modalities: Sequence[str], classes: Sequence[str]) -> Dict[Tuple[str, str], str]:
    """Reads ``{modality: {class: text}}`` or this module's format; one error listing every missing pair."""
    if not os.path.isfile(path):
        raise ZeusInstructionError(f"Instruction file {path} does not exist.")
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ZeusInstructionError(f"{path} is not valid JSON: {e}") from e
    if isinstance(data, dict) and "instructions" in data:
        texts = {(i["modality"], i["class"]): i["text"] for i in data["instructions"]}
    elif isinstance(data, dict):
        texts = {(m, c): t for m, per_class in data.items() for c, t in dict(per_class).items()}
    else:
        raise ZeusInstructionError(f"{path}: expected {{modality: {{class: text}}}} or a file written by "
                                   f"nnunet_mulmod_zeus_instructions.")
    missing = [f"({m}, {c})" for m in modalities for c in classes if not str(texts.get((m, c), "")).strip()]
    if missing:
        raise ZeusInstructionError(f"{path} has no instruction for {len(missing)} (modality, class) pair(s): "
                                   f"{', '.join(missing)}. Add them as {{\"<modality>\": {{\"<class>\": \"text\"}}}}.")
    return texts


def generate_instructions(dataset_json: Mapping, backend: str = "template", model: Optional[str] = None,
                          json_file: Optional[str] = None, raw_dataset_folder: Optional[str] = None,
                          seed: int = 0, max_new_tokens: int = 160, do_sample: bool = False,
                          temperature: float = 0.7, top_p: float = 0.9, prompt_template: str = PAPER_PROMPT,
                          allow_download: bool = False, device: str = "cpu", max_cases: int = 20) -> dict:
    """The instruction record (see module docstring) for every (modality, class) of the dataset."""
    if backend not in BACKENDS:
        raise ZeusInstructionError(f"Unknown backend {backend!r}; choose one of {BACKENDS}.")
    modalities, classes = dataset_modalities_and_classes(dataset_json)
    pairs = [(m, c) for m in modalities for c in classes]
    prompts = [paper_prompt(m, c, prompt_template) for m, c in pairs]
    generation: dict = {"seed": seed}
    images_info = [None] * len(pairs)
    if backend == "template":
        texts = [template_instruction(m, c, classes) for m, c in pairs]
    elif backend == "json":
        if not json_file:
            raise ZeusInstructionError("The json backend needs --json FILE with {modality: {class: text}}.")
        user = read_user_instructions(json_file, modalities, classes)
        texts = [user[p] for p in pairs]
        generation = {"source": os.path.abspath(json_file)}
    else:
        if not model:
            raise ZeusInstructionError(f"The {backend} backend needs --model (a Hugging Face id in the local cache "
                                       f"or a local folder).")
        generation.update(max_new_tokens=max_new_tokens, min_new_tokens=1, do_sample=do_sample)
        if do_sample:
            generation.update(temperature=temperature, top_p=top_p)
        images = None
        if backend == "vlm":
            if raw_dataset_folder is None:
                raise ZeusInstructionError("The vlm backend needs the raw dataset folder (nnUNet_raw) for its slices.")
            slices = representative_slices(raw_dataset_folder, dataset_json, modalities, classes, max_cases)
            images = [slice_to_pil(slices[p]["pixels"]) for p in pairs]
            images_info = [{k: v for k, v in slices[p].items() if k != "pixels"} for p in pairs]
        texts = generate_with_hf(prompts, model, generation, images, allow_download, device)
        empty = [f"({m}, {c})" for (m, c), t in zip(pairs, texts) if not t]
        if empty:
            raise ZeusInstructionError(f"Model {model} returned empty instructions for {', '.join(empty)}; raise "
                                       f"--max_new_tokens, try sampling, or edit the JSON by hand.")
    return {"format": INSTRUCTIONS_FORMAT, "dataset": dataset_json.get("name"), "prompt_template": prompt_template,
            "backend": backend, "model": model, "generation": generation,
            "instructions": [{"modality": m, "class": c, "prompt": p, "text": t, "image": info}
                             for (m, c), p, t, info in zip(pairs, prompts, texts, images_info)]}


def save_instructions(record: Mapping, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, ensure_ascii=False)


def load_instructions(path: str) -> dict:
    if not os.path.isfile(path):
        raise ZeusInstructionError(f"Instruction file {path} does not exist. Write it with "
                                   f"'nnunet_mulmod_zeus_instructions -d <dataset id>'.")
    with open(path) as f:
        record = json.load(f)
    if record.get("format") != INSTRUCTIONS_FORMAT:
        raise ZeusInstructionError(f"{path} is not a Zeus instruction file (format {record.get('format')!r}); "
                                   f"write one with nnunet_mulmod_zeus_instructions (or use --backend json).")
    return record


def instruction_texts(record: Mapping, modalities: Sequence[str], classes: Sequence[str],
                      source: str = "the instruction file") -> List[List[str]]:
    """texts[m][k] for the requested modalities and classes; one error listing every missing pair."""
    texts = {(i["modality"], i["class"]): i["text"] for i in record["instructions"]}
    missing = [f"({m}, {c})" for m in modalities for c in classes if (m, c) not in texts]
    if missing:
        raise ZeusInstructionError(f"{source} has no instruction for {', '.join(missing)}. Regenerate it with "
                                   f"nnunet_mulmod_zeus_instructions or add the entries by hand.")
    return [[texts[(m, c)] for c in classes] for m in modalities]


def find_dataset(dataset_name_or_id: str) -> Tuple[str, Optional[str], dict]:
    """(dataset name, raw folder or None, dataset.json) from nnUNet_raw, else nnUNet_preprocessed."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    name = maybe_convert_to_dataset_name(dataset_name_or_id)
    for var in ("nnUNet_raw", "nnUNet_preprocessed"):
        base = os.environ.get(var)
        if base and os.path.isfile(os.path.join(base, name, "dataset.json")):
            with open(os.path.join(base, name, "dataset.json")) as f:
                return name, (os.path.join(base, name) if var == "nnUNet_raw" else None), json.load(f)
    raise ZeusInstructionError(f"No dataset.json for {name} in nnUNet_raw or nnUNet_preprocessed.")


def default_instructions_path(dataset_name: str) -> str:
    base = os.environ.get("nnUNet_raw") or os.environ.get("nnUNet_preprocessed")
    if not base:
        raise ZeusInstructionError("Set nnUNet_raw (or pass -o) to say where the instructions are written.")
    return os.path.join(base, dataset_name, DEFAULT_INSTRUCTIONS_FILENAME)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Zeus: write one instruction per (modality, class) of an aligned multi-channel dataset into a "
                    "readable JSON file (default $nnUNet_raw/<Dataset>/zeus_instructions.json).")
    parser.add_argument("-d", required=True, help="dataset id or name (dataset.json needs 'channel_modalities')")
    parser.add_argument("-b", "--backend", choices=BACKENDS, default="template",
                        help="template (offline, no model), json (your own file), hf (causal LM), vlm (image+text)")
    parser.add_argument("-m", "--model", help="hf/vlm: Hugging Face id (local cache only) or local model folder")
    parser.add_argument("--json", dest="json_file", help="json backend: {modality: {class: text}} file")
    parser.add_argument("-o", help="output JSON (default $nnUNet_raw/<Dataset>/zeus_instructions.json)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_new_tokens", type=int, default=160)
    parser.add_argument("--sample", action="store_true", help="sample (with --temperature, --top_p) instead of greedy")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top_p", type=float, default=0.9)
    parser.add_argument("--prompt", default=PAPER_PROMPT, help="prompt template with {instance} and {modality}")
    parser.add_argument("--max_cases", type=int, default=20, help="vlm: training cases searched for slices")
    parser.add_argument("-device", default="cpu", help="cpu, cuda or mps")
    parser.add_argument("--allow_download", action="store_true", help="let transformers download the model")
    args = parser.parse_args(argv)
    try:
        resolve_device(args.device)  # DeviceError is a ValueError: one line below
        name, raw_folder, dataset_json = find_dataset(args.d)
        record = generate_instructions(dataset_json, args.backend, args.model, args.json_file, raw_folder, args.seed,
                                       args.max_new_tokens, args.sample, args.temperature, args.top_p, args.prompt,
                                       args.allow_download, args.device, args.max_cases)
    except ValueError as e:  # ZeusInstructionError and the modality schema's ModalityError
        parser.exit(1, f"error: {e}\n")
    out = args.o or default_instructions_path(name)
    save_instructions(record, out)
    print(f"Wrote {len(record['instructions'])} instructions to {out}")


if __name__ == "__main__":
    main()
