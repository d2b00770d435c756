"""Tables and figures from one results folder, in the papers' layout.

A results folder is any folder holding summary.json files (ours from evaluate_folder, or nnU-Net's own):
the folder above a ``fold_<k>`` component names the *setting*, ``fold_<k>`` the fold, e.g.::

    <results>/<setting>/fold_<k>/summary.json                     (our experiment layout)
    <results>/<setting>/fold_<k>/validation/summary.json          (nnUNet_results/DatasetXXX as is)
    <results>/<setting>/summary.json                              (one fold)

An optional ``<results>/report_settings.json`` fixes the row order and display names:
``{"title": "...", "settings": [{"name": "ALT->CT/MR w/ text", "path": "<setting>"}, ...]}``.

Python API::

    from evaluation.report import write_report
    paths = write_report("experiments/table2", metrics=("Dice", "HD95"), image_folder="imagesTs")

Tables: rows = settings, columns = classes per modality + Avg; each cell is the mean over folds of the
per-fold mean over that modality's cases, +- the sample std over folds (no spread with one fold).
"Avg" is the mean over the classes that have a value (per fold, then over folds).
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

from evaluation.evaluate_folder import EvaluationError, UNTAGGED_MODALITY, labels_from_dataset_json, \
    load_dataset_json
from evaluation.metrics import HIGHER_IS_BETTER
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


def _nearest_dataset_json(summary_path: str, stop: str) -> Optional[dict]:
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
        ds = dataset_json if dataset_json is not None else _nearest_dataset_json(s["path"], results_folder)
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


def _label_order(df: pd.DataFrame) -> List[str]:
    def key(label):
        try:
            return (0, int(label), "")
        except ValueError:
            return (1, 0, label)
    labels = sorted(df.loc[df["label"] != AVG, "label"].unique(), key=key)
    return labels + [AVG]


def _modality_order(df: pd.DataFrame) -> List[str]:
    mods = list(dict.fromkeys(df["modality"]))
    return sorted(mods, key=lambda m: (m == UNTAGGED_MODALITY, {"CT": 0, "MR": 1}.get(modality_family(m), 2), m))


def _scale(metric: str) -> float:
    return 100.0 if metric in PERCENT_METRICS else 1.0


def wide_table(stats: pd.DataFrame, modality: str) -> Dict[str, pd.DataFrame]:
    """{'mean': DataFrame, 'std': DataFrame} rows = settings, columns = class names + Avg, in display units."""
    d = stats[stats["modality"] == modality]
    labels = _label_order(d)
    names = d.drop_duplicates("label").set_index("label")["label_name"]
    settings = [s for s in stats["setting"].cat.categories if s in set(d["setting"])] \
        if hasattr(stats["setting"], "cat") else list(dict.fromkeys(d["setting"]))
    scale = _scale(stats["metric"].iloc[0])
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


def _unit(metric: str) -> str:
    return " (%)" if metric in PERCENT_METRICS else " (mm)" if metric in ("HD95", "ASSD") else ""


def markdown_tables(stats: pd.DataFrame) -> str:
    metric = stats["metric"].iloc[0]
    lines = []
    for modality in _modality_order(stats):
        t = wide_table(stats, modality)
        mean, std = t["mean"], t["std"]
        best = {c: _best(mean[c], metric) for c in mean.columns}
        lines += [f"**{metric}{_unit(metric)}, {modality}**", "",
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
    modalities = _modality_order(stats)
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
        f"{_latex_escape(metric + _unit(metric))}: mean $\\pm$ sample std over folds; best per column in bold."
    return "\n".join([r"\begin{table}[t]", r"\centering", r"\resizebox{\textwidth}{!}{%",
                      f"\\begin{{tabular}}{{{spec}}}", r"\toprule", head1 + r" \\", head2 + r" \\", r"\midrule",
                      *rows, r"\bottomrule", r"\end{tabular}}", f"\\caption{{{caption}}}",
                      r"\end{table}", ""])


# ----------------------------------------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only: works on servers without a display
    import matplotlib.pyplot as plt
    return plt


def plot_class_bars(stats: pd.DataFrame, output_file: str) -> str:
    """Per-class bar chart, one bar per setting (error bars: std over folds), one panel per modality."""
    plt = _pyplot()
    metric = stats["metric"].iloc[0]
    modalities = _modality_order(stats)
    settings = [s for s in stats["setting"].cat.categories if s in set(stats["setting"])] \
        if hasattr(stats["setting"], "cat") else list(dict.fromkeys(stats["setting"]))
    n_labels = max(len(wide_table(stats, m)["mean"].columns) for m in modalities)
    fig, axes = plt.subplots(len(modalities), 1, squeeze=False,
                             figsize=(min(max(6.0, 0.25 * n_labels * max(len(settings), 2) + 2), 16.0), 3.4 * len(modalities)))
    colors = plt.get_cmap("tab10")
    width = 0.8 / len(settings)
    for ax, modality in zip(axes[:, 0], modalities):
        t = wide_table(stats, modality)
        x = np.arange(len(t["mean"].columns))
        for i, setting in enumerate(settings):
            if setting not in t["mean"].index:
                continue
            std = t["std"].loc[setting].to_numpy(dtype=float)
            has_spread = np.isfinite(std).any()  # one fold: no error bars rather than zero-length ones
            ax.bar(x + (i - (len(settings) - 1) / 2) * width, t["mean"].loc[setting].to_numpy(dtype=float), width,
                   yerr=np.where(np.isfinite(std), std, 0) if has_spread else None, capsize=2 if has_spread else 0,
                   label=setting, color=colors(i % 10), error_kw={"elinewidth": 0.8})
        ax.set_xticks(x)
        ax.set_xticklabels(t["mean"].columns, rotation=30, ha="right")
        ax.set_ylabel(f"{metric}{_unit(metric)}")
        ax.set_title(modality)
        if metric in PERCENT_METRICS and metric != "RVD":
            ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    axes[0, 0].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(output_file, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return output_file


def case_means(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per setting, fold, case: mean over the case's classes that have a value (the per-case 'Avg')."""
    d = df[df["metric"] == metric]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return (d.groupby(["setting", "fold", "case_id", "modality"], observed=True)["value"]
                .agg(lambda v: np.nanmean(v) if np.isfinite(v).any() else np.nan).reset_index())


