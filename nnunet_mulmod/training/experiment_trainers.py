"""The trainers of a ``nnunet_mulmod_experiment``, made from data: a JSON file of {trainer name: config}.

nnU-Net names a results folder after the trainer class, so a setting of an experiment that differs from a stock
trainer (budget, CT:MR ratio, its own text table) needs a class of its own (evaluation/experiment_settings.py
names it). The experiment writes its configs into ``<OUT>/experiment_trainers/experiment_trainers.json`` next to a
fixed two-line module (:data:`FOLDER_MODULE_SOURCE`); the experiment puts that folder on ``nnUNet_extTrainer``.
nnU-Net's trainer search imports the module and asks it for the name (``hasattr``); its module ``__getattr__``
(PEP 562) reads the JSON file and makes the class with :func:`nnunet_mulmod.training.schedules.with_schedule`.

A config: ``{"base": stock trainer, "num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch",
"skip_final_validation", "ratio", "ratio_modalities", "ratio_seed", "text_table"}`` (all but ``base``
optional). The text table is handed to the training through ``$nnUNet_mulmod_text_table``; it is in the config
because it changes the training (and so the name).

This module is imported inside nnU-Net's trainer search: it imports nothing heavy at module level.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Dict, Mapping, Tuple

TRAINERS_FILE = "experiment_trainers.json"
FOLDER_MODULE = "nnunet_mulmod_experiment_trainers.py"
FOLDER_MODULE_SOURCE = '''"""Trainers of one nnunet_mulmod_experiment: made from experiment_trainers.json in this folder
(nnunet_mulmod/training/experiment_trainers.py). nnUNetv2_predict needs this folder on nnUNet_extTrainer."""
from nnunet_mulmod.training.experiment_trainers import folder_module_getattr

__getattr__ = folder_module_getattr(__file__, __name__)
'''


def write_trainer_folder(folder: str, configs: Mapping[str, Mapping]) -> None:
    """Writes the trainer module and the configs into ``folder`` (each file only when it changes, atomically)."""
    os.makedirs(folder, exist_ok=True)
    files = {FOLDER_MODULE: FOLDER_MODULE_SOURCE, TRAINERS_FILE: json.dumps(configs, indent=2, sort_keys=True) + "\n"}
    for name, text in files.items():
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                if f.read() == text:
                    continue
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(path + ".tmp", path)


def _skip_final_validation(self, save_probabilities: bool = False):
    self.print_to_log_file("Final validation skipped (nnunet_mulmod_experiment --no_final_validation)")


def _ratio_do_split(self):
    experiment_class = next(c for c in type(self).__mro__ if "experiment_config" in vars(c))
    return ratio_split(self, *super(experiment_class, self).do_split())


def make_trainer(name: str, config: Mapping, module: str) -> type:
    """The class ``name`` of ``config``, found in ``module`` (the folder's module) by that name."""
    from nnunet_mulmod.training.schedules import schedulable_trainers, with_schedule

    bases = schedulable_trainers()
    if config["base"] not in bases:
        raise ValueError(f"Experiment trainer {name}: unknown base trainer {config['base']!r}.")
    namespace = {"experiment_config": json.dumps(dict(config), sort_keys=True)}
    if "ratio" in config:
        namespace["do_split"] = _ratio_do_split
    if config.get("skip_final_validation"):
        namespace["perform_actual_validation"] = _skip_final_validation
    return with_schedule(bases[config["base"]], config.get("num_epochs"), config.get("num_iterations_per_epoch"),
                         config.get("num_val_iterations_per_epoch"), name=name, module=module, namespace=namespace)


def folder_module_getattr(module_file: str, module_name: str) -> Callable[[str], type]:
    """The module ``__getattr__`` of an experiment's trainer folder: names in its JSON file are trainer classes."""
    trainers_file = os.path.join(os.path.dirname(os.path.abspath(module_file)), TRAINERS_FILE)

    def __getattr__(name: str) -> type:
        configs: Dict[str, dict] = {}
        if not name.startswith("__") and os.path.isfile(trainers_file):
            with open(trainers_file, encoding="utf-8") as f:
                configs = json.load(f)
        if name not in configs:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        return make_trainer(name, configs[name], module_name)

    return __getattr__


# ----------------------------------------------------------------------------------------------------------------------
# MulModSeg Table 5: the CT:MR ratio of the training cases
# ----------------------------------------------------------------------------------------------------------------------
def ratio_counts(n_major: int, n_minor: int, ratio: float) -> Tuple[int, int]:
    """How many majority (CT) and minority (MR) training cases make major:minor closest to ratio:1.

    All majority cases are kept and the minority is subsampled (the paper keeps its CT cases and drops MR ones);
    only when there are too few minority cases for the ratio is the majority subsampled instead. At least one case
    of each is kept.
    """
    if ratio <= 0:
        raise ValueError(f"CT:MR ratio must be > 0, got {ratio}")
    if n_minor * ratio >= n_major:
        return n_major, max(1, min(n_minor, int(round(n_major / ratio))))
    return max(1, min(n_major, int(round(n_minor * ratio)))), n_minor


def ratio_split(trainer, tr_keys, val_keys):
    """nnU-Net's split with the training cases subsampled to CT:MR = ratio:1 (seeded); validation unchanged.

    The user's splits_final.json is read as usual and never written: the subsampling happens in memory, per run.
    """
    import numpy as np
    from nnunet_mulmod.modality import require_case_modalities

    config = json.loads(trainer.experiment_config)
    major, minor = config["ratio_modalities"]
    modalities = require_case_modalities(trainer.dataset_json, list(tr_keys))
    major_keys = sorted(k for k in tr_keys if modalities[k] == major)
    minor_keys = sorted(k for k in tr_keys if modalities[k] == minor)
    others = [k for k in tr_keys if modalities[k] not in (major, minor)]
    if not major_keys or not minor_keys:
        raise RuntimeError(f"CT:MR ratio run: fold {trainer.fold} has {len(major_keys)} {major} and {len(minor_keys)} "
                           f"{minor} training cases; both must be > 0.")
    n_major, n_minor = ratio_counts(len(major_keys), len(minor_keys), float(config["ratio"]))
    rng = np.random.RandomState(int(config["ratio_seed"]) + int(trainer.fold if trainer.fold != "all" else 0))
    kept_major = sorted(rng.choice(major_keys, n_major, replace=False).tolist())
    kept_minor = sorted(rng.choice(minor_keys, n_minor, replace=False).tolist())
    trainer.print_to_log_file(f"{major}:{minor} = {config['ratio']:g}:1 -> training on {n_major} of "
                              f"{len(major_keys)} {major} and {n_minor} of {len(minor_keys)} {minor} cases "
                              f"(seed {config['ratio_seed']}); {len(val_keys)} validation cases unchanged")
    return kept_major + kept_minor + others, val_keys
