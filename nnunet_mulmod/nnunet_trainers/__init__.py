"""Folder that nnU-Net's trainer search scans (registered via nnUNet_extTrainer at interpreter start).

nnU-Net imports every module here as a top-level module. Each module only re-exports trainer classes
from their real home inside ``nnunet_mulmod``, so the class objects (and everything pickled by
nnU-Net's worker processes) stay those of the installed package.
"""
