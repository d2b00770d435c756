"""Conversion time over a plain SimpleITK read + write of the same files (target <= 1.3x).

Builds an AMOS-shaped source folder of synthetic CT/MR volumes and labels, then times, in this one run and one
process each:
- baseline: ``sitk.ReadImage`` + ``sitk.WriteImage(..., useCompression=True)`` of every image and label;
- the AMOS converter (all 15 labels: images and labels checked, then copied) and with ``--organs 13`` (labels
  remapped and re-written);
- the real CHAOS CT case (if ../shared/data is there): SimpleITK's series reader + PNG reads + two NIfTI
  writes, against the CHAOS converter.
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
    from nnunet_mulmod.dataset_conversion.amos import convert_amos
    start = time.perf_counter()
    convert_amos(source, 999, "Bench", organs=organs, num_processes=1, overwrite=True)
    return time.perf_counter() - start


CHAOS_SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                            "chaos_ct_sample", "CT", "1")


def time_chaos(tmp: str, repeats: int):
    """The real CHAOS CT case (78 DICOM slices + 78 PNG masks): SimpleITK series read + PNG reads + two NIfTI
    writes, against the CHAOS converter (header checks, position ordering, mask pairing)."""
    if not os.path.isdir(CHAOS_SAMPLE):
        return None
    from nnunet_mulmod.dataset_conversion.chaos import convert_chaos
    train = os.path.join(tmp, "chaos", "Train_Sets", "CT")
    os.makedirs(train)
    os.symlink(os.path.abspath(CHAOS_SAMPLE), os.path.join(train, "1"))

    def plain():
        start = time.perf_counter()
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(os.path.join(CHAOS_SAMPLE, "DICOM_anon")))
        image = reader.Execute()
        ground = os.path.join(CHAOS_SAMPLE, "Ground")
        masks = [sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(ground, f))) for f in sorted(os.listdir(ground))]
        label = sitk.GetImageFromArray((np.stack(masks) > 0).astype(np.uint8))
        label.CopyInformation(image)
        sitk.WriteImage(image, os.path.join(tmp, "chaos_plain.nii.gz"), useCompression=True)
        sitk.WriteImage(label, os.path.join(tmp, "chaos_plain_label.nii.gz"), useCompression=True)
        return time.perf_counter() - start

    def converter():
        start = time.perf_counter()
        convert_chaos(os.path.join(tmp, "chaos"), 998, "BenchCHAOS", sequences=["CT"], num_processes=1,
                      overwrite=True)
        return time.perf_counter() - start

    return min(plain() for _ in range(repeats)), min(converter() for _ in range(repeats))


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
        chaos = time_chaos(tmp, args.repeats)
    print(f"{args.cases} cases x (image + label), {tuple(args.shape)} voxels, {size_mb:.1f} MB compressed")
    print(f"plain SimpleITK read+write: {baseline:.2f} s")
    for organs, seconds in results.items():
        print(f"AMOS converter, {organs} labels: {seconds:.2f} s  -> ratio {seconds / baseline:.2f}x (target <= 1.3x)")
    if chaos is None:
        print("CHAOS: skipped (../shared/data/chaos_ct_sample not found)")
    else:
        print(f"CHAOS real CT case (78 DICOM + 78 PNG -> 2 NIfTI): plain SimpleITK {chaos[0]:.2f} s, converter "
              f"{chaos[1]:.2f} s -> ratio {chaos[1] / chaos[0]:.2f}x (target <= 1.3x)")


if __name__ == "__main__":
    main()
