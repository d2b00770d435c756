"""The one-command demo: synthetic CT+MR phantoms -> nnU-Net plan/preprocess -> MulModSeg training -> Dice."""
