"""Your own CT and MR scans (folders or a CSV) -> one nnU-Net raw dataset with a modality tag per case.

Folders: one ``--images MODALITY IMAGES_DIR LABELS_DIR`` per modality (repeat it), e.g.::

    nnunet_mulmod_convert_own_data -d 510 --name LiverCTMR --labels labels.json \\
        --images CT ~/data/ct/images ~/data/ct/labels --images MR ~/data/mr/images ~/data/mr/labels \\
        --test_images MR ~/data/mr/new_scans

An image ``<case>.nii.gz`` (or ``<case>_0000.nii.gz``; .nii, .mha and .nrrd too) pairs with the label
``<case>.<ending>`` in the labels folder. CSV instead (``--csv cases.csv``; paths relative to the CSV file)::

    case_id,image,label,modality        (case_id optional: default image file name; empty label = test case)
    liver_ct_001,ct/001.nii.gz,ct/001_seg.nii.gz,CT

Label map (``--labels``, JSON): either one map for every modality ``{"background": 0, "liver": 1, ...}`` or
one per modality with the same names, for label files whose values differ between modalities
(``{"CT": {"background": 0, "liver": 5}, "MR": {"background": 0, "liver": 1}}``). Names keep the order
written; the dataset's label ids are 0, 1, 2 ... in that order (nnU-Net needs consecutive ids). Values in a
label file that are not in its map are an error listing them with the case, unless
``--unlisted_to_background`` (e.g. using 3 of TotalSegmentator's 117 classes).

Modality names: any of ``nnunet_mulmod.modality``'s names (``CT``, ``MR``, ``MR-T1``, ...). Images are
stored as .nii.gz; the dataset reads them with ``NibabelIOWithReorient`` so that scans in different
orientations (common when CT and MR come from different sources) are seen in one orientation.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
from typing import Dict, List, Optional, Tuple

from .common import (ConversionError, FILE_ENDING, add_common_arguments, add_intensity_argument,
                     check_same_geometry, copy_or_write, dataset_path, dataset_writer,
                     label_array_and_values, main_wrapper, mixed_channel_name, read_image,
                     remap_labels, run_jobs, strip_ending, write_dataset_json, write_image)
from nnunet_mulmod.modality import ModalityError, validate_modality_name

IMAGE_ENDINGS = (".nii.gz", ".nii", ".mha", ".nrrd")


def load_label_maps(path: str, modalities: List[str]) -> Tuple[Dict[str, int], Dict[str, Dict[int, str]]]:
    """(dataset labels name -> consecutive id, per modality: source value -> name)."""
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConversionError(f"Cannot read the label map {path}: {e}") from None
    per_modality = raw if all(isinstance(v, dict) for v in raw.values()) else {m: raw for m in modalities}
    missing = [m for m in modalities if m not in per_modality]
    if missing:
        raise ConversionError(f"Label map {path} has no entry for modality {missing}; it lists {list(per_modality)}.")
    names = list(per_modality[modalities[0]])
    for m in modalities:
        if sorted(per_modality[m]) != sorted(names):
            raise ConversionError(f"Label map {path}: modality {m} names {list(per_modality[m])} differ from "
                                  f"{modalities[0]} names {names}. Every modality needs the same class names.")
    if "background" not in names or any(int(per_modality[m]["background"]) != 0 for m in modalities):
        raise ConversionError(f"Label map {path} needs \"background\": 0.")
    names.remove("background")
    target = {"background": 0, **{n: i + 1 for i, n in enumerate(names)}}
    source = {}
    for m in modalities:
        values = {}
        for n, v in per_modality[m].items():
            if not isinstance(v, int) or v < 0:
                raise ConversionError(f"Label map {path}: {m} {n!r} has value {v!r}; values are non-negative integers.")
            if v in values:
                raise ConversionError(f"Label map {path}: {m} value {v} is used for both {values[v]!r} and {n!r}.")
            values[v] = n
        source[m] = values
    return target, source


def image_case_id(filename: str) -> str:
    stem = strip_ending(filename)
    return stem[:-5] if stem.endswith("_0000") else stem


def cases_from_folders(images: List[List[str]], test_images: List[List[str]]) -> List[dict]:
    cases = []
    for modality, image_dir, label_dir in images:
        if not os.path.isdir(image_dir):
            raise ConversionError(f"--images {modality}: folder {image_dir} does not exist.")
        for f in sorted(os.listdir(image_dir)):
            if f.startswith(".") or not f.endswith(IMAGE_ENDINGS):
                continue
            case = image_case_id(f)
            candidates = [os.path.join(label_dir, case + e) for e in IMAGE_ENDINGS]
            label = next((c for c in candidates if os.path.isfile(c)), None)
            if label is None:
                raise ConversionError(f"Case {case}: image {os.path.join(image_dir, f)} has no label in {label_dir} "
                                      f"(looked for {case}.nii.gz/.nii/.mha/.nrrd). Add the label or move the image "
                                      f"to a --test_images folder.")
            cases.append(dict(case=case, image=os.path.join(image_dir, f), label=label, modality=modality))
    for modality, image_dir in test_images:
        if not os.path.isdir(image_dir):
            raise ConversionError(f"--test_images {modality}: folder {image_dir} does not exist.")
        for f in sorted(os.listdir(image_dir)):
            if not f.startswith(".") and f.endswith(IMAGE_ENDINGS):
                cases.append(dict(case=image_case_id(f), image=os.path.join(image_dir, f), label=None,
                                  modality=modality))
    return cases


def cases_from_csv(path: str) -> List[dict]:
    """The CSV's cases; every row is checked (files exist, modality name valid) before anything is converted,
    and one error lists every bad row by its line number."""
    base = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise ConversionError(f"Cannot read {path}: {e}") from None
    if not rows or not {"image", "modality"} <= set(rows[0]):
        raise ConversionError(f"{path} needs a header with at least the columns image,modality (optional: case_id, "
                              f"label).")
    cases, problems = [], []
    for line, row in enumerate(rows, start=2):
        image_entry = (row.get("image") or "").strip()
        label = (row.get("label") or "").strip()
        modality = (row.get("modality") or "").strip()
        image = os.path.join(base, image_entry)
        for what, entry in (("image", image_entry), ("label", label)):
            if what == "image" and not entry:
                problems.append(f"line {line}: no image")
            elif entry and not os.path.isfile(os.path.join(base, entry)):
                problems.append(f"line {line}: {what} {entry} not found ({os.path.join(base, entry)})")
        try:
            validate_modality_name(modality)
        except ModalityError as e:
            problems.append(f"line {line}: {e}")
        case = (row.get("case_id") or "").strip() or image_case_id(os.path.basename(image))
        cases.append(dict(case=case, image=image, label=os.path.join(base, label) if label else None,
                          modality=modality, line=line))
    if problems:
        shown = "; ".join(problems[:10]) + (f"; ... ({len(problems)} problems in all)" if len(problems) > 10 else "")
        raise ConversionError(f"{path}: {shown}. Fix these rows (paths are relative to the CSV file) or remove them; "
                              f"nothing was converted.")
    return cases


def convert_own_case(job: dict) -> dict:
    case = job["case"]
    image = read_image(job["image"], case)
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() != 3:
        raise ConversionError(f"Case {case}: {job['image']} is not a 3-D single-channel image "
                              f"({image.GetDimension()}-D, {image.GetNumberOfComponentsPerPixel()} components).")
    if job["label"] is not None:
        label = read_image(job["label"], case)
        check_same_geometry(image, label, case, job["image"], job["label"])
        lookup = {int(k): int(v) for k, v in job["lookup"].items()}
        meaning = {int(k): v for k, v in job["meaning"].items()}
        if job["unlisted_to_background"]:
            _, values = label_array_and_values(label, case, job["label"])
            lookup.update({int(v): 0 for v in values if int(v) not in lookup})
        write_image(remap_labels(label, lookup, case, job["label"], meaning,
                                 fix="Fix the label file, add the values to the label map (--labels), re-run with "
                                     "--unlisted_to_background to set unlisted values to background, or remove "
                                     "the case."), job["out_label"])
    copy_or_write(image, job["image"], job["out_image"])
    return {"case": case}


def convert_own_data(cases: List[dict], labels_json: str, dataset_id: int, name: str,
                     unlisted_to_background: bool = False, intensity: str = "paper", num_processes: int = 1,
                     overwrite: bool = False, families: Optional[Dict[str, str]] = None) -> str:
    if not cases:
        raise ConversionError("No images found: give --images MODALITY IMAGES_DIR LABELS_DIR (repeatable) or --csv.")
    modalities = list(dict.fromkeys(c["modality"] for c in cases))
    for m in modalities:
        try:
            validate_modality_name(m)
        except ModalityError as e:
            raise ConversionError(str(e)) from None
    families = {m: f for m, f in (families or {}).items() if m in modalities}
    channel_name = mixed_channel_name(modalities, intensity, {"modality_families": families})  # before any work
    seen = {}
    for c in cases:
        if c["case"] in seen:
            raise ConversionError(f"Case id {c['case']} appears twice ({seen[c['case']]} and {c['image']}). Case ids "
                                  f"must be unique across modalities: rename a file or give case_id in a CSV.")
        seen[c["case"]] = c["image"]
    target, source = load_label_maps(labels_json, list(dict.fromkeys(c["modality"] for c in cases if c["label"]))
                                     or modalities)
    training = [c for c in cases if c["label"] is not None]
    if not training:
        raise ConversionError("No labelled case: nnU-Net needs training cases with labels.")

    with dataset_writer(dataset_id, name, overwrite) as out:
        jobs = []
        for c in cases:
            folder = "imagesTr" if c["label"] else "imagesTs"
            job = dict(case=c["case"], image=c["image"], label=c["label"], unlisted_to_background=unlisted_to_background,
                       out_image=os.path.join(out, folder, f"{c['case']}_0000{FILE_ENDING}"),
                       out_label=os.path.join(out, "labelsTr", c["case"] + FILE_ENDING) if c["label"] else None)
            if c["label"]:
                job["lookup"] = {v: target[n] for v, n in source[c["modality"]].items()}
                job["meaning"] = source[c["modality"]]
            jobs.append(job)
        run_jobs(convert_own_case, jobs, num_processes, desc="cases")
        case_modalities = {c["case"]: c["modality"] for c in cases}
        write_dataset_json(out, {0: channel_name}, target, len(training),
                           case_modalities, vocabulary=modalities, families=families or None, dataset_name=name,
                           overwrite_image_reader_writer="NibabelIOWithReorient",
                           converted_by="nnunet_mulmod_convert_own_data")
    return dataset_path(dataset_id, name)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Convert your own CT/MR images and labels (folders or CSV) into one "
                                                 "nnU-Net raw dataset with modality tags.")
    parser.add_argument("--images", nargs=3, action="append", default=[], metavar=("MODALITY", "IMAGES_DIR", "LABELS_DIR"),
                        help="a modality (CT, MR, MR-T1, ...), its image folder and label folder; repeatable")
    parser.add_argument("--test_images", nargs=2, action="append", default=[], metavar=("MODALITY", "IMAGES_DIR"),
                        help="unlabelled images for imagesTs; repeatable")
    parser.add_argument("--csv", help="CSV with columns image,modality[,label][,case_id] instead of folders")
    parser.add_argument("--labels", required=True,
                        help='JSON label map: {"background": 0, "liver": 1} or one map per modality')
    parser.add_argument("--unlisted_to_background", action="store_true",
                        help="set label values that are not in the map to background instead of failing")
    parser.add_argument("--modality_family", nargs=2, action="append", default=[], metavar=("MODALITY", "FAMILY"),
                        help="intensity family (CT, MR or other = per-image z-score) of a modality whose name does "
                             "not give it (e.g. --modality_family XR other); repeatable")
    add_common_arguments(parser, default_id=510, default_name="OwnCTMR")
    add_intensity_argument(parser)
    args = parser.parse_args(argv)
    if bool(args.csv) == bool(args.images or args.test_images):
        parser.error("give either --csv or --images/--test_images")
    cases = cases_from_csv(args.csv) if args.csv else cases_from_folders(args.images, args.test_images)
    out = convert_own_data(cases, args.labels, args.d, args.name, args.unlisted_to_background, args.intensity,
                           args.np, args.overwrite, dict(args.modality_family))
    print(f"Wrote {out}")


def entry_point():
    main_wrapper(main)


if __name__ == "__main__":
    entry_point()
