"""Paired comparison of models on the same test cases: per-case differences and Wilcoxon signed-rank tests.

Inputs can be any mix of
- a prediction folder (e.g. from nnUNetv2_predict, vanilla nnU-Net included): evaluated against -ref;
- a finished nnU-Net training output folder (nnUNet_results/DatasetXXX/Trainer__Plans__config) with
  fold_<k>/validation predictions: the folds' validation cases are pooled (each case once) and evaluated
  against -ref, by default nnUNet_preprocessed/DatasetXXX/gt_segmentations;
- a summary.json written by nnunet_mulmod_evaluate (or nnU-Net's own, Dice/IoU only).

Every input is compared with the baseline (default: the first) case by case, per modality and per class and
for the per-case mean over classes ("Avg"). Python API::

    from nnunet_mulmod.evaluation.compare import compare_models
    result = compare_models({"nnU-Net": "pred_nnunet", "MulModSeg": "pred_mulmodseg"}, "labelsTs",
                            "dataset.json", output_folder="comparison")
    result["statistics"]   # DataFrame, one row per model x modality x class x metric
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from .evaluate_folder import (DEFAULT_NUM_PROCESSES, EvaluationError, check_same_dataset, evaluate_folder,
                              load_dataset_json)
from .metrics import HIGHER_IS_BETTER, SURFACE_METRICS
from .tables import AVG, PERCENT_METRICS, modality_order, summary_to_frame

ALL_MODALITIES = "all"
_FOLD_PATTERN = re.compile(r"^fold_(\d+|all)$")


# ----------------------------------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------------------------------
def _training_folds(folder: str) -> List[str]:
    return sorted(os.path.join(folder, d, "validation") for d in os.listdir(folder)
                  if _FOLD_PATTERN.match(d) and os.path.isdir(os.path.join(folder, d, "validation")))


def _default_gt_folder(training_folder: str) -> Optional[str]:
    preprocessed = os.environ.get("nnUNet_preprocessed")
    dataset_name = os.path.basename(os.path.dirname(os.path.abspath(training_folder)))
    if preprocessed and dataset_name.startswith("Dataset"):
        candidate = os.path.join(preprocessed, dataset_name, "gt_segmentations")
        if os.path.isdir(candidate):
            return candidate
    return None


def input_dataset_json(path: str) -> Optional[dict]:
    """The dataset.json that nnU-Net copies next to predictions and into training output folders."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    for candidate in (os.path.join(folder, "dataset.json"), os.path.join(os.path.dirname(folder), "dataset.json")):
        if os.path.isfile(candidate):
            return load_dataset_json(candidate)
    return None


def evaluate_input(name: str, path: str, reference_folder: Optional[str], dataset_json: Mapping,
                   output_folder: str, num_processes: int = DEFAULT_NUM_PROCESSES, surface_metrics: bool = True,
                   missing: str = "error") -> pd.DataFrame:
    """Per-case metrics of one input as a long DataFrame (nnunet_mulmod.evaluation.tables.summary_to_frame's
    columns); the summaries it computes go to output_folder/summaries/<name>/fold_<k>/summary.json (a results folder
    that nnunet_mulmod_report reads)."""
    if os.path.isfile(path):
        with open(path) as f:
            return summary_to_frame(json.load(f), name, "0", dataset_json)
    if not os.path.isdir(path):
        raise EvaluationError(f"Input {name!r}: {path} is neither a folder nor a summary.json file.")
    check_same_dataset(dataset_json, path)
    folds = _training_folds(path)
    prediction_folders = folds if folds else [path]
    if folds:
        reference_folder = reference_folder or _default_gt_folder(path)
        if reference_folder is None:
            raise EvaluationError(
                f"Input {name!r} ({path}) is an nnU-Net training output folder: pass its reference segmentations "
                f"with -ref (nnUNet_preprocessed/DatasetXXX/gt_segmentations, or the labelsTr folder).")
    elif reference_folder is None:
        raise EvaluationError(f"Input {name!r} ({path}) is a prediction folder: pass the reference folder with -ref.")
    frames = []
    safe_name = re.sub(r"[^A-Za-z0-9_.+-]+", "_", name)
    for k, folder in enumerate(prediction_folders):
        fold = os.path.basename(os.path.dirname(folder))[5:] if folds else "0"
        summary_file = os.path.join(output_folder, "summaries", safe_name, f"fold_{fold}", "summary.json")
        # a training folder's fold holds only its validation cases: the other references are not missing
        summary = evaluate_folder(reference_folder, folder, dataset_json, summary_file, None, num_processes,
                                  surface_metrics, "skip" if folds else missing, progress=True)
        frames.append(summary_to_frame(summary, name, fold, dataset_json))
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------------------------------------
def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN)."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    order = valid[np.argsort(p[valid])]
    m = len(order)
    running = 0.0
    for i, idx in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[idx]))
        adjusted[idx] = running
    return adjusted


