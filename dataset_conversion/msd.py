"""Medical Segmentation Decathlon task (e.g. Task01_BrainTumour, Task05_Prostate) -> nnU-Net raw dataset.

Source layout (http://medicaldecathlon.com)::

    Task05_Prostate/dataset.json          ("modality": {"0": "T2", "1": "ADC"}, "labels", "training", "test")
    Task05_Prostate/imagesTr/prostate_00.nii.gz   (4-D: x, y, z, channel)
    Task05_Prostate/labelsTr/prostate_00.nii.gz
    Task05_Prostate/imagesTs/prostate_03.nii.gz

Channels are split exactly as nnU-Net's own ``nnUNetv2_convert_MSD_dataset`` does (its ``split_4d_nifti`` is
called here: file ``case.nii.gz`` -> ``case_0000.nii.gz``, ``case_0001.nii.gz`` ...). Added on top: label
values checked against MSD's label map, image/label grid check, a modality tag per case and per channel
(``channel_modalities``: e.g. FLAIR, T1w, T1gd, T2w or T2, ADC; the channels are aligned, as Zeus expects),
atomic output, and ``--union`` (Zeus: all tumour / prostate labels -> one foreground class).

Usage: ``nnunet_mulmod_convert_msd -i ~/data/Task05_Prostate -d 505 [--union]``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from typing import List, Optional

import SimpleITK as sitk

from .common import (ConversionError, FILE_ENDING, add_common_arguments, check_label_values,
                     check_same_geometry, copy_or_write, dataset_path, dataset_writer,
                     label_array_and_values, list_images, main_wrapper, read_image, remap_labels,
                     run_jobs, strip_ending, write_dataset_json, write_image)

# MSD spells some channels in lower case; the modality tags use the usual spelling
CHANNEL_SPELLING = {"t1gd": "T1gd", "flair": "FLAIR", "t1w": "T1w", "t2w": "T2w", "adc": "ADC", "t2": "T2"}


def modality_tag(channel_name: str) -> str:
    name = CHANNEL_SPELLING.get(channel_name.strip().lower(), channel_name.strip())
    return re.sub(r"[^A-Za-z0-9_\-]+", "-", name).strip("-") or "channel"


def read_header(path: str, case: str) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise ConversionError(f"Case {case}: cannot read {path} (unreadable or truncated file). Re-download it or "
                              f"remove the case.") from None
    return reader


def convert_msd_case(job: dict) -> dict:
    from nnunetv2.dataset_conversion.convert_MSD_dataset import split_4d_nifti

    case, n_channels = job["case"], job["n_channels"]
    header = read_header(job["image"], case)
    size = header.GetSize()
    found_channels = size[3] if len(size) == 4 else 1
    if found_channels != n_channels:
        raise ConversionError(f"Case {case}: {job['image']} has {found_channels} channel(s), the task's dataset.json "
                              f"lists {n_channels}. Re-download the file.")
    if job["label"] is not None:
        label = read_image(job["label"], case)
        reference = sitk.Image([int(s) for s in size[:3]], sitk.sitkUInt8)
        reference.SetSpacing(header.GetSpacing()[:3])
        reference.SetOrigin(header.GetOrigin()[:3])
        direction = header.GetDirection()
        dim = len(size)
        reference.SetDirection([direction[r * dim + c] for r in range(3) for c in range(3)])
        check_same_geometry(reference, label, case, job["image"], job["label"])
        lookup = {int(k): int(v) for k, v in job["lookup"].items()}
        if all(k == v for k, v in lookup.items()):
            _, values = label_array_and_values(label, case, job["label"])
            check_label_values(values, lookup, case, job["label"], job["meaning"])
            copy_or_write(label, job["label"], job["out_label"])
        else:
            write_image(remap_labels(label, lookup, case, job["label"], job["meaning"]), job["out_label"])
    try:
        split_4d_nifti(job["image"], job["out_folder"])  # nnU-Net's own channel splitting
    except RuntimeError as e:
        raise ConversionError(f"Case {case}: cannot read {job['image']} (unreadable or truncated file: "
                              f"{str(e).strip().splitlines()[-1]}). Re-download it or remove the case.") from None
    return {"case": case}


def convert_msd(msd_folder: str, dataset_id: Optional[int] = None, name: Optional[str] = None, union: bool = False,
                union_name: str = "foreground", num_processes: int = 1, overwrite: bool = False) -> str:
    msd_folder = msd_folder.rstrip("/\\")
    json_path = os.path.join(msd_folder, "dataset.json")
    if not os.path.isfile(json_path) or not os.path.isdir(os.path.join(msd_folder, "imagesTr")):
        raise ConversionError(f"{msd_folder} is not an MSD task folder (needs dataset.json, imagesTr/, labelsTr/).")
    with open(json_path) as f:
        source = json.load(f)
    task = os.path.basename(msd_folder)
    match = re.match(r"^Task(\d+)_(.+)$", task)
    if dataset_id is None:
        if not match:
            raise ConversionError(f"Cannot infer the dataset id from folder name {task!r}; pass -d.")
        dataset_id = int(match.group(1))
    name = name or (match.group(2) if match else task)

    # MSD's own files say "modality"; a dataset.json already rewritten for nnU-Net v2 says "channel_names"
    channel_key = next((k for k in ("modality", "channel_names") if isinstance(source.get(k), dict)), None)
    if channel_key is None or "labels" not in source:
        raise ConversionError(f"{json_path} has no channel map ('modality' or 'channel_names', e.g. "
                              f'{{"0": "T2", "1": "ADC"}}) or no \'labels\'. Restore the MSD task\'s dataset.json.')
    channels = {int(k): v for k, v in source[channel_key].items()}
    channel_modalities = {c: modality_tag(v) for c, v in channels.items()}
    labels_map = source["labels"]
    if all(isinstance(v, int) for v in labels_map.values()):  # nnU-Net v2 layout: name -> value
        labels_map = {v: k for k, v in labels_map.items()}
    source_labels = {int(k): v for k, v in labels_map.items()}
    if union:
        lookup = {v: (1 if v > 0 else 0) for v in source_labels}
        labels = {"background": 0, union_name: 1}
    else:
        lookup = {v: v for v in source_labels}
        labels = {n: v for v, n in sorted(source_labels.items())}
    is_ct = any(modality_tag(v).upper() == "CT" for v in channels.values())
    case_modality = "CT" if is_ct else ("MR" if len(channels) > 1 else channel_modalities[0])

    labelled = {}
    for f in list_images(os.path.join(msd_folder, "imagesTr")):
        case = strip_ending(f)
        label = os.path.join(msd_folder, "labelsTr", f)
        if not os.path.isfile(label):
            raise ConversionError(f"Case {case}: image {os.path.join(msd_folder, 'imagesTr', f)} has no label {label}. "
                                  f"Restore the label file or remove the image.")
        labelled[case] = (os.path.join(msd_folder, "imagesTr", f), label)
    test = {strip_ending(f): (os.path.join(msd_folder, "imagesTs", f), None)
            for f in list_images(os.path.join(msd_folder, "imagesTs"))}
    if not labelled:
        raise ConversionError(f"No training images in {msd_folder}/imagesTr.")

    with dataset_writer(dataset_id, name, overwrite) as out:
        jobs = [dict(case=c, image=v[0], label=v[1], out_folder=os.path.join(out, "imagesTr"),
                     out_label=os.path.join(out, "labelsTr", c + FILE_ENDING)) for c, v in sorted(labelled.items())]
        jobs += [dict(case=c, image=v[0], label=None, out_folder=os.path.join(out, "imagesTs"), out_label=None)
                 for c, v in sorted(test.items())]
        for job in jobs:
            job.update(n_channels=len(channels), lookup=lookup, meaning=source_labels)
        run_jobs(convert_msd_case, jobs, num_processes, desc=f"MSD {task} cases")
        case_modalities = {c: case_modality for c in list(labelled) + list(test)}
        multi = len(channels) > 1
        vocabulary = ([case_modality] if multi else []) + [m for m in channel_modalities.values()
                                                           if m != case_modality or not multi]
        write_dataset_json(
            out, {c: v for c, v in channels.items()}, labels, len(labelled), case_modalities,
            vocabulary=list(dict.fromkeys(vocabulary)), channel_modalities=channel_modalities if multi else None,
            dataset_name=name, reference=source.get("reference"), release=source.get("release"),
            license=source.get("licence", source.get("license", "CC-BY-SA 4.0")),
            converted_by="nnunet_mulmod_convert_msd",
            description=f"MSD {task}" + (f"; all labels > 0 merged into '{union_name}'" if union else ""))
    return dataset_path(dataset_id, name)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Convert an MSD task (4-D NIfTI) to an nnU-Net raw dataset with "
                                                 "modality tags per case and per channel.")
    parser.add_argument("-i", required=True, help="extracted MSD task folder, e.g. ~/data/Task05_Prostate")
    add_common_arguments(parser, default_id=None, default_name=None)  # default: from TaskXX_Name
    parser.add_argument("--union", action="store_true",
                        help="Zeus setting: merge all labels > 0 into one foreground class")
    parser.add_argument("--union_name", default="foreground", help="name of the merged class (default foreground)")
    args = parser.parse_args(argv)
    out = convert_msd(args.i, args.d, args.name, args.union, args.union_name, args.np, args.overwrite)
    print(f"Wrote {out}")


def entry_point():
    main_wrapper(main)


if __name__ == "__main__":
    entry_point()
