"""Segmentation metrics for one case: Dice, IoU, HD95, ASSD (millimetres) and relative volume difference.

Plain numpy/scipy on label maps in nnU-Net's array layout (the arrays its reader/writers return, with
``properties['spacing']`` in the same axis order). Everything here is import-light (no torch, no
nnunetv2) because it runs in spawned worker processes.

Conventions (also in docs/evaluation.md)
- Labels and regions are nnU-Net's: an int label, or a region = tuple of labels (voxels with any of them).
- Voxels whose reference value is the ignore label are left out of every count, as nnU-Net does.
- Dice and IoU are NaN when reference and prediction are both empty (nnU-Net's convention); 0 when
  exactly one is empty.
- RVD = (|pred| - |ref|) / |ref| (signed: > 0 over-segments); NaN when the reference is empty.
- Surface = object voxels with at least one face neighbour (6-connectivity in 3D, 4 in 2D) outside the
  object; the image outside the volume counts as background, so an object touching the border has a
  surface there. Distances are Euclidean between voxel centres, in mm (spacing-aware), from each
  surface voxel of one mask to the nearest surface voxel of the other.
- HD95 = max of the two directed 95th percentiles (ref->pred, pred->ref), as in MONAI and Metrics
  Reloaded. ASSD = mean of all distances of both directions pooled.
- HD95 and ASSD are NaN when either mask is empty (a distance to nothing is undefined).
- Axes of length 1 (2D data in nnU-Net's (1, y, x) layout, whose dummy spacing is 999) are dropped
  before surfaces are computed.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage

LabelOrRegion = Union[int, Tuple[int, ...]]

OVERLAP_METRICS = ("Dice", "IoU", "RVD")
SURFACE_METRICS = ("HD95", "ASSD")
COUNT_METRICS = ("FP", "TP", "FN", "TN", "n_pred", "n_ref")
# Which direction is better, for reports and comparisons.
HIGHER_IS_BETTER = {"Dice": True, "IoU": True, "HD95": False, "ASSD": False, "RVD": None}

# bincount needs an int64 copy of its input: process big volumes in slabs of this many voxels.
_CONFUSION_CHUNK = 1 << 24


class LabelValueError(ValueError):
    """A label map holds values that are not in the dataset's label set."""

    def __init__(self, which: str, values: Sequence[int]):
        self.which = which
        self.values = [int(v) if float(v).is_integer() else float(v) for v in values]
        super().__init__(f"{which} contains label values {self.values} that are not in the dataset's label set")

    def __reduce__(self):  # keeps the exception picklable across worker processes
        return self.__class__, (self.which, self.values)


def confusion_matrix(reference: np.ndarray, prediction: np.ndarray, n_values: int) -> np.ndarray:
    """counts[r, p] = number of voxels with reference value r and predicted value p (r, p < n_values).

    One pass over the data for all labels at once (nnU-Net makes four boolean passes per label).
    Values must already be known to lie in [0, n_values).
    """
    ref = reference.ravel()
    pred = prediction.ravel()
    counts = np.zeros(n_values * n_values, dtype=np.int64)
    for start in range(0, ref.size, _CONFUSION_CHUNK):
        r = ref[start:start + _CONFUSION_CHUNK].astype(np.int64)
        r *= n_values
        r += pred[start:start + _CONFUSION_CHUNK]
        counts += np.bincount(r, minlength=n_values * n_values)
    return counts.reshape(n_values, n_values)


def as_label_map(segmentation: np.ndarray, which: str) -> np.ndarray:
    """Integer copy of a label map (nnU-Net's readers return float32); non-integral values are an error."""
    if np.issubdtype(segmentation.dtype, np.integer):
        return segmentation
    lo, hi = segmentation.min(), segmentation.max()
    # the smallest type that holds the values: cheaper copies and confusion-matrix passes
    dtype = np.uint8 if lo >= 0 and hi <= 255 else np.int16 if -2 ** 15 <= lo and hi < 2 ** 15 else np.int64
    labels = segmentation.astype(dtype)
    if not np.array_equal(labels, segmentation):
        bad = np.unique(segmentation[labels != segmentation])[:10]
        raise LabelValueError(which, bad)
    return labels


def check_label_values(reference: np.ndarray, prediction: np.ndarray, allowed_values: Sequence[int]) -> int:
    """Raises LabelValueError naming the offending values; returns n_values for confusion_matrix."""
    allowed = sorted(set(int(v) for v in allowed_values))
    for which, arr in (("reference", reference), ("prediction", prediction)):
        lo, hi = arr.min(), arr.max()
        if lo < 0 or hi > allowed[-1]:
            bad = np.unique(arr[(arr < 0) | (arr > allowed[-1])])
            raise LabelValueError(which, bad[:20])
    n_values = allowed[-1] + 1
    missing = [v for v in range(n_values) if v not in allowed]
    if missing:  # rare: gaps inside the label range (nnU-Net wants consecutive labels)
        for which, arr in (("reference", reference), ("prediction", prediction)):
            present = np.isin(missing, arr)
            if present.any():
                raise LabelValueError(which, np.asarray(missing)[present])
    return n_values


def counts_from_confusion(confusion: np.ndarray, label_or_region: LabelOrRegion,
                          ignore_label: Optional[int] = None) -> Tuple[int, int, int, int]:
    """TP, FP, FN, TN of one label or region, excluding voxels whose reference is the ignore label."""
    n = confusion.shape[0]
    members = np.zeros(n, dtype=bool)
    members[list(np.atleast_1d(label_or_region))] = True
    counted_rows = np.ones(n, dtype=bool)
    if ignore_label is not None and ignore_label < n:
        counted_rows[ignore_label] = False
    tp = int(confusion[np.ix_(members & counted_rows, members)].sum())
    fp = int(confusion[np.ix_(~members & counted_rows, members)].sum())
    fn = int(confusion[np.ix_(members & counted_rows, ~members)].sum())
    total = int(confusion[counted_rows].sum())
    return tp, fp, fn, total - tp - fp - fn


