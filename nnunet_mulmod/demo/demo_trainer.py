"""The demo's trainer: nnUNetTrainerMulModSeg on a short schedule (a few hundred iterations on 2 CPU cores).

Registered with nnU-Net like every trainer of the package (nnunet_mulmod/nnunet_trainers), so
``-tr nnUNetTrainerMulModSeg_demo`` works outside the demo too.

What differs from nnUNetTrainerMulModSeg: only the schedule (made by nnunet_mulmod/training/schedules.py, like every
schedule of the package): 30 epochs (``DEFAULT_EPOCHS``) of 24 iterations (even: 12 CT and 12 MR steps under ALT)
and 4 validation iterations, so that the progress log and the EMA pseudo Dice are updated every ~15 s instead of
every 250 iterations. ``nnunet_mulmod_demo --epochs N`` trains ``nnUNetTrainerMulModSeg_demo_<N>epochs``: this
trainer with N epochs. Everything else is the trainer users train: nnU-Net's default data augmentation, and no
mirroring, because the phantoms have left and right kidneys as separate classes (training/mirroring.py).

Until 2026-12-07 the demo trained without augmentation: with nnU-Net's augmentation, its mirroring of the two
kidneys and the controller of that time, MulModSeg reached a Dice of 0.16 after 288 iterations. Measured
2026-12-07 (2-core CPU VM, the demo's defaults): 0.815 mean foreground Dice on the 6 held-out phantoms after 720
iterations with augmentation, in 8.0 minutes (docs/demo.md).
"""
from nnunet_mulmod.demo.run_demo import DEFAULT_EPOCHS, DEMO_ITERATIONS, DEMO_VAL_ITERATIONS
from nnunet_mulmod.training.mulmodseg import nnUNetTrainerMulModSeg
from nnunet_mulmod.training.schedules import with_schedule

nnUNetTrainerMulModSeg_demo = with_schedule(nnUNetTrainerMulModSeg, DEFAULT_EPOCHS, DEMO_ITERATIONS,
                                            DEMO_VAL_ITERATIONS, name="nnUNetTrainerMulModSeg_demo", module=__name__)
