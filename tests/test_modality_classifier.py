"""Automatic modality detection: the classifier is fitted on a balanced memory of features, apart from segmentation."""
import torch
from torch import nn

from nnunet_mulmod.training.modality_classifier import ModalityClassifierFitter, ModalityFeatureMemory


def test_memory_keeps_the_latest_entries_of_each_modality_and_balances_them():
    memory = ModalityFeatureMemory([0, 1], capacity=4)
    memory.add(torch.arange(6.0)[:, None], torch.zeros(6, dtype=torch.long))       # CT 0..5: keeps 2..5
    memory.add(torch.tensor([[10.0], [11.0]]), torch.ones(2, dtype=torch.long))    # MR 10, 11
    memory.add(torch.tensor([[7.0]]), torch.full((1,), 2))                         # a modality not trained: ignored
    assert (memory.count(0), memory.count(1)) == (4, 2)
    x, y = memory.balanced()
    assert y.tolist() == [0, 0, 1, 1] and sorted(x[:2, 0].tolist()) == [4.0, 5.0] and x[2:, 0].tolist() == [10.0, 11.0]


def test_fitter_learns_the_images_modality_from_alternating_single_modality_batches():
    """ALT feeds one modality per step; fitted on the balanced memory the classifier separates the two feature
    distributions, whichever modality came last."""
    torch.manual_seed(0)
    direction = torch.randn(32)

    def batch(modality):  # two overlapping but separable clouds
        return torch.randn(8, 32) + (1.5 if modality else -1.5) * direction / direction.norm()

    classifier = nn.Linear(32, 2)
    classifier.requires_grad_(False)
    fitter = ModalityClassifierFitter(classifier, [0, 1], capacity=128, min_per_modality=16)
    losses = []
    for step in range(200):
        modality = step % 2
        loss = fitter.update(batch(modality), torch.full((8,), modality))
        losses.append(loss)
        assert all(p.grad is None and not p.requires_grad for p in classifier.parameters())
    assert losses[0] is None and losses[-1] is not None  # waits until both modalities have 16 entries
    test_x = torch.cat([batch(0) for _ in range(20)] + [batch(1) for _ in range(20)])
    test_y = torch.tensor([0] * 160 + [1] * 160)
    accuracy = (classifier(test_x).argmax(1) == test_y).float().mean().item()
    assert accuracy > 0.9
    # the decision does not depend on which modality came last
    assert (classifier(batch(0)).argmax(1) == 0).float().mean() > 0.8
