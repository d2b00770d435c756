"""Text-embedding tables: one frozen embedding per (modality, class), computed once, stored in a file.

File format (``torch.save`` of a plain dict, loadable with ``torch.load(weights_only=True)``)::

    {
      "format": "nnunet_mulmod.text_table/1",
      "embeddings": FloatTensor [M, K, D],   # row m, column k: modality modalities[m], class class_names[k]
      "modalities": [str] * M,               # dataset.json "modalities" order
      "class_names": [str] * K,              # dataset.json label names ordered by value, background first
      "prompts": [[str] * K] * M,            # the exact text that was embedded
      "template": str,                       # "V1" / "V2" / "V3" / "custom"
      "template_text": str,                  # e.g. "A {modality} imaging of a {cls}."
      "encoder": {"type": ..., ...},         # what embedded it (type, model, pretrained / path ...)
    }

The default location for a dataset is ``$nnUNet_preprocessed/<DatasetXXX_Name>/mulmod_text_table.pt``
(``nnunet_mulmod_build_text_table -d XXX`` writes it there).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Mapping

import torch

from nnunet_mulmod.modality import class_names as dataset_class_names, get_modalities

TABLE_FORMAT = "nnunet_mulmod.text_table/1"
DEFAULT_TABLE_FILENAME = "mulmod_text_table.pt"

# The paper's prompt templates (MulModSeg, Table 1). {modality} is the modality's prompt text
# ('CT', 'MR', 'MR T1'), {cls} the class's readable name.
TEMPLATES = {
    "V1": "A photo of {cls}.",
    "V2": "There is {cls} in this {modality}.",
    "V3": "A {modality} imaging of a {cls}.",
}
DEFAULT_TEMPLATE = "V3"


class TextTableError(ValueError):
    """A text-embedding table is missing, unreadable or does not match the dataset."""


@dataclass
class TextEmbeddingTable:
    embeddings: torch.Tensor
    modalities: List[str]
    class_names: List[str]
    prompts: List[List[str]]
    template: str
    template_text: str
    encoder: dict = field(default_factory=dict)

    def __post_init__(self):
        e = self.embeddings
        if e.ndim != 3 or e.shape[0] != len(self.modalities) or e.shape[1] != len(self.class_names):
            raise TextTableError(
                f"Embedding tensor of shape {tuple(e.shape)} does not match {len(self.modalities)} modalities x "
                f"{len(self.class_names)} classes.")
        self.embeddings = e.detach().float().cpu().contiguous()

    @property
    def embed_dim(self) -> int:
        return int(self.embeddings.shape[2])

    def to_dict(self) -> dict:
        return {"format": TABLE_FORMAT, "embeddings": self.embeddings, "modalities": list(self.modalities),
                "class_names": list(self.class_names), "prompts": [list(p) for p in self.prompts],
                "template": self.template, "template_text": self.template_text, "encoder": dict(self.encoder)}

    def save(self, path: str) -> None:
        """Atomic write: a crash never leaves a half-written table behind."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp"
        torch.save(self.to_dict(), tmp)
        os.replace(tmp, path)

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "<dict>") -> "TextEmbeddingTable":
        if d.get("format") != TABLE_FORMAT:
            raise TextTableError(f"{source} is not an nnunet-mulmod text table (format {d.get('format')!r}, "
                                 f"expected {TABLE_FORMAT!r}). Build one with nnunet_mulmod_build_text_table.")
        missing = [k for k in ("embeddings", "modalities", "class_names", "prompts", "template", "template_text",
                               "encoder") if k not in d]
        if missing:
            raise TextTableError(f"{source} is an incomplete text table (no {missing}). Rebuild it with "
                                 f"'nnunet_mulmod_build_text_table -d <dataset id>'.")
        return cls(embeddings=d["embeddings"], modalities=list(d["modalities"]), class_names=list(d["class_names"]),
                   prompts=[list(p) for p in d["prompts"]], template=d["template"],
                   template_text=d["template_text"], encoder=dict(d["encoder"]))

    @classmethod
    def load(cls, path: str) -> "TextEmbeddingTable":
        if not os.path.isfile(path):
            raise TextTableError(
                f"Text-embedding table {path} does not exist. Build it with "
                f"'nnunet_mulmod_build_text_table -d <dataset id>' (see README, 'Text embedding tables').")
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated, corrupted or foreign file
            # torch's own message would advise weights_only=False, i.e. running code from the file: not the fix
            raise TextTableError(
                f"Cannot read text-embedding table {path} ({type(e).__name__}): the file is truncated, corrupted or "
                f"not a table written by nnunet_mulmod_build_text_table. Delete it and rebuild it with "
                f"'nnunet_mulmod_build_text_table -d <dataset id>'.") from None
        if not isinstance(d, Mapping):
            raise TextTableError(f"{path} is not an nnunet-mulmod text table (it holds a {type(d).__name__}). "
                                 f"Rebuild it with 'nnunet_mulmod_build_text_table -d <dataset id>'.")
        return cls.from_dict(d, source=path)

    def aligned_to(self, dataset_json: Mapping, source: str = "the text-embedding table") -> "TextEmbeddingTable":
        """This table with its rows in the dataset's modality order and its columns in the dataset's class order.

        Names are matched, not positions: a table of the same modalities and classes in another order is
        reordered. Missing or extra names raise TextTableError, one line listing every difference and the fix.
        """
        modalities = get_modalities(dataset_json)
        classes = dataset_class_names(dataset_json)
        problems = []
        for what, ours, theirs in (("modalities", self.modalities, modalities), ("classes", self.class_names, classes)):
            missing = [n for n in theirs if n not in ours]
            extra = [n for n in ours if n not in theirs]
            if missing:
                problems.append(f"no {what} {missing} (the table has {list(ours)})")
            if extra:
                problems.append(f"{what} {extra} that the dataset does not have (dataset: {list(theirs)})")
        if problems:
            raise TextTableError(
                f"{source} does not match dataset '{dataset_json.get('name', '?')}': it has " + "; ".join(problems) +
                ". It was built for another dataset or label set: rebuild it for this dataset with "
                "'nnunet_mulmod_build_text_table -d <dataset id>'.")
        rows = [self.modalities.index(m) for m in modalities]
        columns = [self.class_names.index(c) for c in classes]
        if rows == list(range(len(rows))) and columns == list(range(len(columns))):
            return self
        return TextEmbeddingTable(self.embeddings[rows][:, columns], modalities, classes,
                                  [[self.prompts[r][c] for c in columns] for r in rows], self.template,
                                  self.template_text, dict(self.encoder))

    def check_matches(self, dataset_json: Mapping, source: str = "the text-embedding table") -> None:
        """Raises TextTableError if names differ from the dataset's (see aligned_to; order does not matter)."""
        self.aligned_to(dataset_json, source)

    def select_modalities(self, names: List[str]) -> "TextEmbeddingTable":
        idx = [self.modalities.index(n) for n in names]
        return TextEmbeddingTable(self.embeddings[idx], list(names), list(self.class_names),
                                  [self.prompts[i] for i in idx], self.template, self.template_text,
                                  dict(self.encoder))


def default_table_path(preprocessed_dataset_folder_base: str) -> str:
    """Where trainers look for the table, unless ``nnUNet_mulmod_text_table`` names another file."""
    override = os.environ.get("nnUNet_mulmod_text_table")
    if override:
        return override
    return os.path.join(preprocessed_dataset_folder_base, DEFAULT_TABLE_FILENAME)


def one_hot_table(dataset_json: Mapping) -> TextEmbeddingTable:
    """The one-hot 'embedding' of the paper's Table 1: class one-hot concatenated with modality one-hot.

    Modality one-hot is included so that the controller still knows the modality (as a text prompt
    that names the modality would tell it); D = K + M.
    """
    modalities = get_modalities(dataset_json)
    classes = dataset_class_names(dataset_json)
    m, k = len(modalities), len(classes)
    emb = torch.zeros(m, k, k + m)
    for i in range(m):
        for j in range(k):
            emb[i, j, j] = 1.0
            emb[i, j, k + i] = 1.0
    prompts = [[f"onehot(class={c}, modality={mod})" for c in classes] for mod in modalities]
    return TextEmbeddingTable(emb, modalities, classes, prompts, "onehot", "", {"type": "onehot"})