def overlap_metrics(tp: int, fp: int, fn: int) -> Dict[str, float]:
    if tp + fp + fn == 0:
        dice = iou = np.nan
    else:
        dice = 2 * tp / (2 * tp + fp + fn)
        iou = tp / (tp + fp + fn)
    n_ref = tp + fn
    rvd = (tp + fp - n_ref) / n_ref if n_ref > 0 else np.nan
    return {"Dice": dice, "IoU": iou, "RVD": rvd}


def _surface(mask: np.ndarray) -> np.ndarray:
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(mask_ref: np.ndarray, mask_pred: np.ndarray, spacing: Sequence[float]
                      ) -> Tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: (ref surface -> pred surface, pred surface -> ref surface).

    Both masks must be non-empty. Works on the bounding box of both masks plus one voxel: every
    surface voxel lies inside it, so the distance transform there is exact and much cheaper.
    """
    keep_axes = [a for a in range(mask_ref.ndim) if mask_ref.shape[a] > 1]
    if len(keep_axes) < mask_ref.ndim:
        mask_ref = mask_ref.reshape([mask_ref.shape[a] for a in keep_axes])
        mask_pred = mask_pred.reshape([mask_pred.shape[a] for a in keep_axes])
        spacing = [spacing[a] for a in keep_axes]
    union = mask_ref | mask_pred
    box = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        nonzero = np.flatnonzero(union.any(axis=other))
        box.append(slice(max(nonzero[0] - 1, 0), min(nonzero[-1] + 2, union.shape[axis])))
    box = tuple(box)
    surface_ref = _surface(mask_ref[box])
    surface_pred = _surface(mask_pred[box])
    distance_to_pred = ndimage.distance_transform_edt(~surface_pred, sampling=spacing)
    distance_to_ref = ndimage.distance_transform_edt(~surface_ref, sampling=spacing)
    return distance_to_pred[surface_ref], distance_to_ref[surface_pred]


def surface_metrics(mask_ref: np.ndarray, mask_pred: np.ndarray, spacing: Sequence[float]) -> Dict[str, float]:
    if not mask_ref.any() or not mask_pred.any():
        return {"HD95": np.nan, "ASSD": np.nan}
    ref_to_pred, pred_to_ref = surface_distances(mask_ref, mask_pred, spacing)
    hd95 = max(np.percentile(ref_to_pred, 95), np.percentile(pred_to_ref, 95))
    assd = (ref_to_pred.sum() + pred_to_ref.sum()) / (ref_to_pred.size + pred_to_ref.size)
    return {"HD95": float(hd95), "ASSD": float(assd)}


def _union_box(boxes, values, shape) -> Tuple[slice, ...]:
    """Bounding box of the given label values in reference and prediction, grown by one voxel (clipped at the
    image border, so that the crop keeps the 'outside the image is background' rule of the surface)."""
    lo, hi = np.array(shape), np.zeros(len(shape), dtype=int)
    for per_label in boxes:
        for v in values:
            if 0 < v <= len(per_label) and per_label[v - 1] is not None:
                box = per_label[v - 1]
                lo = np.minimum(lo, [b.start for b in box])
                hi = np.maximum(hi, [b.stop for b in box])
    return tuple(slice(max(int(a) - 1, 0), min(int(b) + 1, n)) for a, b, n in zip(lo, hi, shape))


def _mask(segmentation: np.ndarray, label_or_region: LabelOrRegion) -> np.ndarray:
    if np.isscalar(label_or_region):
        return segmentation == label_or_region
    return np.isin(segmentation, label_or_region)


def compute_case_metrics(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float],
                         labels_or_regions: List[LabelOrRegion], allowed_values: Sequence[int],
                         ignore_label: Optional[int] = None, with_surface: bool = True
                         ) -> Dict[LabelOrRegion, Dict[str, float]]:
    """Metrics per label/region for one case, keyed like nnU-Net's compute_metrics ('Dice', 'IoU', 'FP',
    'TP', 'FN', 'TN', 'n_pred', 'n_ref') plus 'RVD' and, with_surface, 'HD95' and 'ASSD'.

    Surface distances ignore the ignore label (voxels labelled ignore in the reference are removed
    from the predicted mask first), matching the overlap counts.
    """
    n_values = check_label_values(reference, prediction, allowed_values)
    confusion = confusion_matrix(reference, prediction, n_values)
    if with_surface:
        # one pass each for the bounding boxes of all labels: the masks are then built on small crops only
        boxes = (ndimage.find_objects(reference, max_label=n_values - 1),
                 ndimage.find_objects(prediction, max_label=n_values - 1))
    results = {}
    for r in labels_or_regions:
        tp, fp, fn, tn = counts_from_confusion(confusion, r, ignore_label)
        metrics = overlap_metrics(tp, fp, fn)
        if with_surface:
            if tp + fn == 0 or tp + fp == 0:
                metrics.update({"HD95": np.nan, "ASSD": np.nan})
            else:
                crop = _union_box(boxes, np.atleast_1d(r), reference.shape)
                ref_crop = reference[crop]
                mask_pred = _mask(prediction[crop], r)
                if ignore_label is not None:
                    mask_pred &= ref_crop != ignore_label
                metrics.update(surface_metrics(_mask(ref_crop, r), mask_pred, spacing))
        metrics.update({"FP": fp, "TP": tp, "FN": fn, "TN": tn, "n_pred": fp + tp, "n_ref": fn + tp})
        results[r] = metrics
    return results
