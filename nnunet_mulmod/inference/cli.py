"""``nnunet_mulmod_predict``: nnUNetv2_predict plus an explicit modality per case.

    nnunet_mulmod_predict -i imagesTs -o preds -d 501 -c 3d_fullres -f 0 -tr nnUNetTrainerMulModSeg \
        [--modality MR | --modality_map map.json] [--wrong_prompt]

Everything else behaves as ``nnUNetv2_predict`` (which also works, with the dataset map and automatic
detection only; see nnunet_mulmod/inference/modality_selection.py).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Mapping, Optional, Sequence, Union

import torch

from nnunet_mulmod.devices import DeviceError, compile_fallback, resolve_device
from nnunet_mulmod.inference.modality_selection import CaseModalityResolver, _unwrap, load_modality_map
from nnunet_mulmod.modality import ModalityError
from nnunet_mulmod.modeling.mulmodseg_net import MulModSegNet


def predict_with_modalities(model_folder: str, input_folder_or_files, output_folder: Optional[str],
                            folds: Sequence[Union[int, str]] = (0,), checkpoint_name: str = "checkpoint_final.pth",
                            modality: Optional[str] = None, modality_map: Optional[Mapping[str, str]] = None,
                            wrong_prompt: bool = False, tile_step_size: float = 0.5, use_mirroring: bool = True,
                            device: Optional[torch.device] = None, num_processes_preprocessing: int = 3,
                            num_processes_segmentation_export: int = 3, save_probabilities: bool = False,
                            overwrite: bool = True):
    """Python API: predict a folder (or nnU-Net list of lists of files) with a MulModSeg model.

    ``modality`` applies to every case, ``modality_map`` (case id -> modality) to the cases it lists;
    cases given neither use the model's dataset.json map, then automatic detection.
    """
    from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_mulmod.nnunet_integration import install
    from nnunet_mulmod.training.mulmodseg import PLANS_KEY

    install()  # normalizers, preprocessor, predictor hook (also reached via build_network_architecture)
    # everything the user can get wrong is checked from the model folder's json files, before the model loads
    plans_file, dataset_json_file = join(model_folder, "plans.json"), join(model_folder, "dataset.json")
    if not isfile(plans_file) or not isfile(dataset_json_file):
        raise ModalityError(f"{model_folder} is not a trained model folder (no plans.json / dataset.json). Give the "
                            f"folder nnUNetv2_train wrote (-m), or the dataset with -d and -tr/-p/-c.")
    spec = load_json(plans_file).get(PLANS_KEY)
    if spec is None:
        raise ModalityError(f"{model_folder} is not a MulModSeg model (its plans.json has no '{PLANS_KEY}' section); "
                            f"use nnUNetv2_predict for it.")
    resolver = CaseModalityResolver(spec["modalities"], load_json(dataset_json_file), modality, modality_map,
                                    wrong_prompt)

    device = device or (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                perform_everything_on_device=device.type == "cuda", device=device,
                                verbose=False, allow_tqdm=True)
    predictor.initialize_from_trained_model_folder(model_folder, folds, checkpoint_name)
    network = _unwrap(predictor.network)
    if not isinstance(network, MulModSegNet):
        raise ModalityError(f"{model_folder} is not a MulModSeg model (its network is {type(network).__name__}); "
                            f"use nnUNetv2_predict for it.")
    predictor.mulmod_resolver = resolver
    if num_processes_preprocessing == 0 and num_processes_segmentation_export == 0:  # as nnUNetv2_predict does
        if isinstance(output_folder, str):
            os.makedirs(output_folder, exist_ok=True)
        return predictor.predict_from_files_sequential(input_folder_or_files, output_folder,
                                                       save_probabilities=save_probabilities, overwrite=overwrite)
    return predictor.predict_from_files(input_folder_or_files, output_folder, save_probabilities=save_probabilities,
                                        overwrite=overwrite, num_processes_preprocessing=num_processes_preprocessing,
                                        num_processes_segmentation_export=num_processes_segmentation_export)


def main(argv=None):
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", required=True, help="input folder (nnU-Net naming: CASE_0000.nii.gz)")
    parser.add_argument("-o", required=True, help="output folder")
    parser.add_argument("-m", default=None, help="trained model folder (instead of -d/-tr/-p/-c)")
    parser.add_argument("-d", default=None, help="dataset name or id")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier")
    parser.add_argument("-tr", default="nnUNetTrainerMulModSeg", help="trainer class name")
    parser.add_argument("-c", default="3d_fullres", help="configuration")
    parser.add_argument("-f", nargs="+", default=["0"], help="folds ('all' allowed)")
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint file name")
    parser.add_argument("-step_size", type=float, default=0.5)
    parser.add_argument("--disable_tta", action="store_true")
    parser.add_argument("--save_probabilities", action="store_true")
    parser.add_argument("-npp", type=int, default=3, help="preprocessing processes")
    parser.add_argument("-nps", type=int, default=3, help="segmentation export processes")
    parser.add_argument("-device", default="cuda" if torch.cuda.is_available() else "cpu",
                        choices=["cuda", "cpu", "mps"])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--modality", default=None,
                       help="modality of every input case (e.g. CT, MR), or 'auto' for automatic detection")
    group.add_argument("--modality_map", default=None, help="JSON file {case_id: modality}")
    parser.add_argument("--wrong_prompt", action="store_true",
                        help="prompt each case with the next modality of the vocabulary (paper Table 7)")
    args = parser.parse_args(argv)

    if args.m is None and args.d is None:
        parser.error("give the model with -m MODEL_FOLDER or with -d (and -tr/-p/-c)")
    model_folder = args.m or get_output_folder(args.d, args.tr, args.p, args.c)
    folds = [f if f == "all" else int(f) for f in args.f]
    try:
        device = resolve_device(args.device)  # before anything loads or is written (nnunet_mulmod/devices.py)
        note = compile_fallback(device)
        if note:
            print(note, file=sys.stderr)
        modality_map = load_modality_map(args.modality_map) if args.modality_map else None
        predict_with_modalities(model_folder, args.i, args.o, folds, args.chk, args.modality, modality_map,
                                args.wrong_prompt, args.step_size, not args.disable_tta, device,
                                args.npp, args.nps, args.save_probabilities)
    except (ModalityError, DeviceError) as e:  # bad input: the message names the model/case and the fix; a traceback would hide it
        print(f"ERROR: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
