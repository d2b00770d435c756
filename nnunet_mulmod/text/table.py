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
        except Exception as e:  # a truncated or foreign file
            raise TextTableError(f"Cannot read text-embedding table {path}: {e}. Rebuild it with "
                                 f"nnunet_mulmod_build_text_table.") from e
        return cls.from_dict(d, source=path)

    def check_matches(self, dataset_json: Mapping, source: str = "the text-embedding table") -> None:
        """Raises TextTableError, listing every difference, if classes or modalities differ from the dataset."""
        problems = []
        modalities = get_modalities(dataset_json)
        classes = dataset_class_names(dataset_json)
        if list(self.modalities) != modalities:
            problems.append(f"modalities {self.modalities} != dataset's {modalities}")
        if list(self.class_names) != classes:
            problems.append(f"classes {self.class_names} != dataset's {classes}")
        if problems:
            raise TextTableError(
                f"{source} does not match dataset '{dataset_json.get('name', '?')}': " + "; ".join(problems) +
                ". Rebuild it for this dataset with 'nnunet_mulmod_build_text_table -d <dataset id>'.")

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
