"""The demo's short MulModSeg schedule: a few hundred iterations on 2 CPU cores.

Registered with nnU-Net like every trainer of the package (nnunet_mulmod/nnunet_trainers), so
``-tr nnUNetTrainerMulModSeg_demo`` works outside the demo too.

What differs from nnUNetTrainerMulModSeg, and why
- ``num_epochs`` comes from ``$nnUNet_mulmod_demo_epochs`` (``nnunet_mulmod_demo --epochs``), default 30;
  an epoch is 24 iterations (even: 12 CT and 12 MR steps under ALT) and 4 validation iterations, so that
  the progress log and the EMA pseudo Dice are updated every ~20 s instead of every 250 iterations.
- No data augmentation (as nnU-Net's ``nnUNetTrainerNoDA``): the phantoms already vary in pose, size and
  shape, and a few hundred iterations are too few to profit from augmentation. Measured on the phantoms
  (2-core CPU dev VM, 16-feature plans): nnU-Net's network without augmentation reached a liver pseudo
  Dice of 0.78 after 72 iterations; with nnU-Net's default augmentation MulModSeg was at 0.16 (all
  classes) after 288. No augmentation also frees the CPU core the augmentation worker would use.
- Hence no mirroring at test time either (as ``nnUNetTrainerNoDA``): the phantoms have left and right
  kidneys as separate classes, and test-time mirroring would cost 8 forward passes per window on a CPU.
"""
import os

import torch
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoDA import nnUNetTrainerNoDA

from nnunet_mulmod.demo.run_demo import DEFAULT_EPOCHS, EPOCHS_ENV
from nnunet_mulmod.training.mulmodseg_trainer import nnUNetTrainerMulModSeg


def demo_epochs() -> int:
    value = os.environ.get(EPOCHS_ENV, str(DEFAULT_EPOCHS))
    try:
        epochs = int(value)
    except ValueError:
        epochs = 0
    if epochs < 1:
        raise ValueError(f"${EPOCHS_ENV} must be a positive integer, got {value!r}.")
    return epochs


class nnUNetTrainerMulModSeg_demo(nnUNetTrainerMulModSeg):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = demo_epochs()
        self.num_iterations_per_epoch = 24
        self.num_val_iterations_per_epoch = 4

    # nnUNetTrainerNoDA's two overrides (its transforms are the validation transforms; the patch is not
    # enlarged for rotations)
    get_training_transforms = staticmethod(nnUNetTrainerNoDA.get_training_transforms)

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation_for_DA, do_dummy_2d_data_aug, _, _ = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation_for_DA, do_dummy_2d_data_aug, self.configuration_manager.patch_size, None
