"""Per-case metrics of a results folder and the papers' tables (Markdown, LaTeX) computed from them.

Loading: a results folder is any folder holding summary.json files (see evaluation/report.py for the layouts).
Tables: rows = settings, columns = classes per modality + Avg; each cell is the mean over folds of the
per-fold mean over that modality's cases, +- the sample std over folds (no spread with one fold).
"Avg" is the mean over the classes that have a value (per fold, then over folds).
"""
from __future__ import annotations

import json
import os
import re
import warnings
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from .evaluate_folder import EvaluationError, UNTAGGED_MODALITY, labels_from_dataset_json, load_dataset_json
from .metrics import HIGHER_IS_BETTER
from nnunet_mulmod.modality import lookup_case_modality, modality_family

AVG = "Avg"
REPORT_SETTINGS_FILE = "report_settings.json"
PERCENT_METRICS = ("Dice", "IoU", "RVD")  # shown x100, as in the papers
_FOLD_PATTERN = re.compile(r"^fold_(\d+|all)$")


# ----------------------------------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------------------------------
def find_summaries(results_folder: str) -> List[dict]:
    """[{'setting', 'fold', 'path'}] for every summary.json under results_folder (see module docstring)."""
    found = []
    for root, dirs, files in os.walk(results_folder):
        # nnU-Net's pooled cross-validation summaries would count cases twice; hidden folders are not results
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "crossval_results")) and d != "report")
        if "summary.json" not in files:
            continue
        parts = os.path.relpath(root, results_folder).split(os.sep)
        parts = [p for p in parts if p != "."]
        fold_idx = next((i for i, p in enumerate(parts) if _FOLD_PATTERN.match(p)), None)
        if fold_idx is None:
            setting_parts, fold = parts, "0"
        else:
            setting_parts = parts[:fold_idx] + [p for p in parts[fold_idx + 1:] if p != "validation"]
            fold = _FOLD_PATTERN.match(parts[fold_idx]).group(1)
        setting = "/".join(setting_parts) or os.path.basename(os.path.abspath(results_folder))
        found.append({"setting": setting, "fold": fold, "path": os.path.join(root, "summary.json")})
    return found


def nearest_dataset_json(summary_path: str, stop: str) -> Optional[dict]:
    folder = os.path.dirname(os.path.abspath(summary_path))
    stop = os.path.abspath(stop)
    while True:
        candidate = os.path.join(folder, "dataset.json")
        if os.path.isfile(candidate):
            return load_dataset_json(candidate)
        if folder == stop or os.path.dirname(folder) == folder:
            return None
        folder = os.path.dirname(folder)


def summary_to_frame(summary: Mapping, setting: str = "", fold: str = "0",
                     dataset_json: Optional[Mapping] = None) -> pd.DataFrame:
    """Per-case metrics of one summary.json as a long table: setting, fold, case_id, modality, label,
    label_name, metric, value, reference_file, prediction_file. nnU-Net's own summaries (no case ids or
    modalities) are completed from dataset.json."""
    names = dict(summary.get("nnunet_mulmod", {}).get("label_names", {}))
    file_ending = None
    if dataset_json is not None:
        names = names or labels_from_dataset_json(dataset_json)[3]
        file_ending = dataset_json.get("file_ending")
    rows = []
    for case in summary["metric_per_case"]:
        case_id = case.get("case_id")
        if case_id is None:
            base = os.path.basename(case["reference_file"])
            case_id = base[:-len(file_ending)] if file_ending and base.endswith(file_ending) else base.split(".")[0]
        modality = case.get("modality") if "modality" in case else (
            lookup_case_modality(dataset_json, case_id) if dataset_json is not None else None)
        for label, metrics in case["metrics"].items():
            for metric, value in metrics.items():
                rows.append((setting, str(fold), case_id, modality or UNTAGGED_MODALITY, str(label),
                             names.get(str(label), str(label)), metric,
                             np.nan if value is None else float(value),
                             case.get("reference_file"), case.get("prediction_file")))
    return pd.DataFrame(rows, columns=["setting", "fold", "case_id", "modality", "label", "label_name", "metric",
                                       "value", "reference_file", "prediction_file"])


