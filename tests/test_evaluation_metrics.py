"""Metric values against hand-computed cases and against nnU-Net's own implementation."""
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from nnunet_mulmod.evaluation.metrics import (LabelValueError, as_label_map, compute_case_metrics, confusion_matrix,
                                counts_from_confusion, surface_distances, surface_metrics)


def cube(shape, start, size):
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + size) for s in start)] = True
    return mask


def test_dice_iou_rvd_of_cubes_offset_by_one_voxel():
    # two 4^3 cubes, offset by 1 voxel: overlap 3*4*4 = 48 voxels of 64 each
    ref = cube((12, 12, 12), (2, 2, 2), 4).astype(np.uint8)
    pred = cube((12, 12, 12), (3, 2, 2), 4).astype(np.uint8)
    m = compute_case_metrics(ref, pred, (1, 1, 1), [1], [0, 1], with_surface=False)[1]
    assert m["TP"] == 48 and m["FP"] == 16 and m["FN"] == 16 and m["TN"] == 12 ** 3 - 80
    assert m["Dice"] == pytest.approx(2 * 48 / 128) and m["IoU"] == pytest.approx(48 / 80)
    assert m["RVD"] == 0


def test_rvd_is_signed_relative_volume_difference():
    ref = cube((10, 10, 10), (0, 0, 0), 2).astype(np.uint8)  # 8 voxels
    pred = np.zeros_like(ref)
    pred[0:2, 0:2, 0:4] = 1  # 16 voxels containing ref
    assert compute_case_metrics(ref, pred, (1, 1, 1), [1], [0, 1], with_surface=False)[1]["RVD"] == pytest.approx(1.0)
    assert compute_case_metrics(pred, ref, (1, 1, 1), [1], [0, 1], with_surface=False)[1]["RVD"] == pytest.approx(-0.5)


@pytest.mark.parametrize("axis, spacing", [(0, (2.5, 1.0, 0.7)), (2, (2.5, 1.0, 0.7)), (1, (0.5, 3.0, 1.0))])
def test_surface_distances_of_disjoint_cubes_with_anisotropic_spacing(axis, spacing):
    # 3^3 cubes, 5 voxels apart along `axis`. Every surface voxel's nearest surface voxel of the other cube lies
    # straight along `axis` on its facing side: the layers are 5, 4, 3 voxels away, holding 9, 8 (the centre
    # voxel is interior), 9 surface voxels. ASSD = (9*5 + 8*4 + 9*3) / 26 = 4 voxels; HD95 = 5 voxels.
    start_pred = [4, 4, 4]
    start_pred[axis] += 5
    ref = cube((16, 16, 16), (4, 4, 4), 3)
    pred = cube((16, 16, 16), start_pred, 3)
    ref_to_pred, pred_to_ref = surface_distances(ref, pred, spacing)
    s = spacing[axis]
    assert sorted(ref_to_pred) == pytest.approx(sorted([3 * s] * 9 + [4 * s] * 8 + [5 * s] * 9))
    m = surface_metrics(ref, pred, spacing)
    assert m["HD95"] == pytest.approx(5 * s) and m["ASSD"] == pytest.approx(4 * s)


def test_surface_distance_between_parallel_planes():
    ref = np.zeros((10, 8, 8), dtype=bool)
    pred = np.zeros_like(ref)
    ref[3, 2:6, 2:6] = True
    pred[5, 2:6, 2:6] = True
    m = surface_metrics(ref, pred, (3.0, 0.5, 0.5))
    assert m == pytest.approx({"HD95": 6.0, "ASSD": 6.0})


def test_identical_masks_touching_the_border_have_zero_distance():
    mask = np.zeros((6, 6, 6), dtype=bool)
    mask[:, :3, :] = True  # touches 5 faces of the volume: its surface is there, not missing
    assert surface_metrics(mask, mask, (1, 2, 3)) == {"HD95": 0.0, "ASSD": 0.0}


