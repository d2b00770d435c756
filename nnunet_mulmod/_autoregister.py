"""Registers our trainers with nnU-Net's trainer search; run at interpreter start by ``nnunet_mulmod.pth``.

nnU-Net (>= 2.8.0) searches the folders listed in ``nnUNet_extTrainer`` (os.pathsep separated) when a
``-tr`` name is not one of its own. We append ``nnunet_mulmod/nnunet_trainers`` to that variable,
keeping whatever the user set. Only ``os`` is imported: this runs in every Python process of the
environment. Set ``NNUNET_MULMOD_NO_AUTOREGISTER=1`` to switch it off.
"""
import os

TRAINER_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nnunet_trainers")


def register(environ=os.environ) -> None:
    if environ.get("NNUNET_MULMOD_NO_AUTOREGISTER"):
        return
    current = [p for p in environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if TRAINER_FOLDER not in current:
        environ["nnUNet_extTrainer"] = os.pathsep.join(current + [TRAINER_FOLDER])


register()

# MulModSeg intensity normalization: a post-import hook (sys/importlib only, nothing imported now) that lets
# nnU-Net's name lookups find nnunet_mulmod.intensity's classes; see nnunet_mulmod/_intensity_hook.py.
if not os.environ.get("NNUNET_MULMOD_NO_AUTOREGISTER"):
    from nnunet_mulmod import _intensity_hook

    _intensity_hook.install()
