"""Variants of nnUNetTrainerMulModSeg that change one thing, for the recipe study (benchmarks/bench_real_data.py,
README "Does it help?"), in the style of nnU-Net's own training/nnUNetTrainer/variants/."""