def brute_force_surface_distances(a, b, spacing):
    """Independent implementation: surface by explicit 6-neighbour test on a padded copy, all-pairs distances."""
    def surface_points(mask):
        padded = np.pad(mask, 1)
        interior = padded.copy()
        for axis in range(mask.ndim):
            interior &= np.roll(padded, 1, axis) & np.roll(padded, -1, axis)
        return np.argwhere((padded & ~interior)[1:-1, 1:-1, 1:-1]) * np.asarray(spacing)
    pa, pb = surface_points(a), surface_points(b)
    d = cdist(pa, pb)
    return d.min(1), d.min(0)


def test_surface_distances_match_brute_force_on_random_blobs():
    rng = np.random.default_rng(3)
    from scipy import ndimage
    for _ in range(3):
        a = ndimage.binary_opening(rng.random((14, 16, 18)) > 0.55, iterations=1)
        b = ndimage.binary_opening(rng.random((14, 16, 18)) > 0.55, iterations=1)
        spacing = tuple(rng.uniform(0.5, 3.0, 3))
        fast = surface_distances(a, b, spacing)
        slow = brute_force_surface_distances(a, b, spacing)
        assert np.sort(fast[0]) == pytest.approx(np.sort(slow[0]))
        assert np.sort(fast[1]) == pytest.approx(np.sort(slow[1]))
        m = surface_metrics(a, b, spacing)
        assert m["HD95"] == pytest.approx(max(np.percentile(slow[0], 95), np.percentile(slow[1], 95)))
        assert m["ASSD"] == pytest.approx(np.concatenate(slow).mean())


def test_2d_data_in_nnunet_layout_ignores_the_dummy_axis():
    # nnU-Net stores 2D images as (1, y, x) with spacing 999 on the dummy axis
    ref = np.zeros((1, 10, 10), dtype=np.uint8)
    pred = np.zeros_like(ref)
    ref[0, 2:4, 2:4] = 1
    pred[0, 2:4, 5:7] = 1  # 3 pixels to the right
    m = compute_case_metrics(ref, pred, (999.0, 0.5, 2.0), [1], [0, 1])[1]
    # nearest pixels: columns 3->5 (2 px) and 2->5 (3 px) at 2 mm each
    assert m["HD95"] == pytest.approx(6.0) and m["ASSD"] == pytest.approx(5.0)


def test_empty_structure_conventions():
    empty = np.zeros((6, 6, 6), dtype=np.uint8)
    full = cube((6, 6, 6), (1, 1, 1), 2).astype(np.uint8)
    both_empty = compute_case_metrics(empty, empty, (1, 1, 1), [1], [0, 1])[1]
    assert all(np.isnan(both_empty[k]) for k in ("Dice", "IoU", "HD95", "ASSD", "RVD"))
    false_positive = compute_case_metrics(empty, full, (1, 1, 1), [1], [0, 1])[1]
    assert false_positive["Dice"] == 0 and false_positive["IoU"] == 0
    assert np.isnan(false_positive["HD95"]) and np.isnan(false_positive["RVD"])
    missed = compute_case_metrics(full, empty, (1, 1, 1), [1], [0, 1])[1]
    assert missed["Dice"] == 0 and np.isnan(missed["ASSD"]) and missed["RVD"] == -1


def test_counts_match_nnunet_including_ignore_label_and_regions():
    from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn, region_or_label_to_mask
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 5, (9, 11, 13))  # 4 = ignore label
    pred = rng.integers(0, 4, (9, 11, 13))
    confusion = confusion_matrix(ref, pred, 5)
    for r in [1, 2, 3, (1, 2), (2, 3)]:
        expected = compute_tp_fp_fn_tn(region_or_label_to_mask(ref, r), region_or_label_to_mask(pred, r), ref == 4)
        assert counts_from_confusion(confusion, r, ignore_label=4) == tuple(int(v) for v in expected)


def test_label_values_outside_the_label_set_are_named():
    ref = np.zeros((4, 4, 4), dtype=np.uint8)
    pred = ref.copy()
    pred[0, 0, :2] = 7
    with pytest.raises(LabelValueError) as e:
        compute_case_metrics(ref, pred, (1, 1, 1), [1, 2], [0, 1, 2])
    assert e.value.which == "prediction" and e.value.values == [7]
    with pytest.raises(LabelValueError) as e:
        as_label_map(np.array([0.0, 0.5, 1.0]), "prediction")
    assert e.value.values == [0.5]  # a probability map is not a label map
