"""CHAOS 2019 (CT liver, MR T1-DUAL/T2-SPIR abdominal organs; DICOM + PNG) -> nnU-Net raw dataset.

Source layout (https://chaos.grand-challenge.org, zenodo record 3431873)::

    Train_Sets/CT/<id>/DICOM_anon/i0000,0000b.dcm ...      Train_Sets/CT/<id>/Ground/liver_GT_000.png ...
    Train_Sets/MR/<id>/T1DUAL/DICOM_anon/InPhase/*.dcm     Train_Sets/MR/<id>/T1DUAL/DICOM_anon/OutPhase/*.dcm
    Train_Sets/MR/<id>/T1DUAL/Ground/*.png                 (one mask stack for in- and out-phase: same grid)
    Train_Sets/MR/<id>/T2SPIR/DICOM_anon/*.dcm             Train_Sets/MR/<id>/T2SPIR/Ground/*.png

``-i`` may point at the folder holding ``Train_Sets`` or at ``Train_Sets`` itself (the folder with CT/, MR/).

How slices and masks are put together
- DICOM is read with pydicom (headers) and SimpleITK (pixels, rescale slope/intercept applied, so CT is in
  HU). Slices are ordered along the slice normal by ImagePositionPatient; the slice spacing comes from those
  positions (the CT SliceThickness tag is not the spacing: 3.2 vs 2.0 mm on case 1).
- The k-th PNG (sorted by name) belongs to the k-th DICOM file sorted by *file name*, which is the opposite of
  the position order on the CT cases (verified on CT case 1: with the wrong pairing the mean CT value inside the
  liver mask is far below the liver's ~100-180 HU). Each mask is therefore attached to its file, then the
  files are ordered by position.
- A folder whose files belong to different series (SeriesInstanceUID, orientation, matrix size, pixel spacing
  or MR echo time differ, or two slices share a position) or whose slice positions have a gap is an error
  naming the case: nnU-Net would silently learn from a wrong volume.
- Masks: CT PNGs are 1-bit liver masks (``> 0``). MR PNG grey ranges: 55-70 liver, 110-135 right kidney,
  175-200 left kidney, 240-255 spleen; any other non-zero value is an error naming the case and slice.

Modes
- ``unpaired`` (MulModSeg): every sequence of every patient is its own single-channel case with its own
  modality tag: ``CT``, ``MR-T1-in``, ``MR-T1-out``, ``MR-T2`` (case ids ``ct_01``, ``t1in_01``,
  ``t1out_01``, ``t2_01``). CT ground truth is liver only, so ``--organs`` defaults to ``liver`` when CT
  is included (else the CT cases would teach that kidneys and spleen are background) and to ``all``
  otherwise. A patient-grouped 5-fold splits_final.json keeps all sequences of one patient in one fold.
- ``aligned`` (Zeus): one MR case per patient with channels T1 in-phase (0000) and out-phase (0001), plus
  ``--with_t2`` T2-SPIR resampled (linear) onto the T1 grid by physical coordinates (0002; the two
  acquisitions are not registered, the patient may have moved). Modality per channel in
  ``channel_modalities``. ``--union`` maps all organs to one foreground label.
"""
from __future__ import annotations

import argparse
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from .common import (ConversionError, FILE_ENDING, add_common_arguments, add_intensity_argument,
                     dataset_path, dataset_writer, main_wrapper, mixed_channel_name, run_jobs,
                     write_dataset_json, write_image, write_splits)

MR_GREY_RANGES = ((55, 70, 1), (110, 135, 2), (175, 200, 3), (240, 255, 4))  # (low, high, organ id)
ORGANS = {1: "liver", 2: "right_kidney", 3: "left_kidney", 4: "spleen"}
SEQUENCES = {  # name -> (modality tag, case prefix, image folder, mask folder) relative to the patient folder
    "CT": ("CT", "ct", "DICOM_anon", "Ground"),
    "T1in": ("MR-T1-in", "t1in", "T1DUAL/DICOM_anon/InPhase", "T1DUAL/Ground"),
    "T1out": ("MR-T1-out", "t1out", "T1DUAL/DICOM_anon/OutPhase", "T1DUAL/Ground"),
    "T2": ("MR-T2", "t2", "T2SPIR/DICOM_anon", "T2SPIR/Ground"),
}


