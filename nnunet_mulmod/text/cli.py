"""``nnunet_mulmod_build_text_table``: the per-modality, per-class text-embedding table of a dataset.

    nnunet_mulmod_build_text_table -d 501                                   # V3 prompts, CLIP ViT-B/32 (OpenAI)
    nnunet_mulmod_build_text_table -d 501 --pretrained /models/open_clip_pytorch_model.bin --model ViT-B-32-quickgelu
    nnunet_mulmod_build_text_table -d 501 --encoder hf --model /models/biobert-v1.1 --template V2
    nnunet_mulmod_build_text_table -d 501 --encoder onehot

Python API: ``build_text_table(dataset_json, encoder_spec, template, name_overrides) -> TextEmbeddingTable``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Mapping, Optional, Tuple, Union

from nnunet_mulmod.modality import ModalityError, class_names, get_modalities
from nnunet_mulmod.text.encoders import TextEncoderError, describe, load_text_encoder, resolve_spec
from nnunet_mulmod.text.prompts import PromptError, build_prompts, load_name_overrides
from nnunet_mulmod.text.table import (DEFAULT_TEMPLATE, TEMPLATES, TextEmbeddingTable, TextTableError,
                                      default_table_path, one_hot_table)

DEFAULT_ENCODER_SPEC = {"type": "open_clip", "model": "ViT-B-32", "pretrained": "openai"}


def _read_dataset_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise TextTableError(f"dataset.json {path} does not exist.")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise TextTableError(f"{path} is not valid JSON: {e}") from e


def build_text_table(dataset_json: Union[str, Mapping], encoder_spec: Optional[Mapping] = None,
                     template: str = DEFAULT_TEMPLATE, name_overrides: Optional[Mapping[str, str]] = None,
                     device: str = "cpu", batch_size: int = 64,
                     modality_overrides: Optional[Mapping[str, str]] = None) -> TextEmbeddingTable:
    """The text-embedding table of a dataset (dataset.json as a dict or a file path).

    ``encoder_spec``: see nnunet_mulmod.text.encoders (default CLIP ViT-B/32, OpenAI weights);
    ``template``: 'V1'/'V2'/'V3' or a custom text with {cls} and optionally {modality};
    ``name_overrides``: {label_name: prompt name}; ``modality_overrides``: {modality: prompt text}
    (default 'MR-T1' -> 'MR T1'). The table records prompts, template, encoder
    (resolved spec: backend, D, token limit, library version), class and modality order.
    """
    if isinstance(dataset_json, (str, os.PathLike)):
        dataset_json = _read_dataset_json(os.fspath(dataset_json))
    if "labels" not in dataset_json:
        raise TextTableError("dataset.json has no 'labels': nothing to build prompts for.")
    spec = resolve_spec(encoder_spec or DEFAULT_ENCODER_SPEC)
    if spec["type"] == "onehot":
        return one_hot_table(dataset_json)
    prompts, template_name, template_text = build_prompts(dataset_json, template, name_overrides, modality_overrides)
    encoder = load_text_encoder(spec, device)
    flat = [p for row in prompts for p in row]
    embeddings = encoder.encode(flat, batch_size=batch_size).reshape(len(prompts), len(prompts[0]), -1)
    return TextEmbeddingTable(embeddings, get_modalities(dataset_json), class_names(dataset_json), prompts,
                              template_name, template_text, dict(encoder.spec))


def _locate_dataset(dataset: str) -> Tuple[str, str]:
    """-d -> (dataset.json path, default table folder $nnUNet_preprocessed/<name>)."""
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    try:
        name = maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError) as e:
        raise TextTableError(str(e)) from e
    candidates = [os.path.join(base.get(), name, "dataset.json") for base in (nnUNet_preprocessed, nnUNet_raw)
                  if base.is_set()]
    found = [c for c in candidates if os.path.isfile(c)]
    if not found:
        raise TextTableError(f"No dataset.json for {name} in $nnUNet_preprocessed or $nnUNet_raw (looked at "
                             f"{candidates or 'nothing: neither variable is set'}). Use --dataset_json instead.")
    if not nnUNet_preprocessed.is_set():
        return found[0], ""
    return found[0], os.path.join(nnUNet_preprocessed.get(), name)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnunet_mulmod_build_text_table",
        description="Builds the MulModSeg text-embedding table (one frozen embedding per modality and class) of a "
                    "dataset from its dataset.json ('modalities' and 'labels'). Default output: "
                    "$nnUNet_preprocessed/<DatasetXXX_Name>/mulmod_text_table.pt, where the trainers look for it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-d", dest="dataset", help="dataset id or name; dataset.json is read from $nnUNet_preprocessed/"
                                                "<name>/, else $nnUNet_raw/<name>/")
    src.add_argument("--dataset_json", help="path of a dataset.json (instead of -d)")
    p.add_argument("--encoder", choices=["open_clip", "hf", "medclip", "onehot"], default="open_clip",
                   help="open_clip: CLIP-style models; hf: Hugging Face / sentence-transformers models; medclip: a "
                        "MedCLIP-style BERT + projection folder (--model); onehot: class one-hot + modality one-hot, "
                        "no text model")
    p.add_argument("--model", default=None,
                   help="open_clip: model name (default ViT-B-32; ViT-B-32-quickgelu for OpenAI weights from a local "
                        "file), 'hf-hub:org/repo', 'local-dir:/folder' or a model-config .json file. hf (required): "
                        "a hub id (e.g. dmis-lab/biobert-v1.1) or a local model folder. medclip (required): the local folder")
    p.add_argument("--pretrained", default=None,
                   help="open_clip only: pretrained tag (default openai) or a local checkpoint file "
                        "(open_clip_pytorch_model.bin / .safetensors)")
    p.add_argument("--no_normalize", action="store_true",
                   help="store raw encoder features instead of L2-normalised ones (MulModSeg's public notebook "
                        "stored raw CLIP features)")
    tpl = p.add_mutually_exclusive_group()
    tpl.add_argument("--template", choices=sorted(TEMPLATES), default=DEFAULT_TEMPLATE,
                     help="paper templates: " + "; ".join(f"{k}: '{v}'" for k, v in TEMPLATES.items()))
    tpl.add_argument("--custom_template", default=None,
                     help="custom prompt template with {cls} and optionally {modality}, e.g. "
                          "'A {modality} scan showing the {cls}.'")
    p.add_argument("--names", default=None, help="JSON file {label_name: prompt name} overriding readable names")
    p.add_argument("--modality_names", default=None,
                   help="JSON file {modality: prompt text} overriding how modalities are written in prompts "
                        "(default: 'MR-T1' -> 'MR T1'), e.g. {\"CT\": \"computed tomography imaging\"}")
    p.add_argument("-o", dest="output", default=None,
                   help="output file (default $nnUNet_preprocessed/<name>/mulmod_text_table.pt; with --dataset_json: "
                        "next to that file; $nnUNet_mulmod_text_table overrides both)")
    p.add_argument("--device", default="cpu", help="torch device for the encoder, e.g. cpu, cuda, cuda:1")
    p.add_argument("--print", dest="print_prompts", action="store_true", help="print every prompt")
    return p


def _run(args: argparse.Namespace) -> str:
    if args.dataset is not None:
        dataset_json_path, table_folder = _locate_dataset(args.dataset)
    else:
        dataset_json_path = os.path.abspath(args.dataset_json)
        table_folder = os.path.dirname(dataset_json_path)
    output = args.output or (default_table_path(table_folder) if table_folder or
                             os.environ.get("nnUNet_mulmod_text_table") else None)
    if output is None:
        raise TextTableError("$nnUNet_preprocessed is not set, so there is no default output location: pass -o.")
    if args.encoder == "onehot" and (args.model or args.pretrained or args.names or args.modality_names
                                     or args.custom_template or args.no_normalize):
        raise TextTableError("--model, --pretrained, --names, --modality_names, --custom_template and --no_normalize "
                             "have no meaning with --encoder onehot (it embeds no text).")
    if args.encoder in ("hf", "medclip") and args.pretrained:
        raise TextTableError(f"--pretrained is for open_clip only; with --encoder {args.encoder} pass the model "
                             f"{'id or ' if args.encoder == 'hf' else ''}folder as --model.")
    spec = {"type": args.encoder}
    if args.encoder != "onehot":
        spec.update(normalize=not args.no_normalize)
        if args.model:
            spec["path" if args.encoder == "medclip" else "model"] = args.model
        if args.pretrained:
            spec["pretrained"] = args.pretrained
    overrides = load_name_overrides(args.names) if args.names else None
    modality_overrides = load_name_overrides(args.modality_names) if args.modality_names else None
    template = args.custom_template if args.custom_template is not None else args.template

    dataset_json = _read_dataset_json(dataset_json_path)
    print(f"dataset.json: {dataset_json_path}")
    print(f"loading encoder: {describe(resolve_spec(spec))}")
    table = build_text_table(dataset_json, spec, template, overrides, device=args.device,
                             modality_overrides=modality_overrides)
    table.save(output)

    m, k, d = table.embeddings.shape
    print(f"text table {m} modalities x {k} classes x D={d} -> {output}")
    print(f"encoder: {describe(table.encoder)}")
    print(f"template {table.template}: {table.template_text!r}" if table.template_text else f"template {table.template}")
    print(f"modalities: {table.modalities}")
    shown = [(mod, cls, table.prompts[i][j]) for i, mod in enumerate(table.modalities)
             for j, cls in enumerate(table.class_names)]
    for mod, cls, prompt in (shown if args.print_prompts else shown[:min(3, k)]):
        print(f"  [{mod}] {cls}: {prompt}")
    if not args.print_prompts and len(shown) > 3:
        print(f"  ... ({len(shown)} prompts; --print shows all)")
    return output


def main(argv=None) -> None:
    args = _parser().parse_args(argv)
    from nnunet_mulmod.devices import DeviceError, resolve_device
    try:
        resolve_device(args.device)
        _run(args)
    except (TextEncoderError, TextTableError, PromptError, ModalityError, DeviceError) as e:
        # User errors: the message names the file and the fix; a traceback would only hide it.
        print(f"ERROR: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
