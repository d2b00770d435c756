"""Figures of the demo: per-modality training curves (from the checkpoint's log) and an overlay PNG.

matplotlib with the Agg backend (no display needed). Arrays are [z, y, x] as SimpleITK returns them.
"""
from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

# Colours of labels 1..N (0 stays transparent): distinct and readable on a grey image.
LABEL_COLORS = np.array([
    [0.12, 0.47, 0.71], [1.00, 0.50, 0.05], [0.17, 0.63, 0.17], [0.84, 0.15, 0.16], [0.58, 0.40, 0.74],
    [0.55, 0.34, 0.29], [0.89, 0.47, 0.76], [0.74, 0.74, 0.13], [0.09, 0.75, 0.81], [0.50, 0.50, 0.50]])


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


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
    fig.savefig(output_file, dpi=110)
    plt.close(fig)
    return output_file


def _colorize(label_slice: np.ndarray) -> np.ndarray:
    """RGBA image: labels in LABEL_COLORS, background transparent."""
    rgba = np.zeros(label_slice.shape + (4,), np.float32)
    for value in np.unique(label_slice):
        if value == 0:
            continue
        rgba[label_slice == value, :3] = LABEL_COLORS[(int(value) - 1) % len(LABEL_COLORS)]
        rgba[label_slice == value, 3] = 0.55
    return rgba


def display_window(image_slice: np.ndarray, modality: str):
    """CT: abdominal soft-tissue window; others: 1st-99th percentile of the slice."""
    if modality.upper().startswith("CT"):
        return -200.0, 250.0
    low, high = np.percentile(image_slice, [1, 99])
    return float(low), float(high) if high > low else float(low + 1)


def plot_overlays(rows: Sequence[Mapping], label_names: Mapping[int, str], output_file: str,
                  spacing_zyx: Optional[Sequence[float]] = None) -> str:
    """One row per entry of ``rows`` (dicts with 'title', 'modality', 'image', 'truth', 'prediction',
    3D arrays [z, y, x]); columns: image, image + ground truth, image + prediction, on the axial slice
    with the most ground-truth foreground (the same slice in all three columns)."""
    plt = _pyplot()
    from matplotlib.patches import Patch
    fig, axes = plt.subplots(len(rows), 3, figsize=(10.5, 3.3 * len(rows) + 0.5), squeeze=False)
    for r, row in enumerate(rows):
        z = int(np.argmax((row["truth"] > 0).sum(axis=(1, 2))))
        image = row["image"][z]
        vmin, vmax = display_window(image, row["modality"])
        aspect = spacing_zyx[1] / spacing_zyx[2] if spacing_zyx is not None else 1.0
        for c, (overlay, name) in enumerate(((None, "image"), (row["truth"][z], "ground truth"),
                                             (row["prediction"][z], "prediction"))):
            ax = axes[r, c]
            # Radiological display: image rows are anterior (top) to posterior (bottom).
            ax.imshow(image, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest", aspect=aspect)
            if overlay is not None:
                ax.imshow(_colorize(overlay), interpolation="nearest", aspect=aspect)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{row['title']}, axial slice {z}" if c == 0 else name, fontsize=9)
    handles = [Patch(color=LABEL_COLORS[(v - 1) % len(LABEL_COLORS)], label=n)
               for v, n in sorted(label_names.items()) if v != 0]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
    fig.savefig(output_file, dpi=110)
    plt.close(fig)
    return output_file
