"""Variants of our trainers that change one thing, laid out as nnU-Net's own training/nnUNetTrainer/variants/:

    ablations.py        nnUNetTrainerMulModSegNoALT, nnUNetTrainerMulModSegOneHot (the paper's Tables 1 and 6),
                        nnUNetTrainerMulModSegPropALT, nnUNetTrainerMulModSegMirroring (the recipe study)
    single_modality.py  nnUNetTrainerCTOnly, nnUNetTrainerMROnly (nnU-Net on one modality, Table 2)
    controller.py       nnUNetTrainerMulModSegV1Controller (the recipe study: benchmarks/bench_real_data.py,
                        README "Does it help?")
"""
