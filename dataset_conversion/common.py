"""What every converter shares: output folder handling, input checks, parallel case conversion, dataset.json.

A converter is a plain function that (1) lists its cases as small dicts ("jobs"), (2) runs one module-level
worker function per job through :func:`run_jobs` (parallel with ``-np``, tqdm progress), writing into the
temporary folder that :func:`dataset_writer` hands out, and (3) writes dataset.json with
:func:`write_dataset_json`. Every input problem raises :class:`ConversionError` whose message names the case,
the file and the fix; the console scripts print it without a stack trace (:func:`main_wrapper`).

Output is atomic: everything is written to ``$nnUNet_raw/.DatasetXXX_Name.partial-<pid>`` (a name nnU-Net's
dataset search ignores) and renamed to ``$nnUNet_raw/DatasetXXX_Name`` only when complete, so an interrupted
or failed run never leaves a half-written dataset behind, and re-running is safe.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import sys
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_mulmod.modality import ModalityError, check_modality_families, modality_family, set_modalities

FILE_ENDING = ".nii.gz"

# Channel name -> normalization (nnunet_mulmod.intensity registers these names with nnU-Net at start-up).
INTENSITY_CHANNEL_NAMES = {
    "paper": "CT_or_MR",            # MulModSeg paper: CT [-275, 125] HU -> [0, 1]; MR 0.5/99.5 pct -> [0, 1]
    "code": "CT_or_MR_code",        # MulModSeg authors' code: CT [-125, 275] HU -> [0, 1]; MR z-score
    "zscore": "either_CT_or_MR",    # nnU-Net's own choice for mixed CT/MR (AMOS task 2): per-image z-score
}


class ConversionError(RuntimeError):
    """Bad input. The message names the case/file and says how to fix it."""


# ----------------------------------------------------------------------------------------------------------------
# output folder
# ----------------------------------------------------------------------------------------------------------------
def nnunet_raw_folder() -> str:
    raw = os.environ.get("nnUNet_raw")
    if not raw:
        raise ConversionError("The environment variable nnUNet_raw is not set. Converters write to "
                              "$nnUNet_raw/DatasetXXX_Name: export nnUNet_raw=/path/to/nnUNet_raw "
                              "(see nnU-Net's documentation/setting_up_paths.md).")
    return raw


def dataset_folder_name(dataset_id: int, name: str) -> str:
    if not 0 <= int(dataset_id) <= 999:
        raise ConversionError(f"Dataset id {dataset_id} is out of range: nnU-Net ids have at most 3 digits (-d 0..999).")
    if not name or any(c in name for c in "/\\ ") or name.startswith("."):
        raise ConversionError(f"Dataset name {name!r} is invalid: use letters, digits, '_' and '-' (--name).")
    return f"Dataset{int(dataset_id):03d}_{name}"


def dataset_path(dataset_id: int, name: str) -> str:
    return os.path.join(nnunet_raw_folder(), dataset_folder_name(dataset_id, name))


def _remove_stale_partials(raw: str, folder_name: str) -> None:
    """Temporary folders of runs that were killed (their process is gone) are removed; running ones are kept."""
    prefix = f".{folder_name}.partial-"
    for entry in os.listdir(raw):
        if entry.startswith(prefix) and entry[len(prefix):].isdigit():
            try:
                os.kill(int(entry[len(prefix):]), 0)
            except ProcessLookupError:
                shutil.rmtree(os.path.join(raw, entry), ignore_errors=True)
            except PermissionError:  # alive, another user's
                pass


@contextlib.contextmanager
def dataset_writer(dataset_id: int, name: str, overwrite: bool) -> Iterator[str]:
    """Yields a temporary folder to write the dataset into; moves it to $nnUNet_raw/DatasetXXX_Name on success.

    Refuses (before any work) when a raw dataset with this id exists, unless ``overwrite``; then the old
    folder of the same name is replaced only once the new one is complete. A raw dataset with the same id
    but another name is never deleted: nnU-Net resolves ids by prefix, two folders would be ambiguous.
    """
    raw = nnunet_raw_folder()
    folder_name = dataset_folder_name(dataset_id, name)
    target = os.path.join(raw, folder_name)
    prefix = f"Dataset{int(dataset_id):03d}_"

    def datasets_with_this_id(base: Optional[str]) -> List[str]:
        if not base or not os.path.isdir(base):
            return []
        return sorted(d for d in os.listdir(base) if d.startswith(prefix) and os.path.isdir(os.path.join(base, d)))

    existing = datasets_with_this_id(raw)
    # nnU-Net resolves an id by searching all three folders: another name under the id in any of them would make
    # planning fail later with "More than one dataset name found"
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        base = raw if variable == "nnUNet_raw" else os.environ.get(variable)
        others = [d for d in datasets_with_this_id(base) if d != folder_name]
        if others:
            raise ConversionError(f"Dataset id {dataset_id} is already used by {os.path.join(base, others[0])} "
                                  f"(${variable}). Choose another id (-d), or delete that folder yourself if it is "
                                  f"no longer needed.")
    if existing and not overwrite:
        raise ConversionError(f"{target} already exists. Re-run with --overwrite to replace it "
                              f"(the old folder is kept until the new one is complete), or choose another -d/--name.")
    os.makedirs(raw, exist_ok=True)
    _remove_stale_partials(raw, folder_name)
    tmp = os.path.join(raw, f".{folder_name}.partial-{os.getpid()}")
    if os.path.isdir(tmp):
        shutil.rmtree(tmp)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        os.makedirs(os.path.join(tmp, sub))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.isdir(target):
        old = os.path.join(raw, f".{folder_name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# reading and checking
# ----------------------------------------------------------------------------------------------------------------
def read_image(path: str, case: str) -> sitk.Image:
    """Reads the whole file; truncated files are caught here, not in training."""
    if not os.path.isfile(path):
        raise ConversionError(f"Case {case}: file {path} does not exist.")
    try:
        image = sitk.ReadImage(path)
    except RuntimeError as e:
        first_line = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
        raise ConversionError(f"Case {case}: cannot read {path} (unreadable or truncated file: {first_line}). "
                              f"Re-download/re-extract this file, or remove the case.") from None
    if path.endswith(".nii.gz") and not _gzip_nifti_complete(path):
        raise ConversionError(f"Case {case}: cannot read {path} (unreadable or truncated file: the compressed "
                              f"stream ends early). Re-download/re-extract this file, or remove the case.")
    return image


def _gzip_nifti_complete(path: str) -> bool:
    """ITK reads a truncated .nii.gz without an error (the missing voxels become zeros). The gzip trailer's
    last 4 bytes hold the uncompressed size (mod 2**32): compare it with the size the NIfTI header implies
    (O(1)); only when they disagree (a truncated file, or a writer that pads) decompress the stream to decide."""
    import gzip
    import zlib

    import nibabel

    try:
        header = nibabel.load(path).header
        expected = header.get_data_offset() or header.single_vox_offset
        expected += int(np.prod(header.get_data_shape())) * int(header["bitpix"]) // 8
    except Exception:  # an exotic header: decide by decompressing
        expected = -1
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        stored = int.from_bytes(f.read(4), "little")
    if stored == expected % 2 ** 32:
        return True
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    except (EOFError, OSError, zlib.error):
        return False
    return True


def geometry(image: sitk.Image) -> dict:
    return {"size": image.GetSize(), "spacing": tuple(round(s, 6) for s in image.GetSpacing()),
            "origin": tuple(round(o, 4) for o in image.GetOrigin()),
            "direction": tuple(round(d, 4) for d in image.GetDirection())}


def check_same_geometry(image: sitk.Image, label: sitk.Image, case: str, image_path: str, label_path: str) -> None:
    """Image and label must share the voxel grid (size, spacing, origin, direction)."""
    problems = []
    if image.GetDimension() != label.GetDimension() or image.GetSize() != label.GetSize():
        problems.append(f"size {image.GetSize()} vs {label.GetSize()}")
    else:
        spacing_i, spacing_l = np.array(image.GetSpacing()), np.array(label.GetSpacing())
        if not np.allclose(spacing_i, spacing_l, rtol=1e-3, atol=1e-5):
            problems.append(f"spacing {tuple(spacing_i)} vs {tuple(spacing_l)}")
        # origins may differ by rounding in the header; a tenth of the smallest voxel edge is a real shift
        if not np.allclose(image.GetOrigin(), label.GetOrigin(), rtol=0, atol=0.1 * float(spacing_i.min())):
            problems.append(f"origin {geometry(image)['origin']} vs {geometry(label)['origin']}")
        if not np.allclose(image.GetDirection(), label.GetDirection(), atol=1e-3):
            problems.append(f"direction {geometry(image)['direction']} vs {geometry(label)['direction']}")
    if problems:
        raise ConversionError(
            f"Case {case}: image and label geometry differ ({'; '.join(problems)}; image {image_path}, label "
            f"{label_path}). The label must be on the image's voxel grid: fix the header or resample the label "
            f"onto the image (nearest neighbour), or remove the case.")


def check_label_values(values: Iterable[int], allowed: Iterable[int], case: str, label_path: str,
                       meaning: Optional[Mapping[int, str]] = None,
                       fix: str = "Fix the label file, add the values to the label map, or remove the case.") -> None:
    allowed = set(int(a) for a in allowed)
    unexpected = sorted(int(v) for v in values if int(v) not in allowed)
    if unexpected:
        known = ", ".join(f"{v}" + (f" {meaning[v]}" if meaning and v in meaning else "") for v in sorted(allowed))
        raise ConversionError(
            f"Case {case}: label file {label_path} contains values {unexpected} that are not in the label map "
            f"({known}). {fix}")


def label_array_and_values(label: sitk.Image, case: str, label_path: str):
    """(integer array view, sorted unique values); bincount instead of np.unique: ~10x faster on label maps."""
    array = sitk.GetArrayViewFromImage(label)
    if np.issubdtype(array.dtype, np.floating):
        rounded = np.rint(array)
        if not np.array_equal(rounded, array):
            raise ConversionError(f"Case {case}: label file {label_path} holds non-integer values. Labels must be "
                                  f"integers; re-export the segmentation as an integer image.")
        array = rounded.astype(np.int64)
    low, high = int(array.min()), int(array.max())
    if low < 0:
        raise ConversionError(f"Case {case}: label file {label_path} has negative values (min {low}); labels must "
                              f"be non-negative integers.")
    if high < 2 ** 16:
        values = np.flatnonzero(np.bincount(array.ravel(), minlength=high + 1))
    else:
        values = np.unique(array)
    return array, values


def remap_labels(label: sitk.Image, lookup: Mapping[int, int], case: str, label_path: str,
                 meaning: Optional[Mapping[int, str]] = None, fix: Optional[str] = None) -> sitk.Image:
    """Source value -> target id through a lookup table; values missing from ``lookup`` are an error."""
    array, values = label_array_and_values(label, case, label_path)
    check_label_values(values, lookup.keys(), case, label_path, meaning, **({"fix": fix} if fix else {}))
    table = np.zeros(int(values.max()) + 1, dtype=np.uint8)
    for source, target in lookup.items():
        if 0 <= int(source) < len(table):
            table[int(source)] = int(target)
    out = sitk.GetImageFromArray(table[array])
    out.CopyInformation(label)
    return out


def write_image(image: sitk.Image, path: str) -> None:
    sitk.WriteImage(image, path, useCompression=True)


def copy_or_write(image: sitk.Image, source_path: str, target_path: str) -> None:
    """A NIfTI input that needs no change is copied byte for byte (far faster than re-compressing it)."""
    if source_path.endswith(FILE_ENDING):
        shutil.copyfile(source_path, target_path)
    else:
        write_image(image, target_path)


def convert_nifti_case(job: dict) -> dict:
    """Worker for NIfTI datasets: checks image and label, copies the image, writes the remapped label.

    job: case, image, label (or None), out_image, out_label, lookup (source value -> target id; JSON keys may
    be strings), meaning (target id or source value -> name, for messages).
    """
    case = job["case"]
    image = read_image(job["image"], case)
    if job.get("label") is not None:
        label = read_image(job["label"], case)
        check_same_geometry(image, label, case, job["image"], job["label"])
        lookup = {int(k): int(v) for k, v in job["lookup"].items()}
        if all(k == v for k, v in lookup.items()):
            _, values = label_array_and_values(label, case, job["label"])
            check_label_values(values, lookup, case, job["label"], job.get("meaning"))
            copy_or_write(label, job["label"], job["out_label"])  # values checked; nothing to change
        else:
            write_image(remap_labels(label, lookup, case, job["label"], job.get("meaning")), job["out_label"])
    copy_or_write(image, job["image"], job["out_image"])
    return {"case": case}


def strip_ending(filename: str) -> str:
    for ending in (".nii.gz", ".nii", ".mha", ".nrrd"):
        if filename.endswith(ending):
            return filename[: -len(ending)]
    return os.path.splitext(filename)[0]


def list_images(folder: str, ending: str = FILE_ENDING) -> List[str]:
    """File names in ``folder`` with the ending, without macOS '._' resource forks and hidden files."""
    if not os.path.isdir(folder):
        return []
    return sorted(f for f in os.listdir(folder)
                  if f.endswith(ending) and not f.startswith(".") and not f.startswith("_"))


# ----------------------------------------------------------------------------------------------------------------
# running the cases
# ----------------------------------------------------------------------------------------------------------------
def default_num_processes() -> int:
    # nnU-Net's default (env nnUNet_def_n_proc, else 8), never more than the CPUs we have
    return max(1, min(int(os.environ.get("nnUNet_def_n_proc", 8)), os.cpu_count() or 1))


def run_jobs(worker: Callable[[dict], dict], jobs: Sequence[dict], num_processes: int, desc: str) -> List[dict]:
    """Runs ``worker(job)`` for every job (in order of results: input order) with a tqdm bar.

    ``num_processes`` <= 1 runs in this process (no start-up cost; what small datasets want). Workers are
    spawned, like nnU-Net's, so the worker must be a module-level function.
    """
    jobs = list(jobs)
    if num_processes <= 1 or len(jobs) <= 1:
        return [worker(job) for job in tqdm(jobs, desc=desc, unit="case")]
    results: List[Optional[dict]] = [None] * len(jobs)
    with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
        indexed = pool.imap_unordered(_indexed_call, [(worker, i, job) for i, job in enumerate(jobs)])
        for i, result in tqdm(indexed, total=len(jobs), desc=desc, unit="case"):
            results[i] = result
    return results


def _indexed_call(args):
    worker, i, job = args
    return i, worker(job)


# ----------------------------------------------------------------------------------------------------------------
# dataset.json and splits
# ----------------------------------------------------------------------------------------------------------------
def write_dataset_json(folder: str, channel_names: Mapping[int, str], labels: Mapping[str, int],
                       num_training_cases: int, case_modalities: Mapping[str, str],
                       vocabulary: Optional[Sequence[str]] = None,
                       channel_modalities: Optional[Mapping[int, str]] = None,
                       families: Optional[Mapping[str, str]] = None, **extra) -> dict:
    """nnU-Net's generate_dataset_json plus the modality tags (nnunet_mulmod.modality schema)."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    generate_dataset_json(folder, dict(channel_names), dict(labels), num_training_cases, FILE_ENDING, **extra)
    path = os.path.join(folder, "dataset.json")
    with open(path) as f:
        dataset_json = json.load(f)
    try:
        set_modalities(dataset_json, case_modalities, vocabulary=vocabulary, channel_modalities=channel_modalities,
                       families=families)
    except ModalityError as e:
        raise ConversionError(str(e)) from None
    with open(path, "w", encoding="utf-8") as f:
        json.dump(dataset_json, f, indent=4, sort_keys=False)
    return dataset_json


