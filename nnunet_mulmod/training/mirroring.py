"""Mirroring that respects left/right classes: the base of every trainer of this package.

nnU-Net mirrors every training patch along every spatial axis at random, and at prediction averages the
mirrored predictions (test-time augmentation). A mirror image of an abdomen shows the right kidney where the
left one belongs (any single-axis mirror flips handedness; nnU-Net's rotations do not), so for a dataset whose
classes come in left/right pairs the network is trained on contradictory labels: it can only tell the two
kidneys apart from what sits beside them (liver or spleen), which is not in every slice. Measured on the real
CT/MR dev set (README, "Does it help?"): swapped kidneys and spleen/liver confusions in the hard cases of
mirrored runs. TotalSegmentator trains with nnU-Net's ``nnUNetTrainerNoMirroring`` for this reason.

So our trainers mirror as nnU-Net does unless a class name says left or right; then they do not mirror, neither
in training nor at test time (``inference_allowed_mirroring_axes`` None, which the checkpoint carries to
``nnUNetv2_predict``). ``mirroring`` on a subclass forces either way ("on": nnU-Net's default, "off").
"""
from __future__ import annotations

import re
from typing import Dict, List

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

LATERAL_WORDS = frozenset({"left", "right"})
MIRRORING_CHOICES = ("auto", "on", "off")


def lateral_class_names(labels: Dict[str, object]) -> List[str]:
    """The names in a dataset.json ``labels`` map that name a side: "left"/"right" as a word of the name
    ("kidney_left", "Right Kidney", "left-atrium"), in any case. ``{"kidney_left": 3, "liver": 4}`` ->
    ``["kidney_left"]``; "leftover" or "brightness" are not sides."""
    return [name for name in labels if LATERAL_WORDS & set(re.split(r"[^a-z]+", str(name).lower()))]


class nnUNetTrainerNoMirroringIfLateral(nnUNetTrainer):
    """nnU-Net's trainer that does not mirror (training or test time) when the dataset has left/right classes."""

    # "auto": off when a class name says left or right (lateral_class_names), else nnU-Net's mirroring;
    # "on": nnU-Net's mirroring whatever the classes; "off": never (nnUNetTrainerNoMirroring)
    mirroring = "auto"

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation_for_DA, do_dummy_2d_data_aug, initial_patch_size, mirror_axes = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if self.mirroring not in MIRRORING_CHOICES:
            raise ValueError(f"{self.__class__.__name__}.mirroring must be one of {MIRRORING_CHOICES}, "
                             f"not {self.mirroring!r}")
        lateral = lateral_class_names(self.dataset_json["labels"])
        if self.mirroring == "off" or (self.mirroring == "auto" and lateral):
            reason = (f"classes {', '.join(lateral)} are left/right-specific and a mirrored image swaps the sides"
                      if self.mirroring == "auto" else f"{self.__class__.__name__}.mirroring = 'off'")
            if not getattr(self, "_mirroring_off_logged", False):  # ALT builds one loader (and asks) per modality
                self.print_to_log_file(f"Mirroring off, in training and at test time: {reason}.")
                self._mirroring_off_logged = True
            mirror_axes = None
            self.inference_allowed_mirroring_axes = None
        return rotation_for_DA, do_dummy_2d_data_aug, initial_patch_size, mirror_axes
