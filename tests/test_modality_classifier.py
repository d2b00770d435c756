"""Automatic modality detection: the classifier is fitted on a balanced memory of features, apart from segmentation."""
import torch

from nnunet_mulmod.modeling.modality_classifier import ModalityClassifier, stage_statistics
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

    classifier = ModalityClassifier(32, 2)
    fitter = ModalityClassifierFitter(classifier, [0, 1], capacity=128, min_per_modality=16)
    losses, fitted = [], []
    for step in range(200):
        modality = step % 2
        loss = fitter.update(batch(modality), torch.full((8,), modality))
        losses.append(loss)
        assert all(p.grad is None and not p.requires_grad for p in classifier.parameters())
        fitted.append(int(classifier.fitted))
    assert losses[0] is None and losses[-1] is not None  # waits until both modalities have 16 entries
    first_fit = next(i for i, loss in enumerate(losses) if loss is not None)
    assert set(fitted[:first_fit]) == {0} and set(fitted[first_fit:]) == {1}  # detection refuses until then
    test_x = torch.cat([batch(0) for _ in range(20)] + [batch(1) for _ in range(20)])
    test_y = torch.tensor([0] * 160 + [1] * 160)
    accuracy = (classifier(test_x).argmax(1) == test_y).float().mean().item()
    assert accuracy > 0.9
    # the decision does not depend on which modality came last
    assert (classifier(batch(0)).argmax(1) == 0).float().mean() > 0.8


def test_stage_statistics_are_mean_and_std_of_every_stage_without_autograd():
    stages = [torch.randn(2, 3, 8, 8, requires_grad=True), torch.randn(2, 5, 4, 4, requires_grad=True)]
    features = stage_statistics(stages)
    assert features.shape == (2, 2 * (3 + 5)) and not features.requires_grad
    assert torch.allclose(features[:, :3], stages[0].flatten(2).mean(2))
    assert torch.allclose(features[:, 3:6], stages[0].flatten(2).std(2))
    assert torch.allclose(features[:, 11:], stages[1].flatten(2).std(2))


def test_stage_statistics_of_fp16_maps_are_float32_and_do_not_overflow_or_cancel():
    """Under autocast the stage maps are fp16; a 3d-sized first stage (here 262,144 voxels per channel, whose
    squared deviations sum to ~1e6, beyond fp16's 65504) of a map far from zero: float32 statistics that match a
    float64 reference."""
    stage = (torch.randn(2, 3, 64, 64, 64, dtype=torch.float64) * 2.0 + 100.0)
    features = stage_statistics([stage.half()])
    assert features.dtype == torch.float32 and torch.isfinite(features).all()
    assert torch.allclose(features[:, :3].double(), stage.flatten(2).mean(2), rtol=1e-3)
    assert torch.allclose(features[:, 3:].double(), stage.flatten(2).std(2), rtol=2e-2)


def test_standardised_classifier_separates_modalities_that_differ_in_texture_not_in_mean():
    """z-scored CT and MR patches have the same mean and std per image; they differ in how the variation is
    spread over scales. A large-scale offset of a huge feature (as raw stage statistics have) must not drown a
    small but consistent texture difference: the fitter standardises its input."""
    torch.manual_seed(0)

    def features(modality, n=8):
        f = torch.randn(n, 16)
        f[:, 0] = 1000.0 + 100.0 * torch.randn(n)            # a large nuisance statistic, the same for both
        f[:, 5] += 0.8 if modality else -0.8                  # the small texture cue
        return f

    classifier = ModalityClassifier(16, 2)
    fitter = ModalityClassifierFitter(classifier, [0, 1], capacity=256, min_per_modality=16, lr=1e-2)
    for step in range(300):
        fitter.update(features(step % 2), torch.full((8,), step % 2))
    test_y = torch.tensor([0] * 200 + [1] * 200)
    test_x = torch.cat([features(0, 200), features(1, 200)])
    with torch.no_grad():
        accuracy = (classifier(test_x).argmax(1) == test_y).float().mean().item()
    assert accuracy > 0.75
    assert torch.allclose(classifier.feature_mean[0], torch.tensor(1000.0), rtol=0.05)
