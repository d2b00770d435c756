"""Run at every interpreter start by ``nnunet_mulmod.pth``: registers the package with nnU-Net.

``nnUNetv2_plan_and_preprocess``, ``nnUNetv2_train`` (before it finds our trainer) and the spawned preprocessing
workers of ``nnUNetv2_predict`` run no code of ours: this start-up file is the only way their lookups (trainer
search, channel name -> normalizer, normalizer and preprocessor by name) reach us. What it does is
``nnunet_mulmod.nnunet_integration.install_at_startup``: ``nnunet_mulmod/nnunet_trainers`` into
``nnUNet_extTrainer`` and a post-import hook on three nnU-Net modules, importing nothing (``os``, ``sys``,
``importlib`` only). Set ``NNUNET_MULMOD_NO_AUTOREGISTER=1`` to switch it off.
"""
from nnunet_mulmod.nnunet_integration import TRAINER_FOLDER, install_at_startup  # noqa: F401 (check_install)


def register(environ=None) -> None:
    """The start-up registration (trainer folder and import hook) for ``environ`` (default: os.environ)."""
    import os
    install_at_startup(os.environ if environ is None else environ)


register()
