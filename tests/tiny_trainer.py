"""A tiny preprocessed 2d CT+MR dataset written straight in nnU-Net's preprocessed format, and MulModSeg trainers
built on it in-process (no planning or preprocessing run: seconds, not minutes). For tests of trainer hooks
that nnU-Net calls (DDP, compile, AMP), with nnU-Net's real data loaders and augmentation behind them.

Call ``write_tiny_preprocessed(root)`` and set ``nnUNet_preprocessed`` / ``nnUNet_results`` (and
``nnUNet_n_proc_DA=0``) before nnunetv2 is imported in the process that builds trainers."""
from __future__ import annotations

import copy
import json
import os

import numpy as np

DATASET_NAME = "Dataset779_TinyDDP"
CASES = {f"ct_{i}": "CT" for i in range(4)} | {f"mr_{i}": "MR" for i in range(4)}
SPLIT = {"train": ["ct_0", "ct_1", "ct_2", "mr_0", "mr_1", "mr_2"], "val": ["ct_3", "mr_3"]}

DATASET_JSON = {"channel_names": {"0": "CT_or_MR"}, "labels": {"background": 0, "liver": 1, "spleen": 2},
                "numTraining": len(CASES), "file_ending": ".nii.gz", "modalities": ["CT", "MR"],
                "case_modalities": dict(CASES)}

ARCH = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {"n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.modules.conv.Conv2d",
                        "kernel_sizes": [[3, 3]] * 3, "strides": [[1, 1], [2, 2], [2, 2]],
                        "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                        "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
                        "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}

PLANS = {"dataset_name": DATASET_NAME, "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": [1, 1, 1],
         "original_median_shape_after_transp": [4, 20, 20], "image_reader_writer": "SimpleITKIO",
         "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
         "configurations": {"2d": {"data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor",
                                   "batch_size": 4, "patch_size": [16, 16], "median_image_size_in_voxels": [20, 20],
                                   "spacing": [1, 1], "normalization_schemes": ["ZScoreNormalization"],
                                   "use_mask_for_norm": [False], "architecture": ARCH, "batch_dice": True,
                                   "resampling_fn_data": "resample_data_or_seg_to_shape",
                                   "resampling_fn_seg": "resample_data_or_seg_to_shape",
                                   "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0,
                                                                 "force_separate_z": None},
                                   "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0,
                                                                "force_separate_z": None},
                                   "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                                   "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                                          "force_separate_z": None}}},
         "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
         "foreground_intensity_properties_per_channel": {}}


def write_tiny_preprocessed(root: str) -> str:
    """nnUNet_preprocessed/<dataset> with 8 cases [1, 4, 20, 20] (b2nd + pkl), plans, split, text table."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunet_mulmod.text.table import default_table_path, one_hot_table

    base = os.path.join(root, DATASET_NAME)
    folder = os.path.join(base, "nnUNetPlans_2d")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(0)
    for i, (case, modality) in enumerate(CASES.items()):
        seg = np.zeros((1, 4, 20, 20), dtype=np.int8)
        seg[0, :, 4:10, 4:10] = 1
        seg[0, :, 12:17, 11:18] = 2
        # the modalities differ in contrast, so the modality classifier has something to learn
        data = (rng.randn(1, 4, 20, 20) + (seg * (1.0 if modality == "CT" else -1.0))).astype(np.float32)
        properties = {"spacing": [1.0, 1.0, 1.0], "shape_before_cropping": (4, 20, 20),
                      "bbox_used_for_cropping": [[0, 4], [0, 20], [0, 20]], "shape_after_cropping_and_before_resampling": (4, 20, 20),
                      "class_locations": DefaultPreprocessor._sample_foreground_locations(seg, [1, 2], seed=i)}
        # nnU-Net's default format (blosc2); its numpy format memory-maps read-only arrays that augmentation
        # writes to in place
        nnUNetDatasetBlosc2.save_case(data, seg, properties, os.path.join(folder, case),
                                      chunks=(1, 4, 20, 20), blocks=(1, 4, 20, 20))
    for name, content in (("dataset.json", DATASET_JSON), ("nnUNetPlans.json", PLANS), ("splits_final.json", [SPLIT]),
                          ("dataset_fingerprint.json", {})):
        with open(os.path.join(base, name), "w") as f:
            json.dump(content, f)
    one_hot_table(DATASET_JSON).save(default_table_path(base))
    return base


def make_trainer(trainer_class, device="cpu"):
    """The trainer as nnUNetv2_train constructs it (plans with 'continue_training', fold 0, configuration 2d)."""
    import torch
    plans = copy.deepcopy(PLANS)
    plans["continue_training"] = False
    return trainer_class(plans, "2d", 0, copy.deepcopy(DATASET_JSON), torch.device(device))
