"""Evaluate a folder of predictions against references: per case, per class and per modality.

Writes a summary.json that nnU-Net's own tools read (same keys as
``nnunetv2.evaluation.evaluate_predictions.compute_metrics_on_folder``; ``load_summary_json`` works on it)
with extra per-label metrics (RVD, HD95, ASSD), a modality per case, a ``per_modality`` section and an
``nnunet_mulmod`` section recording how it was made. Metric conventions: evaluation/metrics.py.

Python API::

    from nnunet_mulmod.evaluation.evaluate_folder import evaluate_folder
    summary = evaluate_folder("labelsTs", "predictions", "dataset.json", num_processes=4)
    summary["per_modality"]["MR"]["foreground_mean"]["Dice"]

CLI: ``nnunet_mulmod_evaluate REF_FOLDER PRED_FOLDER -djfile dataset.json [-o summary.json] [-np 8]
[--dice_only] [--missing_as_empty | --chill]`` (see docs/evaluation.md).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import warnings
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from tqdm import tqdm

from .metrics import (LabelOrRegion, LabelValueError, as_label_map, compute_case_metrics)
from nnunet_mulmod.modality import lookup_case_modality

# nnU-Net's default (8, or the nnUNet_def_n_proc environment variable), without importing nnunetv2.configuration
DEFAULT_NUM_PROCESSES = int(os.environ.get("nnUNet_def_n_proc", 8))
UNTAGGED_MODALITY = "untagged"
MISSING_POLICIES = ("error", "empty", "skip")


class EvaluationError(ValueError):
    """Bad input for an evaluation. The message names the case/file and the fix."""


# ----------------------------------------------------------------------------------------------------------------------
# dataset.json and files
# ----------------------------------------------------------------------------------------------------------------------
def load_dataset_json(dataset_json: Union[str, Mapping]) -> dict:
    if isinstance(dataset_json, Mapping):
        return dict(dataset_json)
    if not os.path.isfile(dataset_json):
        raise EvaluationError(f"dataset.json not found: {dataset_json}. Pass the dataset's dataset.json "
                              f"(nnUNet_raw/DatasetXXX_Name/dataset.json) with -djfile.")
    with open(dataset_json) as f:
        return json.load(f)


def label_key(label_or_region: LabelOrRegion) -> str:
    """nnU-Net's summary.json key of a label (``'1'``) or region (``'(1, 2)'``)."""
    return str(label_or_region)


