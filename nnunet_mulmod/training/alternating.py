"""ALT (alternating training): one single-modality batch stream per modality, consumed round-robin.

nnU-Net's loaders draw cases at random with replacement, so every stream is endless: the smaller
modality simply keeps being sampled ("cycled") while the larger one is. Each stream is its own
nnU-Net augmenter (with its own worker processes), because batches coming back from several workers of
one loader arrive in no fixed order: only separate streams guarantee that batch i is from modality
i mod M.

The position is plain state derived from the global step (epoch * iterations_per_epoch + i): the
trainer sets it at the start of every epoch, so a resumed run (``--c``) continues the alternation
exactly where the checkpointed epoch ended, and all DDP ranks alternate in lockstep.
"""
from __future__ import annotations

from typing import List, Sequence


class AlternatingModalityLoader:
    def __init__(self, streams: Sequence, modality_indices: Sequence[int], position: int = 0):
        if len(streams) != len(modality_indices) or not streams:
            raise ValueError("need one stream per modality")
        self.streams: List = list(streams)
        self.modality_indices: List[int] = list(modality_indices)
        self.position = position

    def next_modality(self) -> int:
        return self.modality_indices[self.position % len(self.streams)]

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        slot = self.position % len(self.streams)
        batch = next(self.streams[slot])
        batch["modality"] = self.modality_indices[slot]
        self.position += 1
        return batch

    def _finish(self):
        for stream in self.streams:
            if hasattr(stream, "_finish"):
                stream._finish()
