"""MM-WHS 2017 (whole-heart CT + MR) -> nnU-Net raw dataset with a modality tag per case.

Source layout (https://zmiclab.github.io/zxh/0/mmwhs/)::

    MM-WHS/ct_train/ct_train_1001_image.nii.gz   ct_train_1001_label.nii.gz   (1001..1020)
    MM-WHS/mr_train/mr_train_1001_image.nii.gz   mr_train_1001_label.nii.gz   (1001..1020)
    MM-WHS/ct_test/ct_test_2001_image.nii.gz     (optional, no labels)  mr_test/mr_test_2001_image.nii.gz

Quirks handled here
- Label values are substructure codes: 205 MYO, 420 LA, 500 LV, 550 RA, 600 RV, 820 AA, 850 PA, mapped to
  1..7 in the order the MulModSeg paper reports them (MY, LA, LV, RA, RV, AA, PA). Some MR labels contain
  421, which is LA. Anything else is an error naming the case.
- MR volumes come in mixed orientations: the dataset uses ``NibabelIOWithReorient`` (reorient to RAS on
  read, back on write; nnU-Net's own choice for AMOS), so training and prediction see one orientation.

Case ids: ``ct_1001`` ... ``mr_1020`` (test: ``ct_2001`` ...). Splits (``--split``) go into
splits_final.json (copied to nnUNet_preprocessed by ``nnUNetv2_plan_and_preprocess``): ``all`` writes none
(nnU-Net's 5-fold CV); ``75_25`` is one fold with 75 % of each modality for training, 25 % for validation;
``cross`` is the paper's cross-modality setting: all MR + half of the CT cases train, the other CT half
validates, two folds (CT halves swapped), from ``--seed``.

Usage: ``nnunet_mulmod_convert_mmwhs -i ~/data/MM-WHS -d 502``.
"""
from __future__ import annotations

import argparse
import os
import re
from typing import Dict, List, Optional

import numpy as np

from .common import (ConversionError, FILE_ENDING, add_common_arguments, add_intensity_argument,
                     convert_nifti_case, dataset_path, dataset_writer, list_images, main_wrapper,
                     mixed_channel_name, run_jobs, write_dataset_json, write_splits)

# source value -> (target id, name), in the paper's order
MMWHS_LABELS = {205: (1, "myocardium"), 420: (2, "left_atrium"), 421: (2, "left_atrium"),
                500: (3, "left_ventricle"), 550: (4, "right_atrium"), 600: (5, "right_ventricle"),
                820: (6, "ascending_aorta"), 850: (7, "pulmonary_artery")}
_FILE_PATTERN = re.compile(r"^(ct|mr)_(train|test)_(\d+)_image\.nii\.gz$")


def find_cases(mmwhs_folder: str):
    """(labelled, test): case id -> (image path, label path or None, modality)."""
    labelled, test = {}, {}
    for modality in ("ct", "mr"):
        for part in ("train", "test"):
            folder = os.path.join(mmwhs_folder, f"{modality}_{part}")
            for f in list_images(folder):
                if f.endswith("_label.nii.gz"):
                    continue
                match = _FILE_PATTERN.match(f)
                if not match or match.group(1) != modality or match.group(2) != part:
                    raise ConversionError(f"Unexpected file {os.path.join(folder, f)}: MM-WHS names are "
                                          f"{modality}_{part}_<id>_image.nii.gz. Rename or remove it.")
                case = f"{modality}_{match.group(3)}"
                image = os.path.join(folder, f)
                label = os.path.join(folder, f.replace("_image.nii.gz", "_label.nii.gz"))
                if part == "train":
                    if not os.path.isfile(label):
                        raise ConversionError(f"Case {case}: image {image} has no label {label}. Restore the label "
                                              f"file or remove the image.")
                    labelled[case] = (image, label, modality.upper())
                else:
                    test[case] = (image, None, modality.upper())
    if not labelled:
        raise ConversionError(f"No MM-WHS training cases in {mmwhs_folder}: expected ct_train/ and mr_train/ with "
                              f"*_image.nii.gz and *_label.nii.gz files.")
    return labelled, test