# ----------------------------------------------------------------------------------------------------------------
# DICOM and PNG reading
# ----------------------------------------------------------------------------------------------------------------
def read_dicom_series(folder: str, case: str) -> Tuple[sitk.Image, List[str]]:
    """The volume, slices ordered along the normal by ImagePositionPatient, and its file names in that order."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not os.path.isdir(folder):
        raise ConversionError(f"Case {case}: DICOM folder {folder} does not exist.")
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(".dcm") and not f.startswith("."))
    if not files:
        raise ConversionError(f"Case {case}: no .dcm files in {folder}.")
    headers = []
    for f in files:
        try:
            ds = pydicom.dcmread(os.path.join(folder, f), stop_before_pixels=True)
            headers.append({
                "series": str(ds.get("SeriesInstanceUID", "")),
                "orientation": tuple(round(float(v), 4) for v in ds.ImageOrientationPatient),
                "position": np.array([float(v) for v in ds.ImagePositionPatient]),
                "matrix": (int(ds.Rows), int(ds.Columns)),
                "pixel_spacing": tuple(round(float(v), 4) for v in ds.get("PixelSpacing", (1, 1))),
                "echo_time": str(ds.get("EchoTime", "")),
            })
        except (InvalidDicomError, OSError, EOFError, ValueError, AttributeError) as e:
            raise ConversionError(f"Case {case}: cannot read DICOM file {os.path.join(folder, f)} ({type(e).__name__}: "
                                  f"{e}). Re-extract the download or remove the case.") from None
    for key, what in (("series", "SeriesInstanceUID"), ("orientation", "ImageOrientationPatient"),
                      ("matrix", "Rows/Columns"), ("pixel_spacing", "PixelSpacing"), ("echo_time", "EchoTime")):
        values = {}
        for f, h in zip(files, headers):
            values.setdefault(h[key], []).append(f)
        if len(values) > 1:
            shown = "; ".join(f"{v!r}: {len(fs)} files (e.g. {fs[0]})" for v, fs in list(values.items())[:3])
            raise ConversionError(f"Case {case}: {folder} mixes DICOM series ({what} differs: {shown}). Keep one "
                                  f"series per folder (move the other files out) and re-run.")
    orientation = np.array(headers[0]["orientation"])
    normal = np.cross(orientation[:3], orientation[3:])
    along_normal = np.array([h["position"] @ normal for h in headers])
    order = np.argsort(along_normal, kind="stable")
    sorted_positions = along_normal[order]
    if len(files) > 1:
        steps = np.diff(sorted_positions)
        if steps.min() < 1e-3:
            i = int(np.argmin(steps))
            raise ConversionError(f"Case {case}: {files[order[i]]} and {files[order[i + 1]]} in {folder} lie at the "
                                  f"same slice position: two series are mixed in one folder. Keep one series.")
        step = float(np.median(steps))
        gaps = np.flatnonzero(np.abs(steps - step) > 0.1 * step)
        if len(gaps):
            i = int(gaps[0])
            raise ConversionError(
                f"Case {case}: slice positions in {folder} are not evenly spaced: {steps[i]:.3g} mm between "
                f"{files[order[i]]} and {files[order[i + 1]]} where the series has {step:.3g} mm (missing slices?). "
                f"Restore the missing files or remove the case.")
    ordered_files = [files[i] for i in order]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([os.path.join(folder, f) for f in ordered_files])
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise ConversionError(f"Case {case}: cannot read the pixel data of the DICOM series in {folder} (truncated or "
                              f"corrupt file: {str(e).strip().splitlines()[-1]}). Re-extract the download.") from None
    if len(files) > 1:  # ITK derives it from the first two slices only; take the robust median
        image.SetSpacing(image.GetSpacing()[:2] + (step,))
    return image, ordered_files


def read_mask_stack(ground_folder: str, dicom_files_by_name: List[str], ordered_files: List[str],
                    matrix: Tuple[int, int], case: str) -> List[Tuple[str, np.ndarray]]:
    """(png path, 2-D mask) per slice in ``ordered_files`` order. PNG k (by name) <-> DICOM file k (by name)."""
    if not os.path.isdir(ground_folder):
        raise ConversionError(f"Case {case}: ground-truth folder {ground_folder} does not exist. Restore it or "
                              f"remove the case.")
    pngs = sorted(f for f in os.listdir(ground_folder) if f.lower().endswith(".png") and not f.startswith("."))
    if len(pngs) != len(dicom_files_by_name):
        raise ConversionError(f"Case {case}: {len(pngs)} PNG masks in {ground_folder} but {len(dicom_files_by_name)} "
                              f"DICOM slices: every slice needs its mask. Restore the missing files.")
    png_of_file = dict(zip(dicom_files_by_name, pngs))
    masks = []
    for f in ordered_files:
        path = os.path.join(ground_folder, png_of_file[f])
        try:
            mask = sitk.GetArrayFromImage(sitk.ReadImage(path))
        except RuntimeError:
            raise ConversionError(f"Case {case}: cannot read mask {path} (unreadable or truncated PNG). "
                                  f"Re-extract the download.") from None
        if mask.ndim == 3:  # RGB(A) export: grey masks have equal channels
            mask = mask[..., 0]
        if mask.shape != matrix:
            raise ConversionError(f"Case {case}: mask {path} is {mask.shape[1]}x{mask.shape[0]} pixels but the DICOM "
                                  f"slices are {matrix[1]}x{matrix[0]}: it does not belong to this series. Restore "
                                  f"{ground_folder} from the CHAOS download (each series folder's Ground/ holds its "
                                  f"own masks, one PNG per slice, in slice order), or remove the case.")
        masks.append((path, mask))
    return masks


def ct_mask_to_labels(masks: List[Tuple[str, np.ndarray]], case: str) -> np.ndarray:
    return np.stack([m > 0 for _, m in masks]).astype(np.uint8)  # 1-bit liver masks (0/1 or 0/255)


def mr_mask_to_labels(masks: List[Tuple[str, np.ndarray]], case: str) -> np.ndarray:
    out = np.zeros((len(masks),) + masks[0][1].shape, dtype=np.uint8)
    for z, (path, grey) in enumerate(masks):
        for low, high, organ in MR_GREY_RANGES:
            out[z][(grey >= low) & (grey <= high)] = organ
        stray = np.unique(grey[(grey > 0) & (out[z] == 0)])
        if len(stray):
            raise ConversionError(
                f"Case {case}: mask {path} has grey values {stray[:10].tolist()} outside the CHAOS ranges (55-70 "
                f"liver, 110-135 right kidney, 175-200 left kidney, 240-255 spleen). Fix or remove that mask.")
    return out


def labels_image(array: np.ndarray, image: sitk.Image, lookup: np.ndarray) -> sitk.Image:
    label = sitk.GetImageFromArray(lookup[array])
    label.CopyInformation(image)
    return label


def dicom_files_by_name(folder: str) -> List[str]:
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(".dcm") and not f.startswith("."))


# ----------------------------------------------------------------------------------------------------------------
# workers
# ----------------------------------------------------------------------------------------------------------------
def convert_sequence_case(job: dict) -> dict:
    """Unpaired mode: one sequence of one patient -> one single-channel case."""
    case = job["case"]
    image, ordered = read_dicom_series(job["dicom"], case)
    by_name = dicom_files_by_name(job["dicom"])
    matrix = (image.GetSize()[1], image.GetSize()[0])
    masks = read_mask_stack(job["ground"], by_name, ordered, matrix, case)
    array = ct_mask_to_labels(masks, case) if job["sequence"] == "CT" else mr_mask_to_labels(masks, case)
    write_image(labels_image(array, image, np.array(job["lookup"], dtype=np.uint8)), job["out_label"])
    write_image(image, job["out_images"][0])
    return {"case": case}


def convert_aligned_case(job: dict) -> dict:
    """Aligned mode: T1 in-phase + out-phase (+ T2 on the T1 grid) of one patient -> one multi-channel case."""
    case = job["case"]
    in_phase, ordered = read_dicom_series(job["dicom"]["T1in"], case)
    out_phase, _ = read_dicom_series(job["dicom"]["T1out"], case)
    if (in_phase.GetSize() != out_phase.GetSize()
            or not np.allclose(in_phase.GetOrigin(), out_phase.GetOrigin(), atol=0.1 * min(in_phase.GetSpacing()))
            or not np.allclose(in_phase.GetSpacing(), out_phase.GetSpacing(), rtol=1e-3)):
        raise ConversionError(f"Case {case}: T1 in-phase ({in_phase.GetSize()}, origin {in_phase.GetOrigin()}) and "
                              f"out-phase ({out_phase.GetSize()}, origin {out_phase.GetOrigin()}) are not on one grid; "
                              f"the aligned mode needs them to be. Use --mode unpaired for this data.")
    out_phase.CopyInformation(in_phase)
    matrix = (in_phase.GetSize()[1], in_phase.GetSize()[0])
    masks = read_mask_stack(job["ground"], dicom_files_by_name(job["dicom"]["T1in"]), ordered, matrix, case)
    label = labels_image(mr_mask_to_labels(masks, case), in_phase, np.array(job["lookup"], dtype=np.uint8))
    channels = [in_phase, out_phase]
    if "T2" in job["dicom"]:
        t2, _ = read_dicom_series(job["dicom"]["T2"], case)
        channels.append(sitk.Resample(t2, in_phase, sitk.Transform(), sitk.sitkLinear, 0.0, t2.GetPixelID()))
    for image, path in zip(channels, job["out_images"]):
        write_image(image, path)
    write_image(label, job["out_label"])
    return {"case": case}


# ----------------------------------------------------------------------------------------------------------------
# the converter
# ----------------------------------------------------------------------------------------------------------------
def find_train_sets(chaos_folder: str) -> str:
    for candidate in (os.path.join(chaos_folder, "Train_Sets"), chaos_folder):
        if os.path.isdir(os.path.join(candidate, "CT")) or os.path.isdir(os.path.join(candidate, "MR")):
            return candidate
    raise ConversionError(f"{chaos_folder} holds neither Train_Sets/ nor CT/ or MR/ folders. Pass the extracted "
                          f"CHAOS folder (the one with Train_Sets) or Train_Sets itself.")


def patients(folder: str) -> List[str]:
    if not os.path.isdir(folder):
        return []
    return sorted((p for p in os.listdir(folder) if p.isdigit() and os.path.isdir(os.path.join(folder, p))), key=int)


def patient_grouped_folds(cases: List[str], seed: int, n_folds: int = 5) -> List[Dict[str, List[str]]]:
    """5-fold CV where all sequences of one patient share a fold (t1in_01, t1out_01 and t2_01 are one person;
    nnU-Net's default random split would put them in different folds and leak). CT and MR ids are different
    people even when the numbers coincide."""
    groups: Dict[str, List[str]] = {}
    for case in cases:
        prefix, number = case.rsplit("_", 1)
        groups.setdefault(("CT" if prefix == "ct" else "MR") + number, []).append(case)
    keys = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(keys))
    n_folds = max(2, min(n_folds, len(keys)))
    fold_of = {keys[i]: rank % n_folds for rank, i in enumerate(order)}
    return [{"train": [c for k in keys if fold_of[k] != f for c in groups[k]],
             "val": [c for k in keys if fold_of[k] == f for c in groups[k]]} for f in range(n_folds)]


def convert_chaos(chaos_folder: str, dataset_id: int = 503, name: str = "CHAOS", mode: str = "unpaired",
                  sequences: Optional[List[str]] = None, organs: Optional[str] = None, with_t2: bool = False,
                  union: bool = False, intensity: str = "paper", seed: int = 12345, num_processes: int = 1,
                  overwrite: bool = False) -> str:
    train_sets = find_train_sets(chaos_folder)
    ct_patients, mr_patients = patients(os.path.join(train_sets, "CT")), patients(os.path.join(train_sets, "MR"))
    if mode == "unpaired":
        sequences = list(sequences or SEQUENCES)
        unknown = [s for s in sequences if s not in SEQUENCES]
        if unknown:
            raise ConversionError(f"Unknown --sequences {unknown}; choose from {list(SEQUENCES)}.")
    elif mode == "aligned":
        sequences = ["T1in", "T1out"] + (["T2"] if with_t2 else [])
    else:
        raise ConversionError(f"--mode must be 'unpaired' or 'aligned', got {mode!r}.")
    if organs is None:
        organs = "liver" if "CT" in sequences else "all"
    if organs not in ("liver", "all"):
        raise ConversionError(f"--organs must be 'liver' or 'all', got {organs!r}.")

    kept = [1] if organs == "liver" else [1, 2, 3, 4]
    lookup = [0] * 5  # source organ id -> target id
    for i, organ in enumerate(kept):
        lookup[organ] = 1 if union else i + 1
    labels = {"background": 0, **({"foreground" if len(kept) > 1 else ORGANS[kept[0]]: 1} if union else
                                   {ORGANS[o]: i + 1 for i, o in enumerate(kept)})}

    with dataset_writer(dataset_id, name, overwrite) as out:
        jobs, case_modalities = [], {}
        if mode == "unpaired":
            for sequence in sequences:
                modality, prefix, image_sub, ground_sub = SEQUENCES[sequence]
                group = ct_patients if sequence == "CT" else mr_patients
                for p in group:
                    case = f"{prefix}_{int(p):02d}"
                    base = os.path.join(train_sets, "CT" if sequence == "CT" else "MR", p)
                    jobs.append(dict(case=case, sequence=sequence, lookup=lookup,
                                     dicom=os.path.join(base, image_sub), ground=os.path.join(base, ground_sub),
                                     out_images=[os.path.join(out, "imagesTr", f"{case}_0000{FILE_ENDING}")],
                                     out_label=os.path.join(out, "labelsTr", case + FILE_ENDING)))
                    case_modalities[case] = modality
            worker, channel_modalities = convert_sequence_case, None
            vocabulary = [SEQUENCES[s][0] for s in SEQUENCES if s in sequences]
            channel_names = {0: mixed_channel_name(vocabulary, intensity)}
        else:
            for p in mr_patients:
                case = f"mr_{int(p):02d}"
                base = os.path.join(train_sets, "MR", p)
                jobs.append(dict(case=case, lookup=lookup, ground=os.path.join(base, SEQUENCES["T1in"][3]),
                                 dicom={s: os.path.join(base, SEQUENCES[s][2]) for s in sequences},
                                 out_images=[os.path.join(out, "imagesTr", f"{case}_{c:04d}{FILE_ENDING}")
                                             for c in range(len(sequences))],
                                 out_label=os.path.join(out, "labelsTr", case + FILE_ENDING)))
                case_modalities[case] = "MR"
            worker = convert_aligned_case
            channel_names = {c: s for c, s in enumerate(sequences)}  # not 'CT': nnU-Net z-scores each MR channel
            channel_modalities = {c: SEQUENCES[s][0] for c, s in enumerate(sequences)}
            vocabulary = ["MR"] + list(channel_modalities.values())
        if not jobs:
            raise ConversionError(f"No CHAOS patients found for {sequences} in {train_sets} (expected CT/<id>/ and "
                                  f"MR/<id>/ folders).")
        run_jobs(worker, jobs, num_processes, desc="CHAOS cases")
        if mode == "unpaired":
            write_splits(out, patient_grouped_folds([j["case"] for j in jobs], seed))
        write_dataset_json(
            out, channel_names, labels, len(jobs), case_modalities, vocabulary=vocabulary,
            channel_modalities=channel_modalities, dataset_name=name,
            reference="https://chaos.grand-challenge.org/", release="https://zenodo.org/record/3431873",
            license="CC BY-SA 4.0", converted_by="nnunet_mulmod_convert_chaos",
            description=f"CHAOS 2019, mode {mode}, sequences {sequences}, organs {organs}"
                        f"{' (union)' if union else ''}.")
    return dataset_path(dataset_id, name)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Convert CHAOS 2019 (DICOM + PNG masks) to an nnU-Net raw dataset "
                                                 "with modality tags.")
    parser.add_argument("-i", required=True, help="CHAOS folder holding Train_Sets/ (or Train_Sets itself)")
    add_common_arguments(parser, default_id=503, default_name="CHAOS")
    parser.add_argument("--mode", choices=("unpaired", "aligned"), default="unpaired",
                        help="unpaired: each sequence a single-channel case with its own modality tag (MulModSeg, "
                             "default); aligned: one multi-channel MR case per patient (Zeus)")
    parser.add_argument("--sequences", nargs="+", choices=list(SEQUENCES), default=None,
                        help="unpaired mode: sequences to include (default: CT T1in T1out T2)")
    parser.add_argument("--organs", choices=("liver", "all"), default=None,
                        help="liver, or all four MR organs (liver, kidneys, spleen). Default: liver when CT is "
                             "included (CT ground truth is liver only), else all")
    parser.add_argument("--with_t2", action="store_true",
                        help="aligned mode: add T2-SPIR resampled onto the T1 grid as channel 0002")
    parser.add_argument("--union", action="store_true", help="map all organs to one foreground label (Zeus)")
    parser.add_argument("--seed", type=int, default=12345,
                        help="seed of the patient-grouped 5-fold split written for the unpaired mode (default 12345)")
    add_intensity_argument(parser)
    args = parser.parse_args(argv)
    out = convert_chaos(args.i, args.d, args.name, args.mode, args.sequences, args.organs, args.with_t2,
                        args.union, args.intensity, args.seed, args.np, args.overwrite)
    print(f"Wrote {out}")


def entry_point():
    main_wrapper(main)


if __name__ == "__main__":
    entry_point()
