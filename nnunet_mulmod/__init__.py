"""nnunet-mulmod: MulModSeg and Zeus as nnU-Net v2 extensions.

This module is imported at every interpreter start (see ``nnunet_mulmod.pth``): keep it free of heavy
imports (no torch, no nnunetv2).
"""
__version__ = "0.1.0"

# Run from a checkout as is: nnunet_mulmod.evaluation etc. are this checkout's root folders (see _checkout_layout)
from nnunet_mulmod import _checkout_layout  # noqa: E402

_checkout_layout.install(__file__)