def plot_modality_boxes(df: pd.DataFrame, metric: str, output_file: str) -> str:
    """Box plot per modality of the per-case class-averaged metric, one box per setting, cases as dots."""
    plt = _pyplot()
    per_case = case_means(df, metric)
    modalities = _modality_order(per_case)
    settings = [s for s in df["setting"].cat.categories if s in set(per_case["setting"])] \
        if hasattr(df["setting"], "cat") else list(dict.fromkeys(per_case["setting"]))
    fig, axes = plt.subplots(1, len(modalities), squeeze=False, sharey=True,
                             figsize=(max(3.0, 0.9 * len(settings) + 1.2) * len(modalities), 4.0))
    rng = np.random.default_rng(0)
    colors = plt.get_cmap("tab10")
    for ax, modality in zip(axes[0], modalities):
        data = [per_case.loc[(per_case["modality"] == modality) & (per_case["setting"] == s), "value"].dropna()
                .to_numpy() * _scale(metric) for s in settings]
        box = ax.boxplot(data, patch_artist=True, widths=0.6, showfliers=False, medianprops={"color": "black"})
        for i, (patch, values) in enumerate(zip(box["boxes"], data)):
            patch.set_facecolor(colors(i % 10))
            patch.set_alpha(0.45)
            ax.scatter(i + 1 + rng.uniform(-0.15, 0.15, len(values)), values, s=9, color=colors(i % 10),
                       edgecolor="black", linewidth=0.3, zorder=3)
        ax.set_xticks(range(1, len(settings) + 1))
        ax.set_xticklabels(settings, rotation=30, ha="right")
        n = max((len(v) for v in data), default=0)
        ax.set_title(f"{modality} (n={n} per box)")
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_ylabel(f"{metric}{_unit(metric)} per case (mean over classes)")
    fig.tight_layout()
    fig.savefig(output_file, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return output_file


def _representative_cases(df: pd.DataFrame) -> Dict[str, str]:
    """Per modality the case with the median Dice (averaged over settings): typical, not cherry-picked."""
    per_case = case_means(df, "Dice")
    out = {}
    for modality, group in per_case.groupby("modality", observed=True):
        avg = group.groupby("case_id")["value"].mean().dropna().sort_values()
        if len(avg):
            out[modality] = avg.index[(len(avg) - 1) // 2]
    return out


def _display_orientation(props: Mapping):
    """Flips for a radiological axial view (patient's right on the left of the screen, anterior up) when the
    reader gives a direction matrix (SimpleITK) and the image is close to axis-aligned; identity otherwise."""
    direction = props.get("sitk_stuff", {}).get("direction")
    if direction is None or len(direction) != 9:
        return lambda a: a
    d = np.asarray(direction, dtype=float).reshape(3, 3)  # columns: index axes x, y, z in LPS
    flip_x, flip_y = d[0, 0] < -0.5, d[1, 1] < -0.5
    return lambda a: a[::-1 if flip_y else 1, ::-1 if flip_x else 1]


def _display_window(image_slice: np.ndarray, modality: str):
    if modality_family(modality) == "CT":
        return -160, 240  # abdominal soft-tissue window (W400, L40)
    return np.percentile(image_slice, 1), np.percentile(image_slice, 99)


# Colours that stay visible on dark and bright image regions (no grey, no near-black), tab10 first.
_LABEL_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
                  "#ffd700", "#00e676", "#ff1493", "#40c4ff", "#c6ff00", "#ff5722", "#b388ff", "#00bfa5", "#f06292",
                  "#795548", "#ffab40"]


def label_colors(n_labels: int) -> np.ndarray:
    """RGB per label value (index 0 unused)."""
    from matplotlib.colors import to_rgb
    return np.array([(0.0, 0.0, 0.0)] + [to_rgb(_LABEL_PALETTE[i % len(_LABEL_PALETTE)]) for i in range(n_labels)])


def _overlay(seg: np.ndarray, colors: np.ndarray, alpha: float) -> np.ndarray:
    """RGBA image: labels filled with `alpha`, their outlines opaque (readable where colours meet the image)."""
    overlay = np.zeros(seg.shape + (4,))
    inside = seg > 0
    overlay[inside, :3] = colors[seg[inside]]
    overlay[inside, 3] = alpha
    edge = np.zeros_like(inside)
    for axis in range(seg.ndim):
        for shift in (1, -1):
            edge |= seg != np.roll(seg, shift, axis=axis)
    overlay[inside & edge, 3] = 1.0
    return overlay


def plot_qualitative(df: pd.DataFrame, image_folder: str, dataset_json: Mapping, output_file: str,
                     cases: Optional[Sequence[str]] = None, channel: int = 0, alpha: float = 0.4) -> str:
    """MulModSeg Figure 2: per case (one row; default one per modality) the image, the ground truth and each
    setting's prediction on the same axial slice (the one with most reference foreground), labels as colour
    overlays, with the case's class-averaged Dice written on each prediction."""
    from evaluation.evaluate_folder import reader_writer_for
    plt = _pyplot()
    file_ending = dataset_json["file_ending"]
    label_values = [int(v) for k, v in dataset_json["labels"].items() if k != "ignore" and not isinstance(v, list)]
    names = {int(v): k for k, v in dataset_json["labels"].items() if k != "ignore" and not isinstance(v, list)}
    colors = label_colors(max(label_values))
    if cases is None:
        cases_by_modality = _representative_cases(df)
        cases = [cases_by_modality[m] for m in _modality_order(pd.DataFrame({"modality": list(cases_by_modality)}))]
    settings = [s for s in df["setting"].cat.categories if s in set(df["setting"])] \
        if hasattr(df["setting"], "cat") else list(dict.fromkeys(df["setting"]))
    dice = case_means(df, "Dice").groupby(["setting", "case_id"], observed=True)["value"].mean()
    files = df.drop_duplicates(["setting", "case_id"]).set_index(["setting", "case_id"])
    example = os.path.join(image_folder, f"{cases[0]}_{channel:04d}{file_ending}")
    reader = reader_writer_for(dataset_json, example)

    rows = []
    for case_id in cases:
        image_file = os.path.join(image_folder, f"{case_id}_{channel:04d}{file_ending}")
        if not os.path.isfile(image_file):
            raise EvaluationError(f"Image of case {case_id} not found: {image_file}. Pass the folder with the "
                                  f"images the predictions were made from (imagesTs / imagesTr) with -img.")
        case_rows = df[df["case_id"] == case_id]
        if case_rows.empty:
            raise EvaluationError(f"Case {case_id} is in none of the summaries; cases available: "
                                  f"{sorted(df['case_id'].unique())[:20]}")
        image, props = reader.read_images([image_file])
        reference, _ = reader.read_seg(case_rows["reference_file"].iloc[0])
        image, reference = image[0], reference[0].astype(np.int32)
        z = int(np.argmax((reference > 0).reshape(reference.shape[0], -1).sum(1)))
        orient = _display_orientation(props)
        panels = [("Image", None), ("Ground truth", orient(reference[z]))]
        for setting in settings:
            key = (setting, case_id)
            pred_file = files.loc[key, "prediction_file"] if key in files.index else None
            if pred_file is None or isinstance(pred_file, float) or not os.path.isfile(pred_file):
                panels.append((setting, "missing"))
            else:
                panels.append((setting, orient(reader.read_seg(pred_file)[0][0][z].astype(np.int32))))
        spacing = props["spacing"]
        modality = case_rows["modality"].iloc[0]
        rows.append({"case_id": case_id, "modality": modality, "z": z, "image": orient(image[z]), "panels": panels,
                     "aspect": spacing[1] / spacing[2] if len(spacing) == 3 else 1.0,
                     "window": _display_window(image[z], modality)})

    n_cols = 2 + len(settings)
    panel_width = 2.3
    heights = [panel_width * r["image"].shape[0] * r["aspect"] / r["image"].shape[1] for r in rows]
    n_legend_rows = 1 + (len(label_values) - 2) // 7
    fig, axes = plt.subplots(len(rows), n_cols, squeeze=False, gridspec_kw={"height_ratios": heights},
                             figsize=(panel_width * n_cols, sum(heights) + 0.45 + 0.22 * n_legend_rows))
    for row, r in enumerate(rows):
        case_id, modality, z, aspect = r["case_id"], r["modality"], r["z"], r["aspect"]
        vmin, vmax = r["window"]
        for col, (title, seg) in enumerate(r["panels"]):
            ax = axes[row, col]
            ax.imshow(r["image"], cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect, interpolation="nearest")
            if isinstance(seg, str):
                ax.text(0.5, 0.5, "no prediction", ha="center", va="center", color="white",
                        transform=ax.transAxes, fontsize=9)
            elif seg is not None:
                seg = np.where(seg <= max(label_values), seg, 0)
                ax.imshow(_overlay(seg, colors, alpha), aspect=aspect, interpolation="nearest")
            if col >= 2 and (settings[col - 2], case_id) in dice.index:
                ax.text(0.03, 0.97, f"Dice {100 * dice[(settings[col - 2], case_id)]:.1f}", transform=ax.transAxes,
                        ha="left", va="top", color="white", fontsize=8,
                        bbox={"facecolor": "black", "alpha": 0.6, "pad": 1.5, "linewidth": 0})
            if row == 0:
                ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(f"{modality}\n{case_id}, slice {z}", fontsize=9)
    from matplotlib.patches import Patch
    handles = [Patch(color=colors[v], label=names[v]) for v in sorted(label_values) if v != 0]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, (0.22 * n_legend_rows + 0.05) / fig.get_figheight(), 1, 1))
    fig.savefig(output_file, dpi=150)
    plt.close(fig)
    return output_file