def read_report_settings(results_folder: str) -> dict:
    path = os.path.join(results_folder, REPORT_SETTINGS_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def load_case_metrics(results_folder: str, settings: Optional[Sequence[str]] = None,
                      names: Optional[Sequence[str]] = None,
                      dataset_json: Optional[Mapping] = None) -> pd.DataFrame:
    """Every per-case metric of a results folder as one long DataFrame (see summary_to_frame), with the
    setting column holding display names, ordered (a pandas Categorical) as requested.

    settings: setting ids (paths, as find_summaries names them) to keep, in row order; default: the order of
    report_settings.json, else sorted. names: display names for them (default: report_settings.json / ids).
    """
    summaries = find_summaries(results_folder)
    if not summaries:
        raise EvaluationError(
            f"No summary.json under {results_folder}. Evaluate predictions first (nnunet_mulmod_evaluate writes "
            f"<pred_folder>/summary.json), or point to a folder with <setting>/fold_<k>/summary.json.")
    available = list(dict.fromkeys(s["setting"] for s in summaries))
    config = read_report_settings(results_folder)
    if settings is None and config.get("settings"):
        settings = [s["path"] for s in config["settings"]]
        names = names or [s.get("name", s["path"]) for s in config["settings"]]
    settings = list(settings) if settings is not None else sorted(available)
    unknown = [s for s in settings if s not in available]
    if unknown:
        raise EvaluationError(f"Setting(s) {unknown} not found under {results_folder}; available: {available}")
    names = list(names) if names is not None else settings
    if len(names) != len(settings):
        raise EvaluationError(f"{len(names)} names for {len(settings)} settings: give one name per setting.")
    display = dict(zip(settings, names))
    frames = []
    for s in summaries:
        if s["setting"] not in display:
            continue
        with open(s["path"]) as f:
            summary = json.load(f)
        ds = dataset_json if dataset_json is not None else nearest_dataset_json(s["path"], results_folder)
        frames.append(summary_to_frame(summary, display[s["setting"]], s["fold"], ds))
    df = pd.concat(frames, ignore_index=True)
    label_sets = df.groupby("setting")["label_name"].agg(lambda v: tuple(sorted(set(v))))
    if label_sets.nunique() > 1:
        shown = "; ".join(f"{s}: {list(v)}" for s, v in label_sets.items())
        raise EvaluationError(f"The settings under {results_folder} were evaluated with different label sets ({shown}): "
                              f"a results folder from another dataset? Keep one dataset per report, or pick the "
                              f"settings with --settings.")
    df["setting"] = pd.Categorical(df["setting"], categories=names, ordered=True)
    return df


# ----------------------------------------------------------------------------------------------------------------------
# statistics and tables
# ----------------------------------------------------------------------------------------------------------------------
def fold_statistics(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per setting, modality and class (plus 'Avg'): mean and sample std over folds of the per-fold means over
    cases; n_folds and n_cases (cases per fold summed)."""
    d = df[df["metric"] == metric]
    if d.empty:
        raise EvaluationError(f"No values of metric {metric!r} in the summaries (HD95/ASSD need summaries made "
                              f"without --dice_only; nnU-Net's own summaries have Dice and IoU only).")
    keys = ["setting", "modality", "fold"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        per_fold = (d.groupby(keys + ["label", "label_name"], observed=True)
                    .agg(value=("value", lambda v: np.nanmean(v) if len(v) else np.nan), n_cases=("case_id", "nunique"))
                    .reset_index())
        avg = (per_fold.groupby(keys, observed=True)
               .agg(value=("value", lambda v: np.nanmean(v) if np.isfinite(v).any() else np.nan),
                    n_cases=("n_cases", "max")).reset_index())
    avg["label"], avg["label_name"] = AVG, AVG
    per_fold = pd.concat([per_fold, avg], ignore_index=True)
    stats = (per_fold.groupby(["setting", "modality", "label", "label_name"], observed=True, sort=False)
             .agg(mean=("value", "mean"), std=("value", lambda v: v.std(ddof=1) if v.notna().sum() > 1 else np.nan),
                  n_folds=("value", lambda v: int(v.notna().sum())), n_cases=("n_cases", "sum"))
             .reset_index())
    stats.insert(0, "metric", metric)
    return stats


def label_order(df: pd.DataFrame) -> List[str]:
    def key(label):
        try:
            return (0, int(label), "")
        except ValueError:
            return (1, 0, label)
    labels = sorted(df.loc[df["label"] != AVG, "label"].unique(), key=key)
    return labels + [AVG]


def modality_order(df: pd.DataFrame) -> List[str]:
    mods = list(dict.fromkeys(df["modality"]))
    return sorted(mods, key=lambda m: (m == UNTAGGED_MODALITY, {"CT": 0, "MR": 1}.get(modality_family(m), 2), m))


def display_scale(metric: str) -> float:
    return 100.0 if metric in PERCENT_METRICS else 1.0


def wide_table(stats: pd.DataFrame, modality: str) -> Dict[str, pd.DataFrame]:
    """{'mean': DataFrame, 'std': DataFrame} rows = settings, columns = class names + Avg, in display units."""
    d = stats[stats["modality"] == modality]
    labels = label_order(d)
    names = d.drop_duplicates("label").set_index("label")["label_name"]
    settings = [s for s in stats["setting"].cat.categories if s in set(d["setting"])] \
        if hasattr(stats["setting"], "cat") else list(dict.fromkeys(d["setting"]))
    scale = display_scale(stats["metric"].iloc[0])
    out = {}
    for field in ("mean", "std"):
        table = d.pivot_table(index="setting", columns="label", values=field, observed=True, dropna=False,
                              aggfunc="first")
        table = table.reindex(index=settings, columns=labels) * scale
        table.columns = [names.get(l, l) for l in labels]
        out[field] = table
    return out


def _best(values: pd.Series, metric: str) -> Optional[float]:
    direction = HIGHER_IS_BETTER.get(metric)
    finite = values[np.isfinite(values)]
    if direction is None or len(finite) < 2:
        return None
    return finite.max() if direction else finite.min()


def _cell(mean: float, std: float, bold: bool, latex: bool) -> str:
    if not np.isfinite(mean):
        return "--" if latex else "–"
    text = f"{mean:.2f}" + (("$\\pm$" if latex else " ± ") + f"{std:.2f}" if np.isfinite(std) else "")
    if bold:
        return f"\\textbf{{{text}}}" if latex else f"**{text}**"
    return text


def display_unit(metric: str) -> str:
    return " (%)" if metric in PERCENT_METRICS else " (mm)" if metric in ("HD95", "ASSD") else ""


def markdown_tables(stats: pd.DataFrame) -> str:
    metric = stats["metric"].iloc[0]
    lines = []
    for modality in modality_order(stats):
        t = wide_table(stats, modality)
        mean, std = t["mean"], t["std"]
        best = {c: _best(mean[c], metric) for c in mean.columns}
        lines += [f"**{metric}{display_unit(metric)}, {modality}**", "",
                  "| Setting | " + " | ".join(mean.columns) + " |",
                  "|---|" + "---:|" * len(mean.columns)]
        for setting in mean.index:
            cells = [_cell(mean.at[setting, c], std.at[setting, c], mean.at[setting, c] == best[c], False)
                     for c in mean.columns]
            lines.append(f"| {setting} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _latex_escape(text: str) -> str:
    return re.sub(r"([_&%#$])", r"\\\1", str(text)).replace("->", r"$\rightarrow$")


def latex_table(stats: pd.DataFrame, caption: str = "") -> str:
    """One booktabs table, modalities side by side as in MulModSeg's Tables 2 and 3."""
    metric = stats["metric"].iloc[0]
    modalities = modality_order(stats)
    tables = {m: wide_table(stats, m) for m in modalities}
    settings = list(dict.fromkeys(s for m in modalities for s in tables[m]["mean"].index))
    spec = "l" + "".join("|" + "c" * len(tables[m]["mean"].columns) for m in modalities)
    head1 = " & ".join([""] + [f"\\multicolumn{{{len(tables[m]['mean'].columns)}}}{{c}}{{{_latex_escape(m)}}}"
                               for m in modalities])
    head2 = " & ".join(["Setting"] + [_latex_escape(c) for m in modalities for c in tables[m]["mean"].columns])
    rows = []
    for setting in settings:
        cells = [_latex_escape(setting)]
        for m in modalities:
            mean, std = tables[m]["mean"], tables[m]["std"]
            for c in mean.columns:
                if setting in mean.index:
                    best = _best(mean[c], metric)
                    cells.append(_cell(mean.at[setting, c], std.at[setting, c], mean.at[setting, c] == best, True))
                else:
                    cells.append("--")
        rows.append(" & ".join(cells) + r" \\")
    caption = _latex_escape(caption) if caption else \
        f"{_latex_escape(metric + display_unit(metric))}: mean $\\pm$ sample std over folds; best per column in bold."
    return "\n".join([r"\begin{table}[t]", r"\centering", r"\resizebox{\textwidth}{!}{%",
                      f"\\begin{{tabular}}{{{spec}}}", r"\toprule", head1 + r" \\", head2 + r" \\", r"\midrule",
                      *rows, r"\bottomrule", r"\end{tabular}}", f"\\caption{{{caption}}}",
                      r"\end{table}", ""])


def case_means(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per setting, fold, case: mean over the case's classes that have a value (the per-case 'Avg')."""
    d = df[df["metric"] == metric]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return (d.groupby(["setting", "fold", "case_id", "modality"], observed=True)["value"]
                .agg(lambda v: np.nanmean(v) if np.isfinite(v).any() else np.nan).reset_index())
