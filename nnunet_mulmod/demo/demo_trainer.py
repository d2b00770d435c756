"""The demo's trainer: MulModSeg without data augmentation, on a short schedule (a few hundred iterations on 2 CPU
cores).

Registered with nnU-Net like every trainer of the package (nnunet_mulmod/nnunet_trainers), so
``-tr nnUNetTrainerMulModSeg_demo`` works outside the demo too.

What differs from nnUNetTrainerMulModSeg, and why
- The schedule (made by nnunet_mulmod/training/schedules.py, like every schedule of the package): 30 epochs
  (``DEFAULT_EPOCHS``) of 24 iterations (even: 12 CT and 12 MR steps under ALT) and 4 validation iterations, so
  that the progress log and the EMA pseudo Dice are updated every ~20 s instead of every 250 iterations.
  ``nnunet_mulmod_demo --epochs N`` trains ``nnUNetTrainerMulModSeg_demo_<N>epochs``: this trainer with N epochs.
- No data augmentation (as nnU-Net's ``nnUNetTrainerNoDA``): the phantoms already vary in pose, size and
  shape, and a few hundred iterations are too few to profit from augmentation. Measured on the phantoms
  (2-core CPU dev VM, 16-feature plans): nnU-Net's network without augmentation reached a liver pseudo
  Dice of 0.78 after 72 iterations; with nnU-Net's default augmentation MulModSeg was at 0.16 (all
  classes) after 288. No augmentation also frees the CPU core the augmentation worker would use.
- Hence no mirroring at test time either (as ``nnUNetTrainerNoDA``): the phantoms have left and right
  kidneys as separate classes, and test-time mirroring would cost 8 forward passes per window on a CPU.
"""
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoDA import nnUNetTrainerNoDA

from nnunet_mulmod.demo.run_demo import DEFAULT_EPOCHS, DEMO_ITERATIONS, DEMO_VAL_ITERATIONS
from nnunet_mulmod.training.mulmodseg import nnUNetTrainerMulModSeg
from nnunet_mulmod.training.schedules import with_schedule


class nnUNetTrainerMulModSegNoDA(nnUNetTrainerMulModSeg):
    """nnUNetTrainerMulModSeg without data augmentation and without test-time mirroring (nnU-Net's NoDA)."""

    # nnUNetTrainerNoDA's two overrides (its transforms are the validation transforms; the patch is not
    # enlarged for rotations)
    get_training_transforms = staticmethod(nnUNetTrainerNoDA.get_training_transforms)

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation_for_DA, do_dummy_2d_data_aug, _, _ = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation_for_DA, do_dummy_2d_data_aug, self.configuration_manager.patch_size, None


nnUNetTrainerMulModSeg_demo = with_schedule(nnUNetTrainerMulModSegNoDA, DEFAULT_EPOCHS, DEMO_ITERATIONS,
                                            DEMO_VAL_ITERATIONS, name="nnUNetTrainerMulModSeg_demo", module=__name__)
