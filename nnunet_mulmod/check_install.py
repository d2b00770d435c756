"""``python -m nnunet_mulmod.check_install``: is this environment set up for nnunet-mulmod?

Checks, in a fresh interpreter, what a user's ``nnUNetv2_train -tr nnUNetTrainerMulModSeg`` relies on:
the start-up hook registered our trainer folder with nnU-Net, and nnU-Net's own trainer search finds
our trainers there (importing them for real, with their dependencies).
"""
import os
import sys

TRAINERS = ("nnUNetTrainerMulModSeg", "nnUNetTrainerALT", "nnUNetTrainerMulModSegNoALT",
            "nnUNetTrainerMulModSegOneHot", "nnUNetTrainerCTOnly", "nnUNetTrainerMROnly")


def main() -> int:
    from nnunet_mulmod._autoregister import TRAINER_FOLDER

    registered = os.environ.get("nnUNet_extTrainer", "").split(os.pathsep)
    if TRAINER_FOLDER not in registered:
        print(f"FAIL: {TRAINER_FOLDER} is not in nnUNet_extTrainer ({registered}): the start-up file "
              f"nnunet_mulmod.pth is missing from site-packages. Reinstall with 'pip install .'.")
        return 1
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    for name in TRAINERS:
        cls = recursive_find_trainer_class_by_name(name)
        print(f"ok: {name} -> {cls.__module__}.{cls.__qualname__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