def paired_test(values: np.ndarray, baseline: np.ndarray, higher_is_better: Optional[bool]) -> dict:
    """Statistics of values - baseline over the cases where both are defined."""
    keep = np.isfinite(values) & np.isfinite(baseline)
    a, b = values[keep], baseline[keep]
    diff = a - b
    n = int(keep.sum())
    row = {"n": n, "mean": np.mean(a) if n else np.nan, "mean_baseline": np.mean(b) if n else np.nan,
           "median_difference": np.median(diff) if n else np.nan, "mean_difference": np.mean(diff) if n else np.nan,
           "n_higher": int((diff > 0).sum()), "n_lower": int((diff < 0).sum()), "n_equal": int((diff == 0).sum()),
           "n_excluded": int((~keep).sum()), "wilcoxon_statistic": np.nan, "p_value": np.nan}
    if n and np.any(diff != 0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns about ties / small n; n is reported instead
            result = scipy_stats.wilcoxon(a, b, alternative="two-sided")
        row["wilcoxon_statistic"], row["p_value"] = float(result.statistic), float(result.pvalue)
    elif n:
        row["p_value"] = 1.0  # identical on every case
    return row


def per_case_values(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows = (modality, case_id), columns = (model, class name and 'Avg'); the per-case Avg is the mean over
    the classes that have a value in that case."""
    d = df[df["metric"] == metric]
    duplicated = d.duplicated(["setting", "case_id", "label"])
    if duplicated.any():
        bad = d[duplicated][["setting", "case_id"]].drop_duplicates().head(10).values.tolist()
        raise EvaluationError(f"Cases evaluated more than once within one input (model, case): {bad}. Each input must "
                              f"hold one prediction per case (e.g. not two folds' predictions of the same test set).")
    # unstack, not pivot_table(dropna=False), which would add every modality x case combination as a row
    wide = d.set_index(["modality", "case_id", "setting", "label_name"])["value"].unstack(["setting", "label_name"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        for model in wide.columns.get_level_values(0).unique():
            wide[(model, AVG)] = np.nanmean(wide[model].to_numpy(dtype=float), axis=1)
    return wide.sort_index(axis=1)


def compare_frames(df: pd.DataFrame, baseline: str, metrics: Sequence[str] = ("Dice",),
                   common_cases_only: bool = False) -> Dict[str, pd.DataFrame]:
    """{'statistics': one row per (model vs baseline, metric, modality, class), 'per_case': paired values}."""
    models = list(dict.fromkeys(df["setting"]))
    if baseline not in models:
        raise EvaluationError(f"Baseline {baseline!r} is not one of the inputs {models}.")
    cases = {m: set(df.loc[df["setting"] == m, "case_id"]) for m in models}
    common = set.intersection(*cases.values())
    if not common:
        raise EvaluationError(f"The inputs share no case: {', '.join(f'{m}: {len(c)} cases' for m, c in cases.items())}."
                              f" Are they predictions of the same test set (and dataset)?")
    if any(c != common for c in cases.values()):
        differences = "; ".join(f"{m} lacks {sorted(set.union(*cases.values()) - c)[:10]}"
                                for m, c in cases.items() if c != set.union(*cases.values()))
        if not common_cases_only:
            raise EvaluationError(f"The inputs do not cover the same cases: {differences}. A paired comparison needs "
                                  f"the same test set; pass --common_cases_only to compare on the {len(common)} "
                                  f"shared cases.")
        print(f"Comparing on the {len(common)} shared cases only ({differences}).", file=sys.stderr)
    df = df[df["case_id"].isin(common)]
    rows, per_case_tables = [], []
    for metric in metrics:
        if not (df["metric"] == metric).any():
            raise EvaluationError(f"No values of metric {metric!r} in the inputs (HD95/ASSD need evaluations with "
                                  f"surface distances; nnU-Net's own summary.json files have Dice and IoU only).")
        wide = per_case_values(df, metric)
        modalities = modality_order(pd.DataFrame({"modality": wide.index.get_level_values(0).unique()}))
        groups = ([ALL_MODALITIES] if len(modalities) > 1 else []) + modalities
        labels = [c for c in wide[baseline].columns if c != AVG] + [AVG]
        for model in models:
            if model == baseline:
                continue
            for group in groups:
                sub = wide if group == ALL_MODALITIES else wide.xs(group, level="modality", drop_level=False)
                block = []
                for label in labels:
                    row = paired_test(sub[(model, label)].to_numpy(dtype=float),
                                      sub[(baseline, label)].to_numpy(dtype=float), HIGHER_IS_BETTER.get(metric))
                    block.append({"model": model, "baseline": baseline, "metric": metric, "modality": group,
                                  "class": label, **row})
                for row, adjusted in zip(block, holm([r["p_value"] for r in block])):
                    row["p_holm"] = adjusted
                rows += block
            for label in labels:
                per_case_tables.append(pd.DataFrame({
                    "model": model, "baseline": baseline, "metric": metric,
                    "modality": wide.index.get_level_values(0), "case_id": wide.index.get_level_values(1),
                    "class": label, "value_baseline": wide[(baseline, label)].to_numpy(dtype=float),
                    "value": wide[(model, label)].to_numpy(dtype=float)}))
                per_case_tables[-1]["difference"] = per_case_tables[-1]["value"] - per_case_tables[-1]["value_baseline"]
    return {"statistics": pd.DataFrame(rows), "per_case": pd.concat(per_case_tables, ignore_index=True)}


# ----------------------------------------------------------------------------------------------------------------------
# wording
# ----------------------------------------------------------------------------------------------------------------------
def _fmt(value: float, metric: str, signed: bool = False) -> str:
    if not np.isfinite(value):
        return "–"
    scaled = value * (100 if metric in PERCENT_METRICS else 1)
    return f"{scaled:+.2f}" if signed else f"{scaled:.2f}"


def _fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return "–"
    return f"{p:.2g}" if p >= 1e-4 else "<0.0001"


def sentence(row: Mapping, alpha: float = 0.05) -> str:
    """One honest sentence about a comparison row."""
    metric, unit = row["metric"], " points" if row["metric"] in PERCENT_METRICS else " mm"
    direction = HIGHER_IS_BETTER.get(metric)
    where = f"all n={row['n']}" if row["modality"] == ALL_MODALITIES else f"the n={row['n']} {row['modality']}"
    text = (f"On {where} cases, {row['model']} minus {row['baseline']} ({metric}, "
            f"{'mean over classes' if row['class'] == AVG else row['class']}): median difference "
            f"{_fmt(row['median_difference'], metric, True)}{unit} (mean {_fmt(row['mean_difference'], metric, True)}), "
            f"higher on {row['n_higher']}, lower on {row['n_lower']}, equal on {row['n_equal']} cases; Wilcoxon "
            f"signed-rank two-sided p = {_fmt_p(row['p_value'])}.")
    if row["n"] < 6:
        return text + (f" With n < 6 cases this test cannot reach p < 0.05 (the smallest possible two-sided p is "
                       f"2/2^{row['n']} = {2 / 2 ** row['n']:.3g}): no conclusion is possible.")
    if not np.isfinite(row["p_value"]) or row["p_value"] >= alpha:
        return text + (f" No difference detected at alpha = {alpha} (this is not evidence that the models are "
                       f"equal).")
    if direction is None:
        return text + f" The difference is significant at alpha = {alpha}."
    better = (row["median_difference"] > 0) == direction
    return text + (f" {row['model'] if better else row['baseline']} is better on these cases (p < {alpha}, "
                   f"not corrected for the other tests in this report).")


def markdown_report(statistics: pd.DataFrame, alpha: float = 0.05) -> str:
    lines = ["# Paired model comparison", "",
             "Per case, each model's value minus the baseline's on the same case. p: Wilcoxon signed-rank test "
             "(two-sided, scipy.stats.wilcoxon, zero differences dropped) over the cases where both values exist "
             "(a class absent from reference and prediction has no Dice, so n can differ per class). p_holm: "
             "Holm-adjusted over the rows of one table. Avg = per-case mean over classes. Dice/IoU/RVD differences "
             "in points (x100), HD95/ASSD in mm. The test says whether the per-case differences are centred on zero "
             "for *these* cases; it does not account for training randomness (one trained model per setting).", ""]
    key = ["model", "metric", "modality"]
    for (model, metric, modality), table in statistics.groupby(key, sort=False):
        avg = table[table["class"] == AVG].iloc[0]
        lines += [f"## {model} vs {avg['baseline']}: {metric}, {modality} cases", "", sentence(avg, alpha), "",
                  "| Class | n | mean " + avg["baseline"] + " | mean " + model +
                  " | median diff | mean diff | higher/lower/equal | p | p_holm |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for _, r in table.iterrows():
            name = f"**{r['class']}**" if r["class"] == AVG else r["class"]
            lines.append(f"| {name} | {r['n']} | {_fmt(r['mean_baseline'], metric)} | {_fmt(r['mean'], metric)} | "
                         f"{_fmt(r['median_difference'], metric, True)} | {_fmt(r['mean_difference'], metric, True)} | "
                         f"{r['n_higher']}/{r['n_lower']}/{r['n_equal']} | {_fmt_p(r['p_value'])} | "
                         f"{_fmt_p(r['p_holm'])} |")
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# everything
# ----------------------------------------------------------------------------------------------------------------------
def compare_models(inputs: Mapping[str, str], reference_folder: Optional[str] = None, dataset_json=None,
                   output_folder: str = "comparison", metrics: Sequence[str] = ("Dice",),
                   baseline: Optional[str] = None, num_processes: int = DEFAULT_NUM_PROCESSES,
                   missing: str = "error", common_cases_only: bool = False, alpha: float = 0.05) -> dict:
    """inputs: {display name: prediction folder | training output folder | summary.json}, baseline first unless
    baseline is given. Writes comparison.md, comparison.csv, per_case.csv (and the summaries it computed) to
    output_folder; returns {'statistics', 'per_case', 'markdown', 'paths'}."""
    if len(inputs) < 2:
        raise EvaluationError("Give at least two inputs to compare.")
    names = list(inputs)
    if dataset_json is None:
        dataset_json = next((d for d in (input_dataset_json(p) for p in inputs.values()) if d is not None), None)
        if dataset_json is None:
            raise EvaluationError("No dataset.json found next to the inputs: pass the dataset's dataset.json with "
                                  "-djfile.")
    dataset = load_dataset_json(dataset_json)
    os.makedirs(output_folder, exist_ok=True)
    surface = any(m in SURFACE_METRICS for m in metrics)
    frames = [evaluate_input(n, p, reference_folder, dataset, output_folder, num_processes, surface, missing)
              for n, p in inputs.items()]
    result = compare_frames(pd.concat(frames, ignore_index=True), baseline or names[0], metrics, common_cases_only)
    markdown = markdown_report(result["statistics"], alpha)
    paths = {"markdown": os.path.join(output_folder, "comparison.md"),
             "csv": os.path.join(output_folder, "comparison.csv"),
             "per_case_csv": os.path.join(output_folder, "per_case.csv")}
    with open(paths["markdown"], "w", encoding="utf-8") as f:
        f.write(markdown)
    result["statistics"].to_csv(paths["csv"], index=False)
    result["per_case"].to_csv(paths["per_case_csv"], index=False)
    return {**result, "markdown": markdown, "paths": paths}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nnunet_mulmod_compare",
        description="Compare models on the same test cases: per-case paired differences and Wilcoxon signed-rank "
                    "tests per class and modality (Markdown and CSV).")
    parser.add_argument("-i", nargs="+", required=True,
                        help="inputs: prediction folders, nnU-Net training output folders "
                             "(Trainer__Plans__config, fold_<k>/validation pooled) or summary.json files. The first "
                             "is the baseline unless --baseline is given")
    parser.add_argument("-n", "--names", nargs="+", default=None, help="display names, one per input")
    parser.add_argument("-ref", default=None,
                        help="reference segmentations (labelsTs). Default for training folders: "
                             "nnUNet_preprocessed/DatasetXXX/gt_segmentations")
    parser.add_argument("-djfile", default=None,
                        help="dataset.json. Default: the one nnU-Net copied next to the first input")
    parser.add_argument("-o", default="comparison", help="output folder. Default: ./comparison")
    parser.add_argument("-m", "--metrics", nargs="+", default=["Dice"], help="Dice IoU HD95 ASSD RVD. Default: Dice")
    parser.add_argument("--baseline", default=None, help="name of the baseline input. Default: the first")
    parser.add_argument("-np", type=int, default=DEFAULT_NUM_PROCESSES, help="processes for evaluation")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level used in the wording")
    parser.add_argument("--missing_as_empty", action="store_true",
                        help="score references without a prediction as empty predictions")
    parser.add_argument("--common_cases_only", action="store_true",
                        help="compare on the cases all inputs have instead of failing when they differ")
    args = parser.parse_args(argv)
    names = args.names or [os.path.basename(os.path.normpath(p)) for p in args.i]
    if args.names is None and len(set(names)) < len(names):  # e.g. .../modelA/fold_0 and .../modelB/fold_0
        names = ["/".join(os.path.normpath(p).split(os.sep)[-2:]) for p in args.i]
    if len(names) != len(args.i):
        parser.error(f"{len(names)} names for {len(args.i)} inputs")
    if len(set(names)) != len(names):
        parser.error(f"input names must differ, got {names}: pass -n")
    try:
        result = compare_models(dict(zip(names, args.i)), args.ref, args.djfile, args.o, args.metrics, args.baseline,
                                args.np, "empty" if args.missing_as_empty else "error", args.common_cases_only,
                                args.alpha)
    except EvaluationError as e:
        print(f"nnunet_mulmod_compare: error: {e}", file=sys.stderr)
        return 1
    print(result["markdown"])
    print("wrote:\n  " + "\n  ".join(result["paths"].values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
