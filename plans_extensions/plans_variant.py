"""Derive the papers' plans from nnU-Net's own plans, under a new plans identifier (``-p``).

nnU-Net keeps each plans variant in its own file ``$nnUNet_preprocessed/DatasetXXX/<identifier>.json``; its
preprocessed data lives in ``<identifier>_<configuration>`` folders, and trained models in
``<trainer>__<identifier>__<configuration>``. This command reads nnUNetPlans.json (written by
``nnUNetv2_plan_and_preprocess`` / ``nnUNetv2_plan_experiment``), changes what the paper fixes, recomputes the
network topology for the new patch size with nnU-Net's own ``get_pool_and_conv_props`` (as its planner does)
and writes the new file. nnUNetPlans.json is never modified.

Presets
- ``mulmodseg``: configuration ``3d_fullres`` only, target spacing 1.5 x 1.5 x 2.0 mm (x, y, z), patch 96^3,
  ``MulModPreprocessor`` when the dataset uses the MulModSeg intensity channel (``CT_or_MR``), so that each
  case is normalised by its modality tag. Identifier ``nnUNetPlans_MulModSeg``.
- ``zeus``: configuration ``2d`` only, patch 256 x 256 (SAM's mask-decoder output size), nnU-Net's 2d
  in-plane spacing. Identifier ``nnUNetPlans_Zeus``.

Then, as usual with nnU-Net::

    nnunet_mulmod_plans_variant -d 501 -preset mulmodseg
    nnUNetv2_preprocess -d 501 -plans_name nnUNetPlans_MulModSeg -c 3d_fullres
    nnUNetv2_train 501 3d_fullres 0 -p nnUNetPlans_MulModSeg -tr <trainer>
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from typing import List, Optional, Sequence

import numpy as np

PRESETS = {
    "mulmodseg": {"configuration": "3d_fullres", "spacing_xyz": (1.5, 1.5, 2.0), "patch_size": (96, 96, 96),
                  "target_plans": "nnUNetPlans_MulModSeg"},
    "zeus": {"configuration": "2d", "spacing_xyz": None, "patch_size": (256, 256), "target_plans": "nnUNetPlans_Zeus"},
}
MULMOD_NORMALIZERS = ("MulModIntensityNormalization", "MulModCodeIntensityNormalization")


class PlansVariantError(RuntimeError):
    pass


def _fit_length(values: Sequence, n: int) -> list:
    values = list(values)
    return values[:n] + [values[-1]] * max(0, n - len(values))


def recompute_topology(configuration: dict, patch_size: Sequence[int]) -> dict:
    """Patch size -> pooling/convolution layout, as nnU-Net's ExperimentPlanner.get_plans_for_configuration."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    spacing = configuration["spacing"]
    if len(patch_size) != len(spacing):
        raise PlansVariantError(f"patch size {list(patch_size)} has {len(patch_size)} axes, the configuration "
                                f"{len(spacing)}.")
    _, strides, kernel_sizes, new_patch, _ = get_pool_and_conv_props(spacing, list(patch_size), 4, 999999)
    arch = configuration["architecture"]["arch_kwargs"]
    n_stages = len(strides)
    base, max_features = arch["features_per_stage"][0], max(arch["features_per_stage"])
    arch["n_stages"] = n_stages
    arch["features_per_stage"] = [min(max_features, base * 2 ** i) for i in range(n_stages)]
    arch["kernel_sizes"] = [list(k) for k in kernel_sizes]
    arch["strides"] = [list(s) for s in strides]
    for key in ("n_conv_per_stage", "n_blocks_per_stage"):
        if key in arch:
            arch[key] = _fit_length(arch[key], n_stages)
    if "n_conv_per_stage_decoder" in arch:
        arch["n_conv_per_stage_decoder"] = _fit_length(arch["n_conv_per_stage_decoder"], n_stages - 1)
    configuration["patch_size"] = [int(p) for p in new_patch]
    return configuration


