"""Parameter counts of trained models, on the network nnUNetv2_predict rebuilds."""
from __future__ import annotations

import contextlib
import io
import os
from typing import Dict


def count_parameters(folder: str, fold: str, checkpoint_name: str = "checkpoint_final.pth") -> Dict[str, int]:
    """Total and trainable parameters of a trained model, rebuilt as nnUNetv2_predict rebuilds it."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    checkpoint = torch.load(os.path.join(folder, f"fold_{fold}", checkpoint_name), map_location="cpu",
                            weights_only=False)
    plans_manager = PlansManager(load_json(os.path.join(folder, "plans.json")))
    dataset_json = load_json(os.path.join(folder, "dataset.json"))
    configuration_manager = plans_manager.get_configuration(checkpoint["init_args"]["configuration"])
    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net narrates its trainer search
        trainer_class = recursive_find_trainer_class_by_name(checkpoint["trainer_name"])
    network = trainer_class.build_network_architecture(
        plans_manager, configuration_manager,
        determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
    total = sum(p.numel() for p in network.parameters())
    trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
    return {"parameters": int(total), "trainable_parameters": int(trainable)}
