"""Text encoders for Zeus instructions: a MedCLIP-style BERT + projection from a local folder, and every encoder of
``nnunet_mulmod.text.encoders`` (open_clip, Hugging Face / sentence-transformers).

Encoder specs (dicts, also written as strings on the command line, see ``parse_encoder_spec``)::

    {"type": "medclip", "path": "/models/medclip_text"}      # "medclip:/models/medclip_text"
    {"type": "hf", "model": "<id or folder>"}                # "hf:/models/all-MiniLM-L6-v2"
    {"type": "open_clip", "model": "ViT-B-32", "pretrained": "/ckpt.bin"}   # "open_clip:ViT-B-32:/ckpt.bin"

MedCLIP folder layout: a Hugging Face BERT (``config.json``, weights, tokenizer files; MedCLIP uses
Bio_ClinicalBERT) plus ``projection.safetensors`` or ``projection.pt`` holding ``weight`` [D, hidden] (and
optionally ``bias``): MedCLIP's ``text_model.projection_head`` (768 -> 512, no bias). Pooling follows MedCLIP's
text model: the token mean of hidden states 1, 2 and the last layer, averaged over the three layers (we exclude
padding from the token mean; MedCLIP's code includes it, which makes an embedding depend on the batch).

Long instructions: LLM answers often exceed a text encoder's context (77 tokens for CLIP, 512 for BERT). Every
instruction is split into sentence-aligned chunks of at most ``chunk_words`` words, each chunk is embedded, and the
instruction's embedding is the word-count-weighted mean of its chunk embeddings. Nothing is silently truncated
unless a single chunk still exceeds the encoder's context (the encoder's own truncation then applies).
"""
from __future__ import annotations

import os
import re
from typing import List, Mapping, Sequence, Tuple

import torch

# Words per chunk: CLIP's 77-token context holds ~50 English words; BERT-style 512-token encoders far more,
# but sentence-transformers models are trained on short passages (MiniLM truncates at 256 word pieces).
DEFAULT_CHUNK_WORDS = {"open_clip": 40, "hf": 150, "medclip": 300}


class ZeusEncoderError(ValueError):
    """A text encoder cannot be loaded; the message says what is missing and how to provide it."""


def parse_encoder_spec(text: str) -> dict:
    """'medclip:/folder', 'hf:<id or folder>', 'open_clip:<model>:<pretrained>' or a JSON dict -> spec dict."""
    text = text.strip()
    if text.startswith("{"):
        import json
        return json.loads(text)
    kind, _, rest = text.partition(":")
    if kind == "medclip" and rest:
        return {"type": "medclip", "path": rest}
    if kind == "hf" and rest:
        return {"type": "hf", "model": rest}
    if kind == "open_clip" and rest:
        model, _, pretrained = rest.partition(":")
        return {"type": "open_clip", "model": model, "pretrained": pretrained or None}
    raise ZeusEncoderError(f"Cannot read encoder spec {text!r}: use medclip:/folder, hf:<id or folder>, "
                           f"open_clip:<model>:<pretrained tag or file>, or a JSON dict.")


def split_into_chunks(text: str, chunk_words: int) -> List[str]:
    """Sentence-aligned chunks of at most chunk_words words (a longer sentence is split at word boundaries)."""
    sentences = [s for s in re.split(r"(?<=[.!?;])\s+|\n+", text.strip()) if s.strip()]
    chunks, current = [], []
    for sentence in sentences:
        words = sentence.split()
        while len(words) > chunk_words:  # a run-on sentence: hard split
            if current:
                chunks.append(" ".join(current))
                current = []
            chunks.append(" ".join(words[:chunk_words]))
            words = words[chunk_words:]
        if current and len(current) + len(words) > chunk_words:
            chunks.append(" ".join(current))
            current = []
        current.extend(words)
    if current:
        chunks.append(" ".join(current))
    return chunks or [text.strip()]


