"""The trainers, split by job (training/alt.py, training/mulmodseg.py, training/variants/), keep their names and stay
importable from nnunet_mulmod.training.mulmodseg_trainer, the module name older code, notes and scripts use; nnU-Net's
trainer search finds the very same classes."""
import importlib

HOMES = {
    "nnUNetTrainerALT": "nnunet_mulmod.training.alt",
    "preprocessed_fold_cases": "nnunet_mulmod.training.alt",
    "nnUNetTrainerMulModSeg": "nnunet_mulmod.training.mulmodseg",
    "PLANS_KEY": "nnunet_mulmod.training.mulmodseg",
    "TABLE_COPY_FILENAME": "nnunet_mulmod.training.mulmodseg",
    "nnUNetTrainerMulModSegNoALT": "nnunet_mulmod.training.variants.ablations",
    "nnUNetTrainerMulModSegOneHot": "nnunet_mulmod.training.variants.ablations",
    "nnUNetTrainerMulModSegPropALT": "nnunet_mulmod.training.variants.ablations",
    "nnUNetTrainerMulModSegMirroring": "nnunet_mulmod.training.variants.ablations",
    "nnUNetTrainerSingleModality": "nnunet_mulmod.training.variants.single_modality",
    "nnUNetTrainerCTOnly": "nnunet_mulmod.training.variants.single_modality",
    "nnUNetTrainerMROnly": "nnunet_mulmod.training.variants.single_modality",
    "unwrap_network": "nnunet_mulmod.training.unwrap",
}


def test_old_module_re_exports_every_name_from_its_new_home():
    compat = importlib.import_module("nnunet_mulmod.training.mulmodseg_trainer")
    assert sorted(compat.__all__) == sorted(HOMES)
    for name, home in HOMES.items():
        assert getattr(compat, name) is getattr(importlib.import_module(home), name), name
        if isinstance(getattr(compat, name), type):
            assert getattr(compat, name).__name__ == name  # nnU-Net finds trainers by class name
    from nnunet_mulmod.training.mulmodseg_trainer import nnUNetTrainerALT, nnUNetTrainerMulModSeg
    assert issubclass(nnUNetTrainerMulModSeg, nnUNetTrainerALT)


def test_nnunet_trainer_search_offers_the_same_classes():
    from nnunet_mulmod.nnunet_trainers import registered_trainers
    compat = importlib.import_module("nnunet_mulmod.training.mulmodseg_trainer")
    offered = registered_trainers()
    for name in ("nnUNetTrainerALT", "nnUNetTrainerMulModSeg", "nnUNetTrainerMulModSegNoALT",
                 "nnUNetTrainerMulModSegOneHot", "nnUNetTrainerMulModSegPropALT", "nnUNetTrainerMulModSegMirroring", "nnUNetTrainerCTOnly",
                 "nnUNetTrainerMROnly"):
        assert offered[name] is getattr(compat, name)