def make_variant(plans: dict, preset: str, target_plans: str, spacing_xyz: Optional[Sequence[float]] = None,
                 patch_size: Optional[Sequence[int]] = None, batch_size: Optional[int] = None,
                 intensity: Optional[dict] = None) -> dict:
    settings = PRESETS[preset]
    name = settings["configuration"]
    if name not in plans["configurations"]:
        raise PlansVariantError(f"The source plans have no '{name}' configuration (found "
                                f"{list(plans['configurations'])}).")
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    source = PlansManager(plans).get_configuration(name).configuration  # resolves inherits_from
    configuration = copy.deepcopy(source)
    configuration.pop("inherits_from", None)

    spacing_xyz = spacing_xyz if spacing_xyz is not None else settings["spacing_xyz"]
    if spacing_xyz is not None:
        spacing_zyx = list(reversed([float(s) for s in spacing_xyz]))  # SimpleITK/nnU-Net array order
        transposed = [spacing_zyx[i] for i in plans["transpose_forward"]]
        new_spacing = transposed if name != "2d" else transposed[1:]
        scale = np.array(configuration["spacing"]) / np.array(new_spacing)
        configuration["median_image_size_in_voxels"] = [
            float(round(m * s, 1)) for m, s in zip(configuration["median_image_size_in_voxels"][-len(scale):], scale)]
        configuration["spacing"] = new_spacing
    recompute_topology(configuration, patch_size if patch_size is not None else settings["patch_size"])
    if batch_size is not None:
        configuration["batch_size"] = int(batch_size)
    configuration["data_identifier"] = f"{target_plans}_{name}"
    if any(s in MULMOD_NORMALIZERS for s in configuration["normalization_schemes"]):
        configuration["preprocessor_name"] = "MulModPreprocessor"
    if intensity:
        if configuration.get("preprocessor_name") != "MulModPreprocessor":
            raise PlansVariantError(
                f"--ct_window/--mr_percentiles/--mr_scaling apply to the MulModSeg intensity channel only, but this "
                f"dataset's normalization is {configuration['normalization_schemes']}. Convert it with "
                f"--intensity paper or code (channel name CT_or_MR / CT_or_MR_code) and plan again.")
        configuration["mulmod_intensity"] = intensity
    variant = copy.deepcopy(plans)
    variant["plans_name"] = target_plans
    variant["configurations"] = {name: configuration}
    PlansManager(variant).get_configuration(name)  # must load like any nnU-Net plans
    return variant


def write_plans_variant(dataset_name_or_id: str, preset: str, source_plans: str = "nnUNetPlans",
                        target_plans: Optional[str] = None, overwrite: bool = False, **kwargs) -> str:
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    if preset not in PRESETS:
        raise PlansVariantError(f"-preset must be one of {sorted(PRESETS)}, got {preset!r}.")
    target_plans = target_plans or PRESETS[preset]["target_plans"]
    if target_plans == source_plans:
        raise PlansVariantError("The target plans identifier must differ from the source: nnU-Net's own plans stay intact.")
    try:
        dataset_name = maybe_convert_to_dataset_name(dataset_name_or_id)
    except RuntimeError as e:
        raise PlansVariantError(str(e)) from None
    folder = os.path.join(str(nnUNet_preprocessed), dataset_name)
    source_file = os.path.join(folder, source_plans + ".json")
    if not os.path.isfile(source_file):
        raise PlansVariantError(f"{source_file} does not exist. Run nnUNetv2_plan_and_preprocess -d {dataset_name_or_id} "
                                f"(or nnUNetv2_plan_experiment) first.")
    target_file = os.path.join(folder, target_plans + ".json")
    if os.path.isfile(target_file) and not overwrite:
        raise PlansVariantError(f"{target_file} exists. Pass --overwrite to replace it (its preprocessed data and "
                                f"trained models would then no longer match), or choose another -target_plans.")
    with open(source_file) as f:
        plans = json.load(f)
    variant = make_variant(plans, preset, target_plans, **kwargs)
    tmp = target_file + ".partial"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(variant, f, indent=4, sort_keys=False)
    os.replace(tmp, target_file)
    return target_file


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Derive MulModSeg/Zeus plans from nnUNetPlans.json under a new plans "
                                                 "identifier (use it with -p / -plans_name).")
    parser.add_argument("-d", required=True, help="dataset id or name")
    parser.add_argument("-preset", required=True, choices=sorted(PRESETS),
                        help="mulmodseg: 3d_fullres, 1.5x1.5x2.0 mm, 96^3; zeus: 2d, 256x256")
    parser.add_argument("-source_plans", default="nnUNetPlans", help="plans to derive from (default nnUNetPlans)")
    parser.add_argument("-target_plans", default=None,
                        help="new plans identifier (default nnUNetPlans_MulModSeg / nnUNetPlans_Zeus)")
    parser.add_argument("--spacing", nargs="+", type=float, default=None, metavar="MM",
                        help="target spacing x y z in mm (default: preset; zeus keeps nnU-Net's)")
    parser.add_argument("--patch_size", nargs="+", type=int, default=None,
                        help="patch size in the configuration's axis order (default: preset)")
    parser.add_argument("--batch_size", type=int, default=None, help="batch size (default: nnU-Net's)")
    parser.add_argument("--ct_window", nargs=2, type=float, default=None, metavar=("LOW", "HIGH"),
                        help="CT window in HU for the CT_or_MR channel (default: the channel's protocol, paper "
                             "[-275, 125])")
    parser.add_argument("--mr_percentiles", nargs=2, type=float, default=None, metavar=("LOW", "HIGH"),
                        help="MR clipping percentiles (default: paper 0.5 99.5)")
    parser.add_argument("--mr_scaling", choices=("minmax", "zscore"), default=None,
                        help="MR scaling after clipping (default: paper minmax)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing target plans file")
    args = parser.parse_args(argv)
    intensity = {k: v for k, v in (("ct_window", args.ct_window), ("mr_percentiles", args.mr_percentiles),
                                   ("mr_scaling", args.mr_scaling)) if v is not None}
    try:
        path = write_plans_variant(args.d, args.preset, args.source_plans, args.target_plans, args.overwrite,
                                   spacing_xyz=args.spacing, patch_size=args.patch_size, batch_size=args.batch_size,
                                   intensity=intensity or None)
    except PlansVariantError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
