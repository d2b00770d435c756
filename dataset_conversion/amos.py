"""AMOS 2022 (CT + MR abdominal organs) -> nnU-Net raw dataset with a modality tag per case.

Source layout (https://zenodo.org/record/7262581, the post-challenge release)::

    amos22/dataset.json
    amos22/imagesTr/amos_0001.nii.gz   labelsTr/amos_0001.nii.gz
    amos22/imagesVa/amos_0008.nii.gz   labelsVa/amos_0008.nii.gz
    amos22/imagesTs/amos_0002.nii.gz   (labelsTs/ only in releases that ship test labels)

Quirks handled here
- AMOS's own dataset.json says "CT" for every case; the modality is in the case id: id > 500 is MR.
- 15 labels; ``--organs 13`` drops 14 bladder and 15 prostate/uterus (MulModSeg paper's 13-organ task).
- Orientation differs between cases: like nnU-Net's own AMOS converters (Dataset218/219) the dataset uses
  ``NibabelIOWithReorient``, which reorients to RAS when reading and back when writing predictions.

Splits (``--split``): ``all`` puts every labelled case (Tr + Va) in imagesTr (nnU-Net's 5-fold CV) and the
unlabelled test images in imagesTs. ``balanced``, ``2to1`` and ``3to1`` are the paper's settings: per modality
``--n_test`` held-out labelled test cases (imagesTs + labelsTs) and ``--n_train`` MR training cases with
1x/2x/3x as many CT training cases (imagesTr), drawn reproducibly from ``--seed``; the official unlabelled
test images are left out so that imagesTs is exactly the evaluation set.

Usage: ``nnunet_mulmod_convert_amos -i ~/data/amos22 -d 501`` (or
``python -m nnunet_mulmod.dataset_conversion.amos ...``).
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Dict, List, Optional

import numpy as np

from .common import (ConversionError, FILE_ENDING, add_common_arguments, add_intensity_argument,
                     convert_nifti_case, dataset_path, dataset_writer, list_images, main_wrapper,
                     mixed_channel_name, run_jobs, strip_ending, write_dataset_json)

AMOS_LABELS = {0: "background", 1: "spleen", 2: "right kidney", 3: "left kidney", 4: "gallbladder",
               5: "esophagus", 6: "liver", 7: "stomach", 8: "aorta", 9: "postcava", 10: "pancreas",
               11: "right adrenal gland", 12: "left adrenal gland", 13: "duodenum", 14: "bladder",
               15: "prostate/uterus"}
DROPPED_FOR_13_ORGANS = (14, 15)
SPLIT_CT_PER_MR = {"balanced": 1, "2to1": 2, "3to1": 3}


def amos_modality(case_id: str) -> str:
    """AMOS case ids amos_0001..amos_0500 are CT, > 500 are MR (AMOS's dataset.json does not say so)."""
    try:
        number = int(case_id.split("_")[-1])
    except ValueError:
        raise ConversionError(f"Case {case_id}: not an AMOS file name (expected amos_XXXX.nii.gz).") from None
    return "MR" if number > 500 else "CT"


def read_label_names(amos_folder: str) -> Dict[int, str]:
    path = os.path.join(amos_folder, "dataset.json")
    if not os.path.isfile(path):
        return dict(AMOS_LABELS)
    with open(path) as f:
        labels = json.load(f).get("labels", {})
    names = {int(k): v for k, v in labels.items()} if labels else dict(AMOS_LABELS)
    if sorted(names) != sorted(AMOS_LABELS):
        raise ConversionError(f"{path} lists labels {sorted(names)}; AMOS 2022 has 0-15. Is this the AMOS folder?")
    return names


def find_cases(amos_folder: str):
    """(labelled, unlabelled): case id -> (image path, label path or None)."""
    if not os.path.isdir(os.path.join(amos_folder, "imagesTr")):
        raise ConversionError(f"{amos_folder} has no imagesTr folder. Pass the extracted AMOS folder "
                              f"(the one holding imagesTr, labelsTr, imagesVa, labelsVa, imagesTs).")
    labelled, unlabelled = {}, {}
    for images, labels, required in (("imagesTr", "labelsTr", True), ("imagesVa", "labelsVa", True),
                                     ("imagesTs", "labelsTs", False)):
        image_folder, label_folder = os.path.join(amos_folder, images), os.path.join(amos_folder, labels)
        for f in list_images(image_folder):
            case = strip_ending(f)
            label = os.path.join(label_folder, f)
            if case in labelled or case in unlabelled:
                raise ConversionError(f"Case {case} appears twice ({images} and another folder); remove one copy.")
            if os.path.isfile(label):
                labelled[case] = (os.path.join(image_folder, f), label)
            elif required:
                raise ConversionError(f"Case {case}: image {os.path.join(image_folder, f)} has no label "
                                      f"{label}. Restore the label file or remove the image.")
            else:
                unlabelled[case] = (os.path.join(image_folder, f), None)
    if not labelled:
        raise ConversionError(f"No labelled cases found in {amos_folder}/imagesTr and imagesVa.")
    return labelled, unlabelled


def paper_split(cases: List[str], split: str, n_train: int, n_test: int, seed: int) -> Dict[str, List[str]]:
    """Per modality: n_test test cases, n_train MR training cases and ratio*n_train CT training cases."""
    rng = np.random.default_rng(seed)
    result = {"train": [], "test": []}
    for modality in ("CT", "MR"):
        pool = sorted(c for c in cases if amos_modality(c) == modality)
        n_train_modality = n_train * (SPLIT_CT_PER_MR[split] if modality == "CT" else 1)
        if len(pool) < n_train_modality + n_test:
            raise ConversionError(
                f"Split {split!r} needs {n_train_modality} training + {n_test} test {modality} cases, but only "
                f"{len(pool)} labelled {modality} cases were found. Lower --n_train/--n_test or use --split all.")
        order = rng.permutation(len(pool))
        result["test"] += [pool[i] for i in order[:n_test]]
        result["train"] += [pool[i] for i in order[n_test:n_test + n_train_modality]]
    return {k: sorted(v) for k, v in result.items()}


def convert_amos(amos_folder: str, dataset_id: int = 501, name: str = "AMOS2022", organs: int = 15,
                 split: str = "all", n_train: int = 35, n_test: int = 19, seed: int = 12345,
                 intensity: str = "paper", num_processes: int = 1, overwrite: bool = False) -> str:
    if organs not in (13, 15):
        raise ConversionError(f"--organs must be 13 or 15, got {organs}.")
    if split not in ("all", *SPLIT_CT_PER_MR):
        raise ConversionError(f"--split must be one of all, balanced, 2to1, 3to1; got {split!r}.")
    names = read_label_names(amos_folder)
    labelled, unlabelled = find_cases(amos_folder)

    lookup = {v: v for v in names}
    if organs == 13:
        lookup.update({v: 0 for v in DROPPED_FOR_13_ORGANS})
    target_labels = {names[v]: v for v in sorted(names) if v == 0 or lookup[v] != 0}

    if split == "all":
        train, test_labelled, test_unlabelled = sorted(labelled), [], sorted(unlabelled)
    else:
        chosen = paper_split(list(labelled), split, n_train, n_test, seed)
        train, test_labelled, test_unlabelled = chosen["train"], chosen["test"], []

    with dataset_writer(dataset_id, name, overwrite) as out:
        if test_labelled:
            os.makedirs(os.path.join(out, "labelsTs"))
        jobs = []
        for case in train:
            jobs.append(dict(case=case, image=labelled[case][0], label=labelled[case][1],
                             out_image=os.path.join(out, "imagesTr", f"{case}_0000{FILE_ENDING}"),
                             out_label=os.path.join(out, "labelsTr", case + FILE_ENDING)))
        for case in test_labelled:
            jobs.append(dict(case=case, image=labelled[case][0], label=labelled[case][1],
                             out_image=os.path.join(out, "imagesTs", f"{case}_0000{FILE_ENDING}"),
                             out_label=os.path.join(out, "labelsTs", case + FILE_ENDING)))
        for case in test_unlabelled:
            jobs.append(dict(case=case, image=unlabelled[case][0], label=None,
                             out_image=os.path.join(out, "imagesTs", f"{case}_0000{FILE_ENDING}"), out_label=None))
        for job in jobs:
            job.update(lookup=lookup, meaning=names)
        run_jobs(convert_nifti_case, jobs, num_processes, desc="AMOS cases")

        all_cases = train + test_labelled + test_unlabelled
        case_modalities = {c: amos_modality(c) for c in all_cases}
        extra = {}
        if split != "all":
            extra["mulmod_split"] = {"name": split, "seed": seed, "n_train_mr": n_train, "n_test_per_modality": n_test,
                                     "train": train, "test": test_labelled,
                                     "note": "test cases are in imagesTs with their labels in labelsTs"}
        write_dataset_json(
            out, {0: mixed_channel_name(case_modalities.values(), intensity)}, target_labels, len(train),
            case_modalities, vocabulary=["CT", "MR"], dataset_name=name,
            reference="https://amos22.grand-challenge.org/", release="https://zenodo.org/record/7262581",
            license="CC BY 4.0", overwrite_image_reader_writer="NibabelIOWithReorient",
            converted_by="nnunet_mulmod_convert_amos",
            description=f"AMOS 2022, {organs} organs, split {split!r}. Modality from the case id (> 500 is MR).",
            **extra)
    return dataset_path(dataset_id, name)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Convert AMOS 2022 (CT+MR) to an nnU-Net raw dataset with "
                                                 "modality tags (case id > 500 is MR).")
    parser.add_argument("-i", required=True, help="extracted AMOS folder (holds imagesTr, labelsTr, imagesVa, ...)")
    add_common_arguments(parser, default_id=501, default_name="AMOS2022")
    parser.add_argument("--organs", type=int, choices=(13, 15), default=15,
                        help="15: all AMOS labels; 13: drop bladder and prostate/uterus (MulModSeg paper). Default 15")
    parser.add_argument("--split", choices=("all", "balanced", "2to1", "3to1"), default="all",
                        help="all: every labelled case for training (default); balanced/2to1/3to1: the paper's "
                             "CT:MR training ratios with held-out labelled test cases in imagesTs/labelsTs")
    parser.add_argument("--n_train", type=int, default=35, help="MR training cases in the paper splits (default 35)")
    parser.add_argument("--n_test", type=int, default=19, help="test cases per modality in the paper splits (default 19)")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the paper splits (default 12345)")
    add_intensity_argument(parser)
    args = parser.parse_args(argv)
    out = convert_amos(args.i, args.d, args.name, args.organs, args.split, args.n_train, args.n_test, args.seed,
                       args.intensity, args.np, args.overwrite)
    print(f"Wrote {out}")


def entry_point():
    main_wrapper(main)


if __name__ == "__main__":
    entry_point()