def write_splits(folder: str, splits: List[Dict[str, List[str]]]) -> None:
    """splits_final.json in the raw dataset; nnUNetv2_plan_and_preprocess copies it to nnUNet_preprocessed,
    where the trainer reads it (fold i = splits[i])."""
    with open(os.path.join(folder, "splits_final.json"), "w") as f:
        json.dump([{"train": sorted(s["train"]), "val": sorted(s["val"])} for s in splits], f, indent=4)


def mixed_channel_name(modalities: Iterable[str], intensity: str, dataset_json: Optional[Mapping] = None) -> str:
    """Channel name for a single-channel dataset: CT-only may use nnU-Net's 'CT' scheme; a CT+MR mix must not.

    ``dataset_json`` (or a dict with its 'modality_families') declares families the names do not give."""
    modalities = list(modalities)
    try:
        check_modality_families(modalities, dataset_json, where="modality names")
    except ModalityError as e:
        raise ConversionError(str(e).replace("declare others in dataset.json, e.g. ",
                                             "declare others with --modality_family NAME FAMILY or in dataset.json "
                                             "as ")) from None
    families = {modality_family(m, dataset_json) for m in modalities}
    if intensity not in INTENSITY_CHANNEL_NAMES:
        raise ConversionError(f"--intensity must be one of {sorted(INTENSITY_CHANNEL_NAMES)}, got {intensity!r}.")
    if families == {"CT"} and intensity == "zscore":
        return "CT"
    if "CT" not in families and intensity == "zscore":
        return "zscore"
    if "other" in families and intensity != "zscore":
        # the per-case CT/MR protocols tell CT from MR by intensities when no tag reaches them (nnU-Net's
        # DefaultPreprocessor); an 'other' case (PET, ...) would silently get the MR protocol there
        others = [m for m in modalities if modality_family(m, dataset_json) == "other"]
        raise ConversionError(
            f"Modality {others} is of the 'other' intensity family (its own normalisation, per-image z-score), which "
            f"the '{intensity}' CT/MR protocol cannot tell from MR by intensities. Convert with --intensity zscore "
            f"(nnU-Net's per-image z-score for every case), or convert only the CT/MR cases.")
    return INTENSITY_CHANNEL_NAMES[intensity]


