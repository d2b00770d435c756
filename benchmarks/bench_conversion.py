"""Conversion time over a plain SimpleITK read + write of the same files (target <= 1.3x).

Builds an AMOS-shaped source folder of synthetic CT/MR volumes and labels, then times, in this one run and one
process each:
- baseline: ``sitk.ReadImage`` + ``sitk.WriteImage(..., useCompression=True)`` of every image and label;
- the AMOS converter (all 15 labels: images and labels checked, then copied) and with ``--organs 13`` (labels
  remapped and re-written).
Each is timed ``--repeats`` times and the fastest run is kept (the machine may be shared).

    python benchmarks/bench_conversion.py [--cases 8] [--shape 64 256 256] [--repeats 2]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np
import SimpleITK as sitk


def make_source(folder: str, n_cases: int, shape) -> list:
    rng = np.random.default_rng(0)
    files = []
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(folder, sub))
    for i in range(n_cases):
        case = f"amos_{(i + 1) if i % 3 else 501 + i:04d}"
        body = rng.normal(40, 30, shape).astype(np.int16)
        body[:, :, : shape[2] // 8] = -1000
        label = np.zeros(shape, np.uint8)
        for organ in range(1, 16):
            z = (organ * 7) % max(1, shape[0] - 8)
            label[z:z + 8, 10 * organ % shape[1]:10 * organ % shape[1] + 20, 40:80] = organ
        for sub, array in (("imagesTr", body), ("labelsTr", label)):
            image = sitk.GetImageFromArray(array)
            image.SetSpacing((0.8, 0.8, 2.5))
            path = os.path.join(folder, sub, case + ".nii.gz")
            sitk.WriteImage(image, path, useCompression=True)
            files.append(path)
    return files


def time_baseline(files, out_folder: str) -> float:
    os.makedirs(out_folder, exist_ok=True)
    start = time.perf_counter()
    for i, path in enumerate(files):
        sitk.WriteImage(sitk.ReadImage(path), os.path.join(out_folder, f"{i}.nii.gz"), useCompression=True)
    return time.perf_counter() - start


def time_conversion(source: str, raw: str, organs: int) -> float:
    from dataset_conversion.amos import convert_amos
    start = time.perf_counter()
    convert_amos(source, 999, "Bench", organs=organs, num_processes=1, overwrite=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 256, 256), help="z y x voxels per volume")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["nnUNet_raw"] = raw = os.path.join(tmp, "raw")
        os.makedirs(raw)
        source = os.path.join(tmp, "amos22")
        files = make_source(source, args.cases, tuple(args.shape))
        size_mb = sum(os.path.getsize(f) for f in files) / 2 ** 20
        baseline = min(time_baseline(files, os.path.join(tmp, f"plain{r}")) for r in range(args.repeats))
        shutil.rmtree(os.path.join(tmp, "plain0"), ignore_errors=True)
        results = {organs: min(time_conversion(source, raw, organs) for _ in range(args.repeats)) for organs in (15, 13)}
    print(f"{args.cases} cases x (image + label), {tuple(args.shape)} voxels, {size_mb:.1f} MB compressed")
    print(f"plain SimpleITK read+write: {baseline:.2f} s")
    for organs, seconds in results.items():
        print(f"AMOS converter, {organs} labels: {seconds:.2f} s  -> ratio {seconds / baseline:.2f}x (target <= 1.3x)")


if __name__ == "__main__":
    main()