def make_splits(cases: Dict[str, tuple], split: str, seed: int) -> Optional[List[Dict[str, List[str]]]]:
    rng = np.random.default_rng(seed)
    by_modality = {m: sorted(c for c, v in cases.items() if v[2] == m) for m in ("CT", "MR")}
    shuffled = {m: [c[i] for i in rng.permutation(len(c))] for m, c in by_modality.items()}
    if split == "all":
        return None
    if split == "75_25":
        fold = {"train": [], "val": []}
        for m, c in shuffled.items():
            n_val = int(round(0.25 * len(c)))
            if len(c) and (n_val == 0 or n_val == len(c)):
                raise ConversionError(f"Split 75_25 needs at least 2 {m} cases, found {len(c)}.")
            fold["val"] += c[:n_val]
            fold["train"] += c[n_val:]
        return [fold]
    if split == "cross":
        ct = shuffled["CT"]
        if len(ct) < 2 or not shuffled["MR"]:
            raise ConversionError(f"Split 'cross' needs MR cases and at least 2 CT cases, found {len(shuffled['MR'])} "
                                  f"MR and {len(ct)} CT.")
        halves = [ct[: len(ct) // 2], ct[len(ct) // 2:]]
        return [{"train": shuffled["MR"] + halves[k], "val": halves[1 - k]} for k in (0, 1)]
    raise ConversionError(f"--split must be one of all, 75_25, cross; got {split!r}.")


def convert_mmwhs(mmwhs_folder: str, dataset_id: int = 502, name: str = "MMWHS", split: str = "all",
                  seed: int = 12345, intensity: str = "paper", num_processes: int = 1,
                  overwrite: bool = False) -> str:
    labelled, test = find_cases(mmwhs_folder)
    splits = make_splits(labelled, split, seed)
    lookup = {0: 0, **{source: target for source, (target, _) in MMWHS_LABELS.items()}}
    meaning = {0: "background", **{source: n for source, (_, n) in MMWHS_LABELS.items()}}
    labels = {"background": 0}
    for target, n in sorted(set(MMWHS_LABELS.values())):
        labels[n] = target

    with dataset_writer(dataset_id, name, overwrite) as out:
        jobs = [dict(case=c, image=v[0], label=v[1], lookup=lookup, meaning=meaning,
                     out_image=os.path.join(out, "imagesTr", f"{c}_0000{FILE_ENDING}"),
                     out_label=os.path.join(out, "labelsTr", c + FILE_ENDING)) for c, v in sorted(labelled.items())]
        jobs += [dict(case=c, image=v[0], label=None, out_label=None,
                      out_image=os.path.join(out, "imagesTs", f"{c}_0000{FILE_ENDING}")) for c, v in sorted(test.items())]
        run_jobs(convert_nifti_case, jobs, num_processes, desc="MM-WHS cases")
        if splits is not None:
            write_splits(out, splits)
        case_modalities = {c: v[2] for c, v in {**labelled, **test}.items()}
        write_dataset_json(
            out, {0: mixed_channel_name(case_modalities.values(), intensity)}, labels, len(labelled),
            case_modalities, vocabulary=["CT", "MR"], dataset_name=name,
            reference="https://zmiclab.github.io/zxh/0/mmwhs/", overwrite_image_reader_writer="NibabelIOWithReorient",
            converted_by="nnunet_mulmod_convert_mmwhs",
            description=f"MM-WHS 2017 whole heart, 7 substructures (205,420/421,500,550,600,820,850 -> 1..7); "
                        f"split {split!r} (seed {seed}) in splits_final.json" if splits else
                        "MM-WHS 2017 whole heart, 7 substructures; nnU-Net's default 5-fold CV.")
    return dataset_path(dataset_id, name)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Convert MM-WHS 2017 (CT+MR whole heart) to an nnU-Net raw "
                                                 "dataset with modality tags.")
    parser.add_argument("-i", required=True, help="MM-WHS folder holding ct_train/ and mr_train/ (ct_test/, mr_test/ optional)")
    add_common_arguments(parser, default_id=502, default_name="MMWHS")
    parser.add_argument("--split", choices=("all", "75_25", "cross"), default="all",
                        help="all: nnU-Net's 5-fold CV (default); 75_25: one fold, 75/25 per modality; cross: "
                             "all MR + half the CT train, other CT half validates, two folds")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the splits (default 12345)")
    add_intensity_argument(parser)
    args = parser.parse_args(argv)
    out = convert_mmwhs(args.i, args.d, args.name, args.split, args.seed, args.intensity, args.np, args.overwrite)
    print(f"Wrote {out}")


def entry_point():
    main_wrapper(main)


if __name__ == "__main__":
    entry_point()