class MedCLIPTextEncoder:
    """BERT + linear projection loaded from a local folder (see module docstring)."""

    def __init__(self, folder: str, device: str = "cpu"):
        import transformers
        if not os.path.isdir(folder):
            raise ZeusEncoderError(
                f"MedCLIP text encoder folder {folder} does not exist. It must hold a Hugging Face BERT "
                f"(config.json, weights, tokenizer) and projection.safetensors or projection.pt with 'weight' "
                f"[D, hidden] "
                f"(MedCLIP's text_model.projection_head.weight).")
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self.bert = transformers.AutoModel.from_pretrained(folder, local_files_only=True).to(device).eval()
        except (OSError, ValueError) as e:
            raise ZeusEncoderError(f"Cannot load the BERT of MedCLIP folder {folder}: {e}. Save it there with "
                                   f"BertModel.save_pretrained and tokenizer.save_pretrained.") from e
        self.projection = self._load_projection(folder).to(device)
        self.device = device

    @staticmethod
    def _load_projection(folder: str) -> torch.nn.Linear:
        st, pt = os.path.join(folder, "projection.safetensors"), os.path.join(folder, "projection.pt")
        if os.path.isfile(st):
            from safetensors.torch import load_file
            state = load_file(st)
        elif os.path.isfile(pt):
            state = torch.load(pt, map_location="cpu", weights_only=True)
            state = {"weight": state} if isinstance(state, torch.Tensor) else dict(state)
        else:
            raise ZeusEncoderError(f"MedCLIP folder {folder} has no projection.safetensors or projection.pt "
                                   f"(the linear text projection, 'weight' [D, hidden]).")
        if "weight" not in state:
            raise ZeusEncoderError(f"The projection file in {folder} has no 'weight' tensor (keys: {list(state)}).")
        weight = state["weight"]
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in state)
        linear.load_state_dict(state)
        return linear.eval()

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        hidden = self.bert.config.hidden_size
        if self.projection.in_features != hidden:
            raise ZeusEncoderError(f"MedCLIP projection expects {self.projection.in_features} features but the BERT "
                                   f"has hidden size {hidden}: projection and BERT come from different models.")
        out = []
        for i in range(0, len(texts), batch_size):
            batch = self.tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True,
                                   max_length=min(512, self.tokenizer.model_max_length), return_tensors="pt")
            batch = {k: v.to(self.device) for k, v in batch.items()}
            states = self.bert(**batch, output_hidden_states=True).hidden_states
            mask = batch["attention_mask"].unsqueeze(-1).float()
            layers = torch.stack([states[1], states[2], states[-1]])  # [3, B, L, H]
            pooled = ((layers * mask).sum(2) / mask.sum(1)).mean(0)   # token mean, then layer mean
            out.append(self.projection(pooled).float().cpu())
        return torch.cat(out)


def encode_texts(texts: Sequence[str], spec: Mapping, device: str = "cpu", batch_size: int = 32) -> torch.Tensor:
    """[N, D] embeddings of short texts with the encoder of ``spec``."""
    if spec.get("type") == "medclip":
        return MedCLIPTextEncoder(spec["path"], device).encode(texts, batch_size)
    from nnunet_mulmod.text.encoders import TextEncoderError, encode_texts as shared_encode_texts
    try:
        return shared_encode_texts(list(texts), dict(spec), device=device, batch_size=batch_size).float().cpu()
    except TextEncoderError as e:  # a RuntimeError there; our CLIs report ValueErrors as one-line errors
        raise ZeusEncoderError(str(e)) from e


def encode_instructions(instructions: Sequence[str], spec: Mapping, chunk_words: int = 0,
                        device: str = "cpu") -> Tuple[torch.Tensor, List[int]]:
    """[N, D] instruction embeddings (chunked, see module docstring) and the number of chunks per instruction."""
    chunk_words = chunk_words or DEFAULT_CHUNK_WORDS.get(spec.get("type"), 100)
    chunks, owners, weights = [], [], []
    for i, text in enumerate(instructions):
        for chunk in split_into_chunks(text, chunk_words):
            chunks.append(chunk)
            owners.append(i)
            weights.append(float(len(chunk.split())))
    chunk_embeddings = encode_texts(chunks, spec, device)
    owners_t, weights_t = torch.tensor(owners), torch.tensor(weights).unsqueeze(1)
    summed = torch.zeros(len(instructions), chunk_embeddings.shape[1]).index_add_(0, owners_t,
                                                                                   chunk_embeddings * weights_t)
    total = torch.zeros(len(instructions), 1).index_add_(0, owners_t, weights_t)
    return summed / total, torch.bincount(owners_t, minlength=len(instructions)).tolist()
