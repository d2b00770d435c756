"""How the controller that generates the dynamic head is parametrised and initialised."""
from nnunet_mulmod.training.mulmodseg import nnUNetTrainerMulModSeg


class nnUNetTrainerMulModSegV1Controller(nnUNetTrainerMulModSeg):
    """The authors' controller layout with PyTorch's default initialisation (nnunet-mulmod 0.1's default): the
    generated head starts ~170x smaller than an nnU-Net layer and its text branch ~10x weaker than its image
    branch (see MulModSegController)."""

    controller_version = 1
