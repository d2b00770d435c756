"""Every figure of the package: the report's (per-class bars, per-modality box plots, the qualitative figure,
MulModSeg Figure 2) and the training curves of a checkpoint; ``nnunet_mulmod_demo`` draws its overlay with
:func:`plot_qualitative` too.

matplotlib with the Agg backend (files only: works on servers without a display).
"""
from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from .evaluate_folder import EvaluationError
from .tables import PERCENT_METRICS, case_means, display_scale, display_unit, modality_order, wide_table
from nnunet_mulmod.modality import modality_family

# The CT display window in HU: abdominal soft tissue, width 400 HU, level 40 HU (-160..240), the usual radiology
# preset for the abdominal organs of these datasets (liver, spleen, kidneys, pancreas read at W350-400, L40-50).
# The demo used W450/L25 (-200..250) before: no preset, and fat (-100) looked as grey as the organs' edges.
CT_SOFT_TISSUE_WINDOW = (-160.0, 240.0)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only: works on servers without a display
    import matplotlib.pyplot as plt
    return plt


def plot_class_bars(stats: pd.DataFrame, output_file: str) -> str:
    """Per-class bar chart, one bar per setting (error bars: std over folds), one panel per modality."""
    plt = _pyplot()
    metric = stats["metric"].iloc[0]
    modalities = modality_order(stats)
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
        ax.set_ylabel(f"{metric}{display_unit(metric)}")
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


def plot_modality_boxes(df: pd.DataFrame, metric: str, output_file: str) -> str:
    """Box plot per modality of the per-case class-averaged metric, one box per setting, cases as dots."""
    plt = _pyplot()
    per_case = case_means(df, metric)
    modalities = modality_order(per_case)
    settings = [s for s in df["setting"].cat.categories if s in set(per_case["setting"])] \
        if hasattr(df["setting"], "cat") else list(dict.fromkeys(per_case["setting"]))
    fig, axes = plt.subplots(1, len(modalities), squeeze=False, sharey=True,
                             figsize=(max(3.0, 0.9 * len(settings) + 1.2) * len(modalities), 4.0))
    rng = np.random.default_rng(0)
    colors = plt.get_cmap("tab10")
    for ax, modality in zip(axes[0], modalities):
        data = [per_case.loc[(per_case["modality"] == modality) & (per_case["setting"] == s), "value"].dropna()
                .to_numpy() * display_scale(metric) for s in settings]
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
    axes[0, 0].set_ylabel(f"{metric}{display_unit(metric)} per case (mean over classes)")
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


def display_window(image_slice: np.ndarray, modality: str) -> Tuple[float, float]:
    """Grey-value range shown: CT in HU, :data:`CT_SOFT_TISSUE_WINDOW`; other modalities (arbitrary units) the
    1st-99th percentile of the slice."""
    if modality_family(modality) == "CT":
        return CT_SOFT_TISSUE_WINDOW
    low, high = (float(v) for v in np.percentile(image_slice, [1, 99]))
    return low, high if high > low else low + 1.0


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
    from .evaluate_folder import reader_writer_for
    plt = _pyplot()
    file_ending = dataset_json["file_ending"]
    label_values = [int(v) for k, v in dataset_json["labels"].items() if k != "ignore" and not isinstance(v, list)]
    names = {int(v): k for k, v in dataset_json["labels"].items() if k != "ignore" and not isinstance(v, list)}
    colors = label_colors(max(label_values))
    if cases is None:
        cases_by_modality = _representative_cases(df)
        cases = [cases_by_modality[m] for m in modality_order(pd.DataFrame({"modality": list(cases_by_modality)}))]
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
                     "window": display_window(image[z], modality)})

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
# training curves
# ----------------------------------------------------------------------------------------------------------------------
def loss_curves_from_checkpoint(checkpoint_file: str) -> Dict[str, List[float]]:
    """Every per-epoch list in the checkpoint's logging dict whose key names a loss (train_loss, val_loss,
    train_loss_CT, train_loss_MR, ...). Empty if the file has none."""
    import torch
    checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
    logging = checkpoint.get("logging", {}) or {}
    return {k: [float(v) for v in values] for k, values in logging.items()
            if "loss" in k and isinstance(values, (list, tuple)) and len(values) > 0}


def _readable_curve_name(key: str) -> str:
    """nnU-Net's logging keys as legend text: train_losses -> 'train loss', train_loss_CT -> 'train loss, CT batches'."""
    if key == "train_losses":
        return "train loss"
    if key == "val_losses":
        return "validation loss"
    if key.startswith("train_loss_"):
        return f"train loss, {key[len('train_loss_'):]} batches"
    return key


def plot_training_curves(curves: Mapping[str, Sequence[float]], output_file: str,
                         pseudo_dice: Optional[Sequence[float]] = None, title: str = "") -> str:
    """Loss per epoch, one line per logged loss (per-modality training losses dashed)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, values in curves.items():
        style = "--" if name.startswith("train_loss_") else "-"
        ax.plot(np.arange(len(values)), values, style, label=_readable_curve_name(name), linewidth=1.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if pseudo_dice is not None and len(pseudo_dice):
        ax2 = ax.twinx()
        ax2.plot(np.arange(len(pseudo_dice)), pseudo_dice, ":", color="black", label="mean pseudo Dice (validation)")
        ax2.set_ylabel("pseudo Dice")
        ax2.set_ylim(0, 1)
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower left", fontsize=8)
    else:
        ax.legend(fontsize=8)
    ax.set_title(title or "Training curves")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
    fig.savefig(output_file, dpi=110)
    plt.close(fig)
    return output_file
