"""Zeus instruction-embedding tables: the embedded instructions of every (modality, class), in one file.

The file is the project's text-embedding table format (``nnunet_mulmod/text/table.py``: ``embeddings`` [M, K, D],
``modalities``, ``class_names``, ``prompts`` = the instruction texts that were embedded, ``encoder``), with
``template`` = ``"zeus-instructions"``, ``template_text`` = the prompt the language model answered, and one extra
key ``zeus`` that records how the instructions were made and embedded (backend, model, generation settings,
chunking, chunks per instruction), so the table can be reproduced.

Default location: ``$nnUNet_preprocessed/<Dataset>/zeus_instruction_table.pt`` (``nnUNet_zeus_instruction_table``
names another file). ``nnunet_mulmod_zeus_embed -d <id>`` writes it there; the Zeus trainers read it and copy
the rows they need into the network (the checkpoint is self-contained, the file is not needed for inference).
"""
from __future__ import annotations

import argparse
import os
from typing import List, Mapping, Optional, Sequence

import torch

from nnunet_mulmod.devices import resolve_device
from nnunet_mulmod.text.table import TextEmbeddingTable, TextTableError
from nnunet_mulmod.zeus.instructions import (dataset_modalities_and_classes,
                                             default_instructions_path, find_dataset, instruction_texts,
                                             load_instructions)
from nnunet_mulmod.zeus.text_encoder import DEFAULT_CHUNK_WORDS, encode_instructions, parse_encoder_spec

DEFAULT_TABLE_FILENAME = "zeus_instruction_table.pt"
TABLE_PATH_ENV = "nnUNet_zeus_instruction_table"
TEMPLATE_NAME = "zeus-instructions"


class ZeusTableError(TextTableError):
    """The instruction table is missing or does not cover the dataset."""


def build_instruction_table(record: Mapping, modalities: Sequence[str], classes: Sequence[str],
                            encoder_spec: Mapping, chunk_words: int = 0, device: str = "cpu",
                            source: str = "the instruction file") -> dict:
    """Embeds the instructions of ``record`` for the given modalities x classes; returns the table dict."""
    texts = instruction_texts(record, modalities, classes, source)
    flat = [t for row in texts for t in row]
    chunk_words = chunk_words or DEFAULT_CHUNK_WORDS.get(encoder_spec.get("type"), 100)
    embeddings, n_chunks = encode_instructions(flat, encoder_spec, chunk_words, device)
    table = TextEmbeddingTable(embeddings.reshape(len(modalities), len(classes), -1), list(modalities),
                               list(classes), texts, TEMPLATE_NAME, record.get("prompt_template", ""),
                               dict(encoder_spec))
    d = table.to_dict()
    d["zeus"] = {"backend": record.get("backend"), "model": record.get("model"),
                 "generation": dict(record.get("generation") or {}), "dataset": record.get("dataset"),
                 "chunk_words": int(chunk_words), "chunks_per_instruction": n_chunks,
                 "pooling": "word-count-weighted mean of chunk embeddings"}
    return d


def save_table(table_dict: Mapping, path: str) -> None:
    """Atomic write (a crash never leaves half a table)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(dict(table_dict), path + ".tmp")
    os.replace(path + ".tmp", path)


def load_table(path: str) -> dict:
    """The table dict (validated through TextEmbeddingTable); clear errors for a missing or foreign file."""
    if not os.path.isfile(path):
        raise ZeusTableError(f"Zeus instruction table {path} does not exist. Write instructions with "
                             f"'nnunet_mulmod_zeus_instructions -d <id>' and embed them with "
                             f"'nnunet_mulmod_zeus_embed -d <id> -e <encoder>' (or set {TABLE_PATH_ENV}).")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's message would advise weights_only=False (running code from the file)
        raise ZeusTableError(f"Cannot read Zeus instruction table {path} ({type(e).__name__}): the file is "
                             f"truncated, corrupted or not written by nnunet_mulmod_zeus_embed. Delete it and "
                             f"rebuild it with 'nnunet_mulmod_zeus_embed -d <id> -e <encoder>'.") from None
    if not isinstance(d, Mapping):
        raise ZeusTableError(f"{path} is not a Zeus instruction table (it holds a {type(d).__name__}). Rebuild it "
                             f"with 'nnunet_mulmod_zeus_embed -d <id> -e <encoder>'.")
    TextEmbeddingTable.from_dict(d, source=path)  # validates format and shapes
    return d


def table_rows(table_dict: Mapping, modalities: Sequence[str], classes: Sequence[str],
               source: str = "the Zeus instruction table") -> torch.Tensor:
    """[len(modalities), len(classes), D] rows for the given names; one error listing every missing pair."""
    table_mods, table_classes = list(table_dict["modalities"]), list(table_dict["class_names"])
    missing = [f"({m}, {c})" for m in modalities for c in classes if m not in table_mods or c not in table_classes]
    if missing:
        raise ZeusTableError(
            f"{source} has no embedding for the (modality, class) pair(s) {', '.join(missing)} (it covers modalities "
            f"{table_mods} and classes {table_classes}). Add the instructions and re-embed: "
            f"nnunet_mulmod_zeus_instructions -d <id>, then nnunet_mulmod_zeus_embed -d <id> -e <encoder>.")
    emb = table_dict["embeddings"]
    return emb[[table_mods.index(m) for m in modalities]][:, [table_classes.index(c) for c in classes]].clone()


def default_table_path(preprocessed_dataset_folder: str) -> str:
    return os.environ.get(TABLE_PATH_ENV) or os.path.join(preprocessed_dataset_folder, DEFAULT_TABLE_FILENAME)


def main(argv: Optional[List[str]] = None):
    parser = argparse.ArgumentParser(
        description="Zeus: embed the instructions of a dataset into an instruction table "
                    "(default $nnUNet_preprocessed/<Dataset>/zeus_instruction_table.pt).")
    parser.add_argument("-d", required=True, help="dataset id or name")
    parser.add_argument("-i", help="instruction JSON (default $nnUNet_raw/<Dataset>/zeus_instructions.json)")
    parser.add_argument("-e", "--encoder", required=True,
                        help="medclip:/folder | hf:<id or folder> | open_clip:<model>:<pretrained tag or file> | JSON")
    parser.add_argument("-o", help="output table file")
    parser.add_argument("--chunk_words", type=int, default=0,
                        help=f"words per chunk of a long instruction (default per encoder: {DEFAULT_CHUNK_WORDS})")
    parser.add_argument("-device", default="cpu")
    args = parser.parse_args(argv)
    try:
        resolve_device(args.device)  # DeviceError is a ValueError: one line below
        name, _, dataset_json = find_dataset(args.d)
        instructions_file = args.i or default_instructions_path(name)
        record = load_instructions(instructions_file)
        modalities, classes = dataset_modalities_and_classes(dataset_json)
        table = build_instruction_table(record, modalities, classes, parse_encoder_spec(args.encoder),
                                        args.chunk_words, args.device, source=instructions_file)
    except ValueError as e:  # instruction, encoder and modality-schema errors
        parser.exit(1, f"error: {e}\n")
    if args.o:
        out = args.o
    else:
        base = os.environ.get("nnUNet_preprocessed")
        if not base:
            parser.exit(1, "error: set nnUNet_preprocessed or pass -o\n")
        out = default_table_path(os.path.join(base, name))
    save_table(table, out)
    print(f"Wrote {tuple(table['embeddings'].shape)} instruction embeddings ({table['encoder']}) to {out}")


if __name__ == "__main__":
    main()
