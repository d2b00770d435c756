"""Evaluation speed: nnunet_mulmod's evaluate_folder vs nnU-Net's compute_metrics_on_folder, same cases.

Writes a synthetic test set (default 30 cases of 64^3 with 5 classes, anisotropic spacing) and times, with the
same number of worker processes and the same (spawn) pool start-up included:
  1. nnunetv2.evaluation.evaluate_predictions.compute_metrics_on_folder (Dice/IoU)
  2. evaluate_folder(..., surface_metrics=False)  (Dice/IoU/RVD-only mode; target <= 1.2x of 1.)
  3. evaluate_folder(..., surface_metrics=True)   (adds HD95 and ASSD; the extra cost is reported)
Each is run --repeats times, interleaved; the median is reported. Also checks that both give the same Dice.

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

    from evaluation.evaluate_folder import evaluate_folder
    from evaluation.synthetic import make_synthetic_dataset
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
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

    base = statistics.median(times["nnU-Net compute_metrics_on_folder"])
    print(f"{args.n} cases of {args.s}^3, {args.c} classes, -np {args.np}, median of {args.repeats} runs "
          f"(foreground Dice {ours_dice:.4f}, identical in both)")
    for name, t in times.items():
        print(f"  {name:<36} {statistics.median(t):7.2f} s   {statistics.median(t) / base:5.2f}x nnU-Net")
    dice_only, full = statistics.median(times["ours, Dice/IoU only"]), statistics.median(times["ours, with HD95/ASSD"])
    print(f"  surface distances add {full - dice_only:.2f} s ({(full - dice_only) / args.n * 1000:.0f} ms per case)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
