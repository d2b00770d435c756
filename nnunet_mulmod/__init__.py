"""nnunet-mulmod: MulModSeg and Zeus as nnU-Net v2 extensions.

This module is imported at every interpreter start (see ``nnunet_mulmod.pth``): keep it free of heavy
imports (no torch, no nnunetv2).
"""
__version__ = "0.1.0"
