"""Evaluation speed: nnunet_mulmod's evaluate_folder vs nnU-Net's compute_metrics_on_folder, same cases.

Writes a synthetic test set (default 30 cases of 64^3 with 5 classes, anisotropic spacing) and times, with the
same number of worker processes and the same (spawn) pool start-up included:
  1. nnunetv2.evaluation.evaluate_predictions.compute_metrics_on_folder (Dice/IoU)
  2. evaluate_folder(..., surface_metrics=False)  (Dice/IoU/RVD-only mode; target <= 1.2x of 1.)
  3. evaluate_folder(..., surface_metrics=True)   (adds HD95 and ASSD; the extra cost is reported)
Each is run --repeats times, interleaved; the median is reported. Also checks that both give the same Dice.
Because the folder-level times include the worker pools' start-up (nnU-Net's spawned workers import torch), the
per-case work is also timed in-process, one case after the other, without pools:
  4. nnU-Net's compute_metrics per case vs our evaluate_case per case (Dice-only, then with surface distances).

    python benchmarks/bench_evaluation.py [-n 30] [-s 64] [-c 5] [-np 2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=30, help="number of cases")
    parser.add_argument("-s", type=int, default=64, help="edge length of the cubic volumes")
    parser.add_argument("-c", type=int, default=5, help="number of foreground classes")
    parser.add_argument("-np", type=int, default=2, help="worker processes (both tools)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from nnunet_mulmod.evaluation.evaluate_folder import (evaluate_case, evaluate_folder, labels_from_dataset_json,
                                                          load_dataset_json)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from synthetic import make_synthetic_dataset  # the tests' data writer (not part of the package)
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics, compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_synthetic_dataset(tmp, n_cases=args.n, shape=(args.s,) * 3, n_classes=args.c,
                                       spacing=(2.5, 0.8, 0.8), methods={"model": {"shift": 2, "drop": 0.05}},
                                       with_images=False, seed=1)
        ref, pred, dj = paths["labels"], paths["predictions"]["model"][0], paths["dataset_json"]
        labels = list(range(1, args.c + 1))
        runs = {
            "nnU-Net compute_metrics_on_folder": lambda: compute_metrics_on_folder(
                ref, pred, os.path.join(tmp, "nnunet.json"), SimpleITKIO(), ".nii.gz", labels, None, args.np),
            "ours, Dice/IoU only": lambda: evaluate_folder(ref, pred, dj, os.path.join(tmp, "ours_dice.json"),
                                                          num_processes=args.np, surface_metrics=False,
                                                          progress=False),
            "ours, with HD95/ASSD": lambda: evaluate_folder(ref, pred, dj, os.path.join(tmp, "ours_all.json"),
                                                           num_processes=args.np, surface_metrics=True,
                                                           progress=False),
        }
        rw = SimpleITKIO()
        cases = sorted(f for f in os.listdir(ref) if f.endswith(".nii.gz"))
        labels_or_regions, ignore, allowed, _ = labels_from_dataset_json(load_dataset_json(dj))
        runs["no pool, case by case: nnU-Net compute_metrics"] = lambda: [
            compute_metrics(os.path.join(ref, c), os.path.join(pred, c), rw, labels) for c in cases]
        runs["no pool, case by case: ours, Dice/IoU only"] = lambda: [
            evaluate_case(c, os.path.join(ref, c), os.path.join(pred, c), rw, labels_or_regions, allowed, ignore,
                          False) for c in cases]
        runs["no pool, case by case: ours, with HD95/ASSD"] = lambda: [
            evaluate_case(c, os.path.join(ref, c), os.path.join(pred, c), rw, labels_or_regions, allowed, ignore,
                          True) for c in cases]
        times = {k: [] for k in runs}
        results = {}
        for _ in range(args.repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                results[name] = run()
                times[name].append(time.perf_counter() - start)

    nnunet_dice = results["nnU-Net compute_metrics_on_folder"]["foreground_mean"]["Dice"]
    ours_dice = results["ours, Dice/IoU only"]["foreground_mean"]["Dice"]
    assert np.isclose(nnunet_dice, ours_dice), (nnunet_dice, ours_dice)

    print(f"{args.n} cases of {args.s}^3, {args.c} classes, -np {args.np}, median of {args.repeats} runs "
          f"(foreground Dice {ours_dice:.4f}, identical in both)")
    median = {k: statistics.median(t) for k, t in times.items()}
    base = median["nnU-Net compute_metrics_on_folder"]
    base_in_process = median["no pool, case by case: nnU-Net compute_metrics"]
    for name, t in median.items():
        reference = base_in_process if name.startswith("no pool") else base
        print(f"  {name:<46} {t:7.2f} s   {t / reference:5.2f}x nnU-Net")
    extra = median["ours, with HD95/ASSD"] - median["ours, Dice/IoU only"]
    extra_in_process = (median["no pool, case by case: ours, with HD95/ASSD"]
                        - median["no pool, case by case: ours, Dice/IoU only"])
    print(f"  surface distances add {extra:.2f} s to the folder ({extra_in_process / args.n * 1000:.0f} ms per case "
          f"in-process)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
