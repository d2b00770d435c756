"""``python -m nnunet_mulmod.check_install``: is this environment set up for nnunet-mulmod?

Checks, in a fresh interpreter, what a user's ``nnUNetv2_train -tr nnUNetTrainerMulModSeg`` relies on:
the start-up hook registered our trainer folder with nnU-Net, and nnU-Net's own trainer search finds
our trainers there (importing them for real, with their dependencies), and every nnU-Net name we rely on
(nnunet_mulmod/nnunet_integration.py) exists and our registration takes.
"""
import os
import sys

TRAINERS = ("nnUNetTrainerMulModSeg", "nnUNetTrainerALT", "nnUNetTrainerMulModSegNoALT",
            "nnUNetTrainerMulModSegOneHot", "nnUNetTrainerMulModSegPropALT", "nnUNetTrainerMulModSegMirroring",
            "nnUNetTrainerCTOnly", "nnUNetTrainerMROnly", "nnUNetTrainerMulModSegPrimus", "nnUNetTrainerALTPrimus")


def main() -> int:
    from nnunet_mulmod import nnunet_integration
    from nnunet_mulmod.nnunet_integration import TRAINER_FOLDER

    registered = os.environ.get("nnUNet_extTrainer", "").split(os.pathsep)
    if TRAINER_FOLDER not in registered:
        print(f"FAIL: {TRAINER_FOLDER} is not in nnUNet_extTrainer ({registered}): the start-up file "
              f"nnunet_mulmod.pth is missing from site-packages. Reinstall with 'pip install .'.")
        return 1
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    for name in TRAINERS:
        cls = recursive_find_trainer_class_by_name(name)
        print(f"ok: {name} -> {cls.__module__}.{cls.__qualname__}")
    missing = nnunet_integration.missing_seams()
    for error in missing:
        print(f"FAIL: {error}")
    if missing:
        return 1
    nnunet_integration.install()  # raises, naming the seam, if the registration does not take
    print(f"ok: {len(nnunet_integration.SEAMS)} nnU-Net seams present; normalizers, preprocessor and predictor hook "
          f"registered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
