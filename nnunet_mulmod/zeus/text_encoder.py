"""Zeus instruction embeddings: long LLM instructions, chunked, embedded with any encoder of
``nnunet_mulmod.text.encoders`` (the paper's MedCLIP-style BERT + projection, open_clip, Hugging Face /
sentence-transformers), with its one spec parser and its defaults (``parse_encoder_spec``, ``resolve_spec``)::

    {"type": "medclip", "path": "/models/medclip_text"}      # "medclip:/models/medclip_text"
    {"type": "hf", "model": "<id or folder>"}                # "hf:/models/all-MiniLM-L6-v2"
    {"type": "open_clip", "model": "ViT-B-32", "pretrained": "/ckpt.bin"}   # "open_clip:ViT-B-32:/ckpt.bin"

Long instructions: LLM answers often exceed a text encoder's context (77 tokens for CLIP, 512 for BERT). Every
instruction is split into sentence-aligned chunks of at most ``chunk_words`` words, each chunk is embedded, and the
instruction's embedding is the word-count-weighted mean of its chunk embeddings. Nothing is silently truncated
unless a single chunk still exceeds the encoder's context (the encoder's own truncation then applies).
"""
from __future__ import annotations

import re
from typing import List, Mapping, Sequence, Tuple

import torch

from nnunet_mulmod.text.encoders import TextEncoderError, parse_encoder_spec  # noqa: F401 (Zeus's CLIs parse with it)
from nnunet_mulmod.text.encoders import encode_texts as _encode_texts

# Words per chunk: CLIP's 77-token context holds ~50 English words; BERT-style 512-token encoders far more,
# but sentence-transformers models are trained on short passages (MiniLM truncates at 256 word pieces).
DEFAULT_CHUNK_WORDS = {"open_clip": 40, "hf": 150, "medclip": 300}

# Zeus's name for the encoders' error (a ValueError: the CLIs report it as a one-line error).
ZeusEncoderError = TextEncoderError


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


def encode_texts(texts: Sequence[str], spec: Mapping, device: str = "cpu", batch_size: int = 32) -> torch.Tensor:
    """[N, D] embeddings of short texts with the encoder of ``spec`` (nnunet_mulmod.text.encoders)."""
    return _encode_texts(list(texts), dict(spec), device=device, batch_size=batch_size).float().cpu()


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