def add_common_arguments(parser, default_id: Optional[int], default_name: Optional[str]) -> None:
    parser.add_argument("-d", type=int, default=default_id,
                        help=f"nnU-Net dataset id (default {default_id if default_id is not None else 'from the input'})")
    parser.add_argument("--name", default=default_name,
                        help=f"dataset name: output is $nnUNet_raw/DatasetXXX_<name> "
                             f"(default {default_name if default_name is not None else 'from the input'})")
    parser.add_argument("-np", type=int, default=default_num_processes(),
                        help="number of worker processes (default: nnUNet_def_n_proc or 8, at most the CPU count)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing $nnUNet_raw/DatasetXXX_<name> (otherwise the converter refuses)")


def add_intensity_argument(parser) -> None:
    parser.add_argument("--intensity", choices=sorted(INTENSITY_CHANNEL_NAMES), default="paper",
                        help="intensity protocol for the mixed CT/MR channel: 'paper' (MulModSeg paper: CT clipped "
                             "to [-275, 125] HU -> [0, 1]; MR 0.5/99.5 percentiles -> [0, 1]), 'code' (authors' "
                             "code: CT [-125, 275] -> [0, 1]; MR z-score) or 'zscore' (nnU-Net's per-image z-score). "
                             "Default: paper")


def main_wrapper(main: Callable[[Optional[List[str]]], None], argv: Optional[List[str]] = None) -> None:
    """Runs a converter's main; bad input ends with one readable error line and exit status 1."""
    try:
        main(argv)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
