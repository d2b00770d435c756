"""ALT (alternating training): one single-modality batch stream per modality, consumed round-robin.

By default every modality gets the same share of the steps (the paper's ALT). With ``weights`` (e.g. the
number of training cases per modality: case-proportional ALT) the streams follow a fixed, evenly spread
pattern in which stream i appears weights[i] times per period, so a modality with 64 % of the cases gets
64 % of the steps, as it would in nnU-Net's mixed batches, while each batch stays single-modality.

nnU-Net's loaders draw cases at random with replacement, so every stream is endless: the smaller
modality simply keeps being sampled ("cycled") while the larger one is. Each stream is its own
nnU-Net augmenter (with its own worker processes), because batches coming back from several workers of
one loader arrive in no fixed order: only separate streams guarantee that batch i is from modality
i mod M.

The position is plain state derived from the global step (epoch * iterations_per_epoch + i): the
trainer sets it at the start of every epoch, so a resumed run (``--c``) continues the alternation
exactly where the checkpointed epoch ended, and all DDP ranks alternate in lockstep.

The streams are made by nnU-Net's own data-loader setup (:func:`per_modality_dataloaders`), so an nnU-Net
upgrade brings its changes to ALT's loaders too.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from typing import Callable, List, Optional, Sequence, Tuple

N_PROC_DA_ENV = "nnUNet_n_proc_DA"  # read by nnU-Net's get_allowed_n_proc_DA at every call


def weighted_pattern(weights: Sequence[int]) -> List[int]:
    """One period of an evenly spread schedule: stream i appears weights[i] / gcd times.

    Smooth weighted round-robin: each slot goes to the stream furthest behind its share, so the streams
    interleave (16:9 gives 0 1 0 0 1 0 1 0 0 1 ..., never long single-modality runs). Equal weights give
    plain round-robin (0 1 2 ...).
    """
    if not weights or any(int(w) != w or w < 1 for w in weights):
        raise ValueError(f"ALT weights must be positive integers, one per stream; got {list(weights)}")
    divisor = math.gcd(*[int(w) for w in weights])
    weights = [int(w) // divisor for w in weights]
    current, pattern = [0] * len(weights), []
    for _ in range(sum(weights)):
        current = [c + w for c, w in zip(current, weights)]
        slot = max(range(len(weights)), key=lambda i: (current[i], -i))
        current[slot] -= sum(weights)
        pattern.append(slot)
    return pattern


class AlternatingModalityLoader:
    def __init__(self, streams: Sequence, modality_indices: Sequence[int], position: int = 0,
                 weights: Optional[Sequence[int]] = None):
        if len(streams) != len(modality_indices) or not streams:
            raise ValueError("need one stream per modality")
        if weights is not None and len(weights) != len(streams):
            raise ValueError(f"need one ALT weight per stream; got {len(weights)} for {len(streams)} streams")
        self.streams: List = list(streams)
        self.modality_indices: List[int] = list(modality_indices)
        self.pattern: List[int] = weighted_pattern(weights) if weights is not None else list(range(len(streams)))
        self.position = position

    def _slot(self) -> int:
        return self.pattern[self.position % len(self.pattern)]

    def next_modality(self) -> int:
        return self.modality_indices[self._slot()]

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        slot = self._slot()
        batch = next(self.streams[slot])
        batch["modality"] = self.modality_indices[slot]
        self.position += 1
        return batch

    def _finish(self):
        for stream in self.streams:
            if hasattr(stream, "_finish"):
                stream._finish()


@contextmanager
def _restricted(trainer, tr_keys: Sequence[str], val_keys: Sequence[str], n_proc_da: int):
    """While inside: ``trainer.do_split()`` gives these keys, nnU-Net's augmenters get ``n_proc_da`` workers."""
    saved_env = os.environ.get(N_PROC_DA_ENV)
    trainer.do_split = lambda: (list(tr_keys), list(val_keys))  # shadows the class's method on this instance
    os.environ[N_PROC_DA_ENV] = str(n_proc_da)
    try:
        yield
    finally:
        del trainer.do_split
        if saved_env is None:
            os.environ.pop(N_PROC_DA_ENV, None)
        else:
            os.environ[N_PROC_DA_ENV] = saved_env


def per_modality_dataloaders(get_dataloaders: Callable[[], Tuple[object, object]], trainer,
                             keys_per_modality: Sequence[Sequence[str]], val_keys: Sequence[str]) -> Tuple[list, object]:
    """One training stream per modality and one validation loader, made by nnU-Net's ``get_dataloaders`` itself.

    ``get_dataloaders``: the trainer's inherited nnU-Net method (``super().get_dataloaders``), called once per
    modality with ``do_split`` restricted to that modality's training cases (transforms, patch sizes,
    oversampling, dataset class and augmenters all nnU-Net's). nnU-Net's augmentation workers are shared out over
    the streams. nnU-Net makes a validation loader in every call: the first one is kept, the others are stopped.
    """
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

    n_proc = get_allowed_n_proc_DA()
    per_stream = max(1, n_proc // len(keys_per_modality)) if n_proc > 0 else 0
    streams, val = [], None
    for keys in keys_per_modality:
        with _restricted(trainer, keys, val_keys, per_stream):
            train_stream, val_loader = get_dataloaders()
        streams.append(train_stream)
        if val is None:
            val = val_loader
        elif hasattr(val_loader, "_finish"):
            val_loader._finish()
    return streams, val