def labels_from_dataset_json(dataset_json: Mapping) -> Tuple[List[LabelOrRegion], Optional[int], List[int],
                                                             Dict[str, str]]:
    """What nnU-Net evaluates, with the same rules as its LabelManager (which we do not import: it pulls in
    torch): foreground labels, or foreground regions when any label is a region.

    Returns (labels_or_regions, ignore_label, allowed_values, names) where allowed_values are all values a
    label map may contain and names maps the summary.json key to the label's name.
    """
    if "labels" not in dataset_json or "background" not in dataset_json["labels"]:
        raise EvaluationError("dataset.json has no 'labels' map with a 'background' entry; is it an nnU-Net v2 "
                              "dataset.json?")
    labels = dataset_json["labels"]
    ignore_label = labels.get("ignore")
    has_regions = any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values())
    allowed, evaluated, names = set(), [], {}
    for name, value in labels.items():
        values = [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
        allowed.update(values)
        if name in ("ignore", "background") or set(values) == {0}:
            continue
        key = tuple(values) if has_regions else values[0]
        evaluated.append(key)
        names[label_key(key)] = name
    if not has_regions:
        evaluated.sort()
    return evaluated, ignore_label, sorted(allowed), names


def list_cases(folder: str, file_ending: str) -> Dict[str, str]:
    """case id -> file, for the files of ``folder`` ending in ``file_ending`` (nnU-Net's seg file naming)."""
    if not os.path.isdir(folder):
        raise EvaluationError(f"Folder not found: {folder}")
    return {f[:-len(file_ending)]: os.path.join(folder, f) for f in sorted(os.listdir(folder))
            if f.endswith(file_ending) and not f.startswith(".") and os.path.isfile(os.path.join(folder, f))}


def reader_writer_for(dataset_json: Mapping, example_file: str, plans: Union[str, Mapping, None] = None):
    """nnU-Net's reader/writer instance: from the plans if given, else from dataset.json/file ending."""
    if plans is not None:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # imports torch: only if asked
        return PlansManager(plans).image_reader_writer_class()
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    return determine_reader_writer_from_dataset_json(dataset_json, example_file, verbose=False)()


def check_same_dataset(dataset_json: Mapping, pred_folder: str) -> None:
    """nnUNetv2_predict copies the model's dataset.json into its output folder: use it to catch predictions
    made by a model of another dataset before any metric is computed."""
    pred_dataset_json = os.path.join(pred_folder, "dataset.json")
    if not os.path.isfile(pred_dataset_json):
        return
    with open(pred_dataset_json) as f:
        theirs = json.load(f)
    if dict(theirs.get("labels", {})) != dict(dataset_json["labels"]):
        raise EvaluationError(
            f"The predictions in {pred_folder} come from a model whose dataset.json has labels "
            f"{theirs.get('labels')}, but the reference dataset.json has {dataset_json['labels']}: they belong to "
            f"another dataset (or label set). Evaluate them with that dataset's references and dataset.json (-djfile).")


# ----------------------------------------------------------------------------------------------------------------------
# one case (runs in worker processes)
# ----------------------------------------------------------------------------------------------------------------------
def _vec(values) -> str:
    return "(" + ", ".join(f"{float(v):.6g}" for v in np.ravel(values)) + ")"


def _geometry_problem(ref_props: dict, pred_props: dict, ref_shape, pred_shape) -> Optional[str]:
    # nnU-Net's readers give arrays and spacings in z, y, x; messages use the file's x, y, z order (as ITK,
    # ITK-SNAP and nibabel headers show them)
    if tuple(ref_shape) != tuple(pred_shape):
        return (f"size (x, y, z) {tuple(pred_shape)[::-1]} (prediction) vs {tuple(ref_shape)[::-1]} (reference)")
    if not np.allclose(ref_props["spacing"], pred_props["spacing"], rtol=1e-4, atol=1e-5):
        return (f"spacing (x, y, z) {_vec(list(pred_props['spacing'])[::-1])} (prediction) vs "
                f"{_vec(list(ref_props['spacing'])[::-1])} (reference)")
    a, b = ref_props.get("sitk_stuff"), pred_props.get("sitk_stuff")
    if a is not None and b is not None:
        if not np.allclose(a["origin"], b["origin"], atol=1e-3):
            return f"origin {_vec(b['origin'])} (prediction) vs {_vec(a['origin'])} (reference)"
        if not np.allclose(a["direction"], b["direction"], atol=1e-4):
            return f"direction {_vec(b['direction'])} (prediction) vs {_vec(a['direction'])} (reference)"
    a, b = ref_props.get("nibabel_stuff"), pred_props.get("nibabel_stuff")
    if a is not None and b is not None and not np.allclose(a["original_affine"], b["original_affine"], atol=1e-3):
        return f"affine\n{b['original_affine']} (prediction) vs\n{a['original_affine']} (reference)"
    return None


def evaluate_case(case_id: str, reference_file: str, prediction_file: Optional[str], reader_writer,
                  labels_or_regions: List[LabelOrRegion], allowed_values: Sequence[int],
                  ignore_label: Optional[int] = None, with_surface: bool = True) -> dict:
    """One entry of summary.json's metric_per_case. prediction_file None scores an empty prediction."""
    reference, ref_props = reader_writer.read_seg(reference_file)
    reference = as_label_map(reference[0], "reference")
    if prediction_file is None:
        prediction = np.zeros_like(reference)
    else:
        prediction, pred_props = reader_writer.read_seg(prediction_file)
        problem = _geometry_problem(ref_props, pred_props, reference.shape, prediction.shape[1:])
        if problem is not None:
            raise EvaluationError(
                f"Case {case_id}: prediction and reference are on different grids: {problem}.\n"
                f"  prediction: {prediction_file}\n  reference:  {reference_file}\n"
                f"Fix: predictions must be on the reference's grid. Predict from the raw images with "
                f"nnUNetv2_predict (it writes the input's geometry), or resample the prediction onto the reference "
                f"with SimpleITK (sitk.Resample(pred, ref, sitk.Transform(), sitk.sitkNearestNeighbor)).")
        prediction = as_label_map(prediction[0], "prediction")
    try:
        metrics = compute_case_metrics(reference, prediction, ref_props["spacing"], labels_or_regions,
                                       allowed_values, ignore_label, with_surface)
    except LabelValueError as e:
        culprit = prediction_file if e.which == "prediction" else reference_file
        raise EvaluationError(
            f"Case {case_id}: the {e.which} ({culprit}) contains label values {e.values} that are not in the "
            f"dataset's label set {list(allowed_values)} (dataset.json 'labels'). Fix: evaluate with the dataset.json "
            f"of the dataset these files belong to, or remap the labels "
            f"(for a model trained on another label set, convert its predictions first).") from None
    return {"case_id": case_id, "reference_file": reference_file, "prediction_file": prediction_file,
            "metrics": {label_key(k): v for k, v in metrics.items()}}


def _evaluate_case_star(args):
    return evaluate_case(*args)


# ----------------------------------------------------------------------------------------------------------------------
# aggregation
# ----------------------------------------------------------------------------------------------------------------------
def _to_builtin(value):
    if isinstance(value, dict):
        return {k: _to_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_builtin(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def aggregate(metric_per_case: List[dict], label_keys: List[str], skip_nan_classes: bool = False
              ) -> Tuple[dict, dict]:
    """nnU-Net's aggregation: 'mean' = per label, NaN-skipping mean over cases; 'foreground_mean' = mean over
    labels of those means (np.mean, so a label without any value makes it NaN, exactly as nnU-Net; with
    skip_nan_classes such labels are left out instead, used for per-modality subsets)."""
    if not metric_per_case:
        return {}, {}
    metric_names = list(metric_per_case[0]["metrics"][label_keys[0]].keys())
    mean = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # "Mean of empty slice" for all-NaN labels
        for k in label_keys:
            mean[k] = {m: float(np.nanmean([c["metrics"][k][m] for c in metric_per_case])) for m in metric_names}
        reduce = np.nanmean if skip_nan_classes else np.mean
        foreground = {m: float(reduce([mean[k][m] for k in label_keys if k != "0"])) for m in metric_names}
    return mean, foreground


def per_modality_summary(metric_per_case: List[dict], label_keys: List[str]) -> dict:
    groups: Dict[str, List[dict]] = {}
    for case in metric_per_case:
        groups.setdefault(case.get("modality") or UNTAGGED_MODALITY, []).append(case)
    section = {}
    for modality, cases in groups.items():
        mean, foreground = aggregate(cases, label_keys, skip_nan_classes=True)
        section[modality] = {"n_cases": len(cases), "case_ids": [c["case_id"] for c in cases],
                             "mean": mean, "foreground_mean": foreground}
    return section


# ----------------------------------------------------------------------------------------------------------------------
# folder
# ----------------------------------------------------------------------------------------------------------------------
def match_cases(reference_files: Dict[str, str], prediction_files: Dict[str, str], missing: str,
                ref_folder: str, pred_folder: str) -> Tuple[List[Tuple[str, str, Optional[str]]], List[str]]:
    """(case id, reference, prediction or None) triples in case order, and the case ids without prediction."""
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")
    if not reference_files:
        raise EvaluationError(f"No reference files in {ref_folder} (wrong folder or file_ending in dataset.json?)")
    extra = sorted(set(prediction_files) - set(reference_files))
    if extra and len(extra) == len(prediction_files):
        raise EvaluationError(
            f"None of the {len(prediction_files)} predictions in {pred_folder} has a reference in {ref_folder} "
            f"(e.g. {extra[:3]}). Is this a results folder from another dataset, or the wrong reference folder "
            f"(labelsTr vs labelsTs)?")
    if extra:
        raise EvaluationError(
            f"{len(extra)} prediction(s) in {pred_folder} have no reference in {ref_folder}: {_shorten(extra)}. "
            f"Remove them, or pass the reference folder that contains them.")
    without_prediction = sorted(set(reference_files) - set(prediction_files))
    if without_prediction and missing == "error":
        raise EvaluationError(
            f"{len(without_prediction)} of {len(reference_files)} reference case(s) have no prediction in "
            f"{pred_folder}: {_shorten(without_prediction)}. Predict them, or pass --missing_as_empty to score them "
            f"as empty predictions (Dice 0), or --chill to evaluate only the predicted cases.")
    if missing == "skip":
        if not prediction_files:
            raise EvaluationError(f"No predictions in {pred_folder}.")
        cases = [(c, reference_files[c], prediction_files[c]) for c in sorted(prediction_files)]
    else:
        cases = [(c, reference_files[c], prediction_files.get(c)) for c in sorted(reference_files)]
    return cases, without_prediction


def _shorten(items: Sequence[str], n: int = 20) -> str:
    return ", ".join(items[:n]) + (f" ... ({len(items)} in all)" if len(items) > n else "")


def evaluate_folder(ref_folder: str, pred_folder: str, dataset_json: Union[str, Mapping],
                    output_file: Optional[str] = None, plans: Union[str, Mapping, None] = None,
                    num_processes: int = DEFAULT_NUM_PROCESSES, surface_metrics: bool = True,
                    missing: str = "error", progress: bool = True) -> dict:
    """Evaluates every case of ``pred_folder`` against ``ref_folder``; writes summary.json if output_file.

    missing: what to do with references that have no prediction: 'error' (default; the message lists them),
    'empty' (score as an empty prediction) or 'skip' (evaluate only predicted cases, nnU-Net's --chill).
    Returns the summary in its JSON form (label keys are str, as in the file).
    """
    if output_file is not None and not output_file.endswith(".json"):
        raise EvaluationError(f"output file must end with .json, got {output_file}")
    dataset = load_dataset_json(dataset_json)
    file_ending = dataset.get("file_ending")
    if not file_ending:
        raise EvaluationError("dataset.json has no 'file_ending' (e.g. \".nii.gz\").")
    labels_or_regions, ignore_label, allowed_values, label_names = labels_from_dataset_json(dataset)
    check_same_dataset(dataset, pred_folder)
    reference_files = list_cases(ref_folder, file_ending)
    prediction_files = list_cases(pred_folder, file_ending)
    cases, without_prediction = match_cases(reference_files, prediction_files, missing, ref_folder, pred_folder)
    if without_prediction and missing != "error":
        print(f"{len(without_prediction)} reference case(s) have no prediction and are "
              f"{'scored as empty' if missing == 'empty' else 'left out'}: {_shorten(without_prediction)}",
              file=sys.stderr)
    reader_writer = reader_writer_for(dataset, cases[0][1], plans)

    jobs = [(c, r, p, reader_writer, labels_or_regions, allowed_values, ignore_label, surface_metrics)
            for c, r, p in cases]
    num_processes = max(1, min(num_processes, len(jobs)))
    bar = dict(total=len(jobs), desc="evaluating", unit="case", disable=not progress)
    if num_processes == 1:
        metric_per_case = [evaluate_case(*j) for j in tqdm(jobs, **bar)]
    else:
        # spawn, like nnU-Net: forking a process that may hold torch/CUDA state is unsafe
        with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
            metric_per_case = list(tqdm(pool.imap(_evaluate_case_star, jobs), **bar))

    for case in metric_per_case:
        case["modality"] = lookup_case_modality(dataset, case["case_id"])
    label_keys = [label_key(k) for k in labels_or_regions]
    mean, foreground_mean = aggregate(metric_per_case, label_keys)
    untagged = [c["case_id"] for c in metric_per_case if c["modality"] is None]
    if untagged and len(untagged) < len(metric_per_case):
        print(f"{len(untagged)} case(s) have no modality tag in dataset.json 'case_modalities' and are grouped as "
              f"'{UNTAGGED_MODALITY}': {_shorten(untagged)}", file=sys.stderr)
    summary = {
        "metric_per_case": metric_per_case,
        "mean": mean,
        "foreground_mean": foreground_mean,
        "per_modality": per_modality_summary(metric_per_case, label_keys) if len(untagged) < len(metric_per_case)
        else {},
        "nnunet_mulmod": {
            "label_names": label_names,
            "surface_metrics": surface_metrics,
            "reference_folder": os.path.abspath(ref_folder),
            "prediction_folder": os.path.abspath(pred_folder),
            "cases_scored_as_empty": without_prediction if missing == "empty" else [],
            "cases_left_out": without_prediction if missing == "skip" else [],
            "conventions": "Dice/IoU NaN if reference and prediction are empty; HD95/ASSD (mm) NaN if either is "
                           "empty; RVD NaN if the reference is empty; means skip NaN over cases. "
                           "See docs/evaluation.md.",
        },
    }
    summary = _to_builtin(summary)
    if output_file is not None:
        os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
        with open(output_file, "w", encoding="utf-8") as f:
            # nnU-Net's save_summary_json also sorts keys (foreground_mean first) and keeps NaN as NaN
            json.dump(summary, f, sort_keys=True, indent=4)
    return summary


def format_summary(summary: dict, metrics: Sequence[str] = ("Dice", "IoU", "HD95", "ASSD", "RVD")) -> str:
    """A short console table: foreground mean overall and per modality."""
    metrics = [m for m in metrics if m in summary["foreground_mean"]]
    rows = [("all", len(summary["metric_per_case"]), summary["foreground_mean"])]
    rows += [(m, s["n_cases"], s["foreground_mean"]) for m, s in summary.get("per_modality", {}).items()]
    lines = [f"{'cases':<12}{'n':>5}" + "".join(f"{m:>10}" for m in metrics)]
    for name, n, values in rows:
        lines.append(f"{name:<12}{n:>5}" + "".join(f"{values[m]:>10.4f}" for m in metrics))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nnunet_mulmod_evaluate",
        description="Dice, IoU, HD95, ASSD (mm) and RVD per case, class and modality for a folder of predictions. "
                    "Writes an nnU-Net-compatible summary.json with a per_modality section.")
    parser.add_argument("gt_folder", help="folder with reference segmentations (e.g. labelsTs)")
    parser.add_argument("pred_folder", help="folder with predicted segmentations (same file names)")
    parser.add_argument("-djfile", default=None,
                        help="dataset.json (labels, file_ending, case_modalities). Default: pred_folder/dataset.json, "
                             "which nnUNetv2_predict writes")
    parser.add_argument("-pfile", default=None, help="plans.json (optional; only to pick the image reader/writer)")
    parser.add_argument("-o", default=None, help="output file. Default: pred_folder/summary.json")
    parser.add_argument("-np", type=int, default=DEFAULT_NUM_PROCESSES,
                        help=f"number of processes. Default: {DEFAULT_NUM_PROCESSES} (nnUNet_def_n_proc)")
    parser.add_argument("--dice_only", action="store_true",
                        help="skip surface distances (HD95, ASSD): as fast as nnUNetv2_evaluate_folder")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--missing_as_empty", action="store_true",
                       help="score references without prediction as empty predictions")
    group.add_argument("--chill", action="store_true", help="evaluate only the cases that have a prediction")
    args = parser.parse_args(argv)

    dataset_json = args.djfile or os.path.join(args.pred_folder, "dataset.json")
    if args.djfile is None and not os.path.isfile(dataset_json):
        parser.error(f"no -djfile given and {dataset_json} does not exist: pass the dataset's dataset.json")
    output_file = args.o or os.path.join(args.pred_folder, "summary.json")
    missing = "empty" if args.missing_as_empty else "skip" if args.chill else "error"
    try:
        summary = evaluate_folder(args.gt_folder, args.pred_folder, dataset_json, output_file, args.pfile, args.np,
                                  surface_metrics=not args.dice_only, missing=missing)
    except EvaluationError as e:
        print(f"nnunet_mulmod_evaluate: error: {e}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    print(f"wrote {output_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
