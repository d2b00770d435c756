"""Tables and figures from one results folder, in the papers' layout.

A results folder is any folder holding summary.json files (ours from evaluate_folder, or nnU-Net's own):
the folder above a ``fold_<k>`` component names the *setting*, ``fold_<k>`` the fold, e.g.::

    <results>/<setting>/fold_<k>/summary.json                     (our experiment layout)
    <results>/<setting>/fold_<k>/validation/summary.json          (nnUNet_results/DatasetXXX as is)
    <results>/<setting>/summary.json                              (one fold)

An optional ``<results>/report_settings.json`` fixes the row order and display names:
``{"title": "...", "settings": [{"name": "ALT->CT/MR w/ text", "path": "<setting>"}, ...]}``.

Python API::

    from nnunet_mulmod.evaluation.report import write_report
    paths = write_report("experiments/table2", metrics=("Dice", "HD95"), image_folder="imagesTs")

Tables (evaluation/tables.py): rows = settings, columns = classes per modality + Avg; each cell is the mean over folds of the
per-fold mean over that modality's cases, +- the sample std over folds (no spread with one fold).
"Avg" is the mean over the classes that have a value (per fold, then over folds).
Figures: evaluation/figures.py.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, Optional, Sequence

import pandas as pd

from .evaluate_folder import EvaluationError, load_dataset_json
from .figures import plot_class_bars, plot_modality_boxes, plot_qualitative
from .tables import (find_summaries, fold_statistics, latex_table, load_case_metrics, markdown_tables,
                     nearest_dataset_json, read_report_settings)


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
            dataset = nearest_dataset_json(find_summaries(results_folder)[0]["path"], results_folder)
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