# ----------------------------------------------------------------------------------------------------------------------
# everything
# ----------------------------------------------------------------------------------------------------------------------
def write_report(results_folder: str, output_folder: Optional[str] = None, metrics: Sequence[str] = ("Dice",),
                 settings: Optional[Sequence[str]] = None, names: Optional[Sequence[str]] = None,
                 dataset_json=None, image_folder: Optional[str] = None, cases: Optional[Sequence[str]] = None,
                 title: Optional[str] = None) -> Dict[str, str]:
    """Writes report.md, tables.csv, per_case.csv, tables.tex and the PNG figures; returns {name: path}.

    The qualitative figure needs image_folder (the images the predictions were made from) and a dataset.json
    (given, or found next to the summaries)."""
    output_folder = output_folder or os.path.join(results_folder, "report")
    os.makedirs(output_folder, exist_ok=True)
    dataset = load_dataset_json(dataset_json) if dataset_json is not None else None
    df = load_case_metrics(results_folder, settings, names, dataset)
    title = title or read_report_settings(results_folder).get("title") or os.path.basename(
        os.path.abspath(results_folder))
    paths = {}
    all_stats = []
    md = [f"# {title}", "",
          "Rows: settings; columns: classes per modality and their average. Cells: mean ± sample std over folds "
          "of the per-fold mean over the modality's test cases (no ± with one fold); best value per column in bold. "
          "Dice/IoU/RVD in %, HD95/ASSD in mm.", ""]
    folds = df.groupby("setting", observed=True)["fold"].nunique()
    n_cases = df.groupby(["setting", "modality"], observed=True)["case_id"].nunique()
    md += ["Folds per setting: " + ", ".join(f"{s}: {n}" for s, n in folds.items()) + ".",
           "Cases per setting and modality (over all folds): " +
           ", ".join(f"{s}/{m}: {n}" for (s, m), n in n_cases.items()) + ".", ""]
    tex = []
    for metric in metrics:
        stats = fold_statistics(df, metric)
        all_stats.append(stats)
        md += [f"## {metric}", "", markdown_tables(stats)]
        tex.append(latex_table(stats))
        key = f"bars_{metric}"
        paths[key] = plot_class_bars(stats, os.path.join(output_folder, f"{metric.lower()}_per_class.png"))
        paths[f"boxes_{metric}"] = plot_modality_boxes(df, metric, os.path.join(
            output_folder, f"{metric.lower()}_per_modality_boxplot.png"))
        md += [f"![{metric} per class]({os.path.basename(paths[key])})", "",
               f"![{metric} per modality]({os.path.basename(paths[f'boxes_{metric}'])})", ""]
    if image_folder is not None:
        if dataset is None:
            dataset = _nearest_dataset_json(find_summaries(results_folder)[0]["path"], results_folder)
        if dataset is None:
            raise EvaluationError("The qualitative figure needs the dataset.json (labels, file_ending): pass -djfile.")
        paths["qualitative"] = plot_qualitative(df, image_folder, dataset, os.path.join(output_folder,
                                                                                        "qualitative.png"), cases)
        md += ["## Qualitative results", "", "Per modality, the case with the median Dice (over settings); the slice "
               "with the most reference foreground.", "", "![qualitative](qualitative.png)", ""]
    stats = pd.concat(all_stats, ignore_index=True)
    # the CSVs hold raw values (Dice as a fraction, distances in mm), unlike the display tables
    paths["tables_csv"] = os.path.join(output_folder, "tables.csv")
    stats.to_csv(paths["tables_csv"], index=False)
    paths["per_case_csv"] = os.path.join(output_folder, "per_case.csv")
    df.to_csv(paths["per_case_csv"], index=False)
    paths["latex"] = os.path.join(output_folder, "tables.tex")
    with open(paths["latex"], "w", encoding="utf-8") as f:
        f.write("% needs \\usepackage{booktabs,graphicx}\n" + "\n".join(tex))
    paths["markdown"] = os.path.join(output_folder, "report.md")
    with open(paths["markdown"], "w", encoding="utf-8") as f:
        f.write("\n".join(md))
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nnunet_mulmod_report",
        description="Tables (Markdown, CSV, LaTeX) and figures (per-class bars, per-modality box plots, qualitative "
                    "figure) from a results folder holding <setting>/fold_<k>/summary.json files.")
    parser.add_argument("results_folder", help="folder with summary.json files (see docs/evaluation.md)")
    parser.add_argument("-o", default=None, help="output folder. Default: RESULTS_FOLDER/report")
    parser.add_argument("-m", "--metrics", nargs="+", default=["Dice"],
                        help="metrics to tabulate and plot (Dice IoU HD95 ASSD RVD). Default: Dice")
    parser.add_argument("--settings", nargs="+", default=None,
                        help="setting ids (folder paths relative to RESULTS_FOLDER) in row order. Default: "
                             "report_settings.json, else all, sorted")
    parser.add_argument("--names", nargs="+", default=None, help="display names for --settings")
    parser.add_argument("-djfile", default=None, help="dataset.json. Default: the nearest one above each summary")
    parser.add_argument("-img", default=None,
                        help="image folder (imagesTs/imagesTr) for the qualitative figure; without it no figure")
    parser.add_argument("--cases", nargs="+", default=None,
                        help="case ids (rows) of the qualitative figure. Default: per modality the median-Dice case")
    parser.add_argument("--title", default=None, help="report title")
    args = parser.parse_args(argv)
    try:
        paths = write_report(args.results_folder, args.o, args.metrics, args.settings, args.names, args.djfile,
                             args.img, args.cases, args.title)
    except EvaluationError as e:
        print(f"nnunet_mulmod_report: error: {e}", file=sys.stderr)
        return 1
    with open(paths["markdown"]) as f:
        print(f.read())
    print("wrote:\n  " + "\n  ".join(paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
