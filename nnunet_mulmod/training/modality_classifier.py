"""Fitting MulModSegNet's modality classifier (automatic modality detection) on balanced evidence.

Under ALT every batch holds one modality. A classifier trained online on those batches, with the
segmentation optimizer's 0.99 momentum, learns "the modality of the last batch" rather than the images'
modality: measured on the real CT/MR dev set it was at 0.11-0.59 accuracy on validation patches for 20
epochs. Here it is fitted apart from the segmentation:

- :class:`ModalityFeatureMemory` keeps the most recent classifier features (the encoder stages' texture
  statistics, ``nnunet_mulmod/modeling/modality_classifier.py``) of every modality
  (detached; ``capacity`` vectors each). The encoder changes while it trains, so only recent features are
  kept.
- :class:`ModalityClassifierFitter` takes one step of its own Adam optimizer per training step on an equal
  number of memory entries from every modality, once every modality has ``min_per_modality`` of them, after
  standardising the classifier's input with those entries' statistics. The classifier's parameters do not
  require grad outside that step, so nnU-Net's optimizer, gradient clipping and DDP never touch them.

Shapes: features [N, F], modality indices [N] (long).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from nnunet_mulmod.modeling.modality_classifier import ModalityClassifier


class ModalityFeatureMemory:
    """The last ``capacity`` feature vectors of every modality of ``modalities`` (indices; a ring buffer each).
    Features of other modalities are ignored (a vocabulary entry with no training case cannot be learnt)."""

    def __init__(self, modalities: Sequence[int], capacity: int = 512):
        self.modalities: List[int] = sorted(int(m) for m in modalities)
        self.capacity = capacity
        self._buffers: Dict[int, torch.Tensor] = {}
        self._filled: Dict[int, int] = {}
        self._next: Dict[int, int] = {}

    def add(self, features: torch.Tensor, modality_indices: torch.Tensor) -> None:
        """features [N, C], modality_indices [N]."""
        features = features.detach().float()
        for m in modality_indices.unique().tolist():
            if m not in self.modalities:
                continue
            rows = features[modality_indices.to(features.device) == m][-self.capacity:]
            if m not in self._buffers:
                self._buffers[m] = features.new_zeros(self.capacity, features.shape[1])
                self._filled[m], self._next[m] = 0, 0
            positions = (self._next[m] + torch.arange(len(rows))) % self.capacity
            self._buffers[m][positions.to(features.device)] = rows
            self._next[m] = int((self._next[m] + len(rows)) % self.capacity)
            self._filled[m] = min(self.capacity, self._filled[m] + len(rows))

    def count(self, modality: int) -> int:
        return self._filled.get(modality, 0)

    def balanced(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The same number of entries of every modality: (features [M*n, C], labels [M*n]); n = the smallest count."""
        n = min(self.count(m) for m in self.modalities)
        if n == 0:
            return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
        features = [self._buffers[m][:self._filled[m]][-n:] for m in self.modalities]
        labels = torch.tensor(self.modalities).repeat_interleave(n).to(features[0].device)
        return torch.cat(features), labels


class ModalityClassifierFitter:
    """One Adam step of the classifier per training step, on the memory's balanced entries."""

    def __init__(self, classifier: ModalityClassifier, modalities: Sequence[int], capacity: int = 512, lr: float = 1e-3,
                 min_per_modality: int = 32):
        self.classifier = classifier
        self.memory = ModalityFeatureMemory(modalities, capacity)
        self.min_per_modality = min_per_modality
        self.optimizer = torch.optim.Adam(classifier.linear.parameters(), lr=lr)

    def update(self, features: torch.Tensor, modality_indices: torch.Tensor) -> Optional[float]:
        """Adds features [N, C] of the given modalities [N]; fits once every modality has enough. Returns the loss."""
        self.memory.add(features, modality_indices)
        if any(self.memory.count(m) < self.min_per_modality for m in self.memory.modalities):
            return None
        x, y = self.memory.balanced()
        self.classifier.set_standardisation(x)
        parameters = list(self.classifier.linear.parameters())
        with torch.enable_grad():
            for p in parameters:
                p.requires_grad_(True)
            try:
                loss = F.cross_entropy(self.classifier(x), y)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
            finally:
                for p in parameters:
                    p.requires_grad_(False)
                    p.grad = None  # nnU-Net's optimizer also lists these parameters: leave it nothing to apply
        self.classifier.fitted.fill_(1)
        return float(loss.detach())
