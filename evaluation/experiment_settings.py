"""The settings (rows) of the papers' comparisons, and the trainer classes an experiment generates for them.

A *setting* is one row of a paper table: which trainer trains it (with which text table, budget and CT:MR
ratio) and how its test cases are predicted (which modalities, correct or mistaken prompt). Settings that
train the same thing share one training run: the trainer class name is derived from everything that
changes the training, so the same name means the same run, in this experiment and in any other.

nnU-Net names a results folder ``<Trainer>__<Plans>__<configuration>``, so a setting that differs from a
stock trainer (budget, CT:MR ratio, its own text table) gets a trainer of its own: a name and a config
(:func:`trainer_configs`), which the experiment writes as data into its ``experiment_trainers/`` folder and
puts on ``nnUNet_extTrainer``; nnunet_mulmod/training/experiment_trainers.py makes the classes from it.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from nnunet_mulmod.training.experiment_trainers import ratio_split  # noqa: F401  (see configure_trainer)

# Trainers whose networks take a modality prompt: predicted with nnunet_mulmod_predict and an explicit modality.
PROMPTED_TRAINERS = ("nnUNetTrainerMulModSeg", "nnUNetTrainerMulModSegNoALT", "nnUNetTrainerMulModSegOneHot")
# Trainers that read the text table (the one-hot trainer builds its codes itself).
TEXT_TABLE_TRAINERS = ("nnUNetTrainerMulModSeg", "nnUNetTrainerMulModSegNoALT")
ZEUS_TRAINERS = ("nnUNetTrainerZeus", "nnUNetTrainerZeusHybrid")
TEMPLATES = ("V1", "V2", "V3")
# The majority and minority modality of Table 5's CT:MR ratios.
RATIO_MODALITIES = ("CT", "MR")


@dataclass(frozen=True)
class TextEncoder:
    """A text encoder given on the command line: display name and encoder spec (nnunet_mulmod.text.encoders)."""
    name: str
    spec: Tuple[Tuple[str, object], ...]  # sorted items: hashable, stable in JSON

    @property
    def spec_dict(self) -> dict:
        return dict(self.spec)


@dataclass(frozen=True)
class TextTableSpec:
    """A text table the experiment builds: prompt template x encoder."""
    template: str
    encoder: TextEncoder

    @property
    def file_name(self) -> str:
        return f"{self.template}_{self.encoder.name}.pt"


@dataclass
class Setting:
    """One row of a table."""
    id: str                                  # folder name under the experiment folder
    name: str                                # row name in the table (the paper's wording)
    base_trainer: str                        # stock trainer class the run is (or subclasses)
    text_table: Optional[TextTableSpec] = None   # None: the dataset's default table (text trainers only)
    ratio: Optional[float] = None            # Table 5: CT:MR = ratio:1 in the training cases
    predict_modalities: Optional[Tuple[str, ...]] = None  # None: every test case
    wrong_prompt: bool = False               # Table 7: each case prompted with the other modality
    trainer: str = ""                        # the class nnUNetv2_train runs (filled by assign_trainer_names)
    trainer_config: Dict = field(default_factory=dict)  # what the generated class carries (empty: stock trainer)

    @property
    def prompted(self) -> bool:
        return self.base_trainer in PROMPTED_TRAINERS


@dataclass
class Experiment:
    """A paper comparison: its settings and how the table is reported."""
    key: str
    title: str
    settings: List[Setting]
    metrics: Tuple[str, ...] = ("Dice",)


# ----------------------------------------------------------------------------------------------------------------------
# command-line encoder specs
# ----------------------------------------------------------------------------------------------------------------------
DEFAULT_CLIP = TextEncoder("CLIP", tuple(sorted({"type": "open_clip", "model": "ViT-B-32", "pretrained": "openai"}
                                                .items())))


def parse_text_model(text: str) -> TextEncoder:
    """``[NAME=]SPEC`` -> TextEncoder. SPEC: what nnunet_mulmod.text.encoders.parse_encoder_spec reads
    (``hf:<id or folder>``, ``open_clip:<model>[:<pretrained tag or file>]``, ``medclip:<folder>``, a JSON encoder
    spec, or a plain path: a folder is hf, a weights file OpenAI CLIP ViT-B/32)."""
    from nnunet_mulmod.text.encoders import parse_encoder_spec
    name = None
    if "=" in text and not text.lstrip().startswith("{"):
        name, text = text.split("=", 1)
    spec = parse_encoder_spec(text)
    if not name:
        source = str(spec.get("model", spec.get("path", spec.get("type"))))
        name = re.sub(r"[^A-Za-z0-9]+", "-", source.rstrip("/").split("/")[-1]).strip("-") or spec["type"]
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9\-]*", name):
        raise ValueError(f"Text encoder name {name!r} may only hold letters, digits and '-' (it becomes part of "
                         f"file and folder names); give one with NAME=SPEC.")
    return TextEncoder(name, tuple(sorted(spec.items())))


# ----------------------------------------------------------------------------------------------------------------------
# the tables
# ----------------------------------------------------------------------------------------------------------------------
def _main_text_table(encoders: Sequence[TextEncoder]) -> Optional[TextTableSpec]:
    """Tables 2/5/6/7: the first --text_model with the paper's V3 template, else the dataset's own table."""
    return TextTableSpec("V3", encoders[0]) if encoders else None


def mulmodseg_table2(encoders: Sequence[TextEncoder], **_) -> List[Setting]:
    table = _main_text_table(encoders)
    return [Setting("ct_ct", "CT->CT", "nnUNetTrainerCTOnly", predict_modalities=("CT",)),
            Setting("mr_mr", "MR->MR", "nnUNetTrainerMROnly", predict_modalities=("MR",)),
            Setting("alt_no_text", "ALT->CT/MR w/o text", "nnUNetTrainerALT"),
            Setting("alt_text", "ALT->CT/MR w/ text", "nnUNetTrainerMulModSeg", text_table=table)]


def mulmodseg_table1(encoders: Sequence[TextEncoder], **_) -> List[Setting]:
    encoders = list(encoders) or [DEFAULT_CLIP]
    first = encoders[0]
    settings = [Setting("vision_only", "Vision-only", "nnUNetTrainerALT"),
                Setting("one_hot", "One-hot", "nnUNetTrainerMulModSegOneHot")]
    for template in TEMPLATES:
        settings.append(Setting(f"{template.lower()}_{first.name}", f"{template}-{first.name}",
                                "nnUNetTrainerMulModSeg", text_table=TextTableSpec(template, first)))
    for encoder in encoders[1:]:
        settings.append(Setting(f"v3_{encoder.name}", f"V3-{encoder.name}", "nnUNetTrainerMulModSeg",
                                text_table=TextTableSpec("V3", encoder)))
    return settings


def _ratio_label(ratio: float) -> str:
    return f"{ratio:g}"


def mulmodseg_table5(encoders: Sequence[TextEncoder], ratios: Sequence[float] = (1, 2, 3), **_) -> List[Setting]:
    table = _main_text_table(encoders)
    settings = []
    for ratio in ratios:
        r = _ratio_label(ratio)
        settings.append(Setting(f"ratio_{r}to1_alt_no_text", f"CT:MR {r}:1, ALT w/o text", "nnUNetTrainerALT",
                                ratio=float(ratio)))
        settings.append(Setting(f"ratio_{r}to1_alt_text", f"CT:MR {r}:1, ALT w/ text", "nnUNetTrainerMulModSeg",
                                text_table=table, ratio=float(ratio)))
    return settings


def mulmodseg_table6(encoders: Sequence[TextEncoder], **_) -> List[Setting]:
    table = _main_text_table(encoders)
    return [Setting("vision_mixed", "Vision, w/o ALT", "nnUNetTrainer"),
            Setting("vision_alt", "Vision, ALT", "nnUNetTrainerALT"),
            Setting("text_mixed", "Vision+text, w/o ALT", "nnUNetTrainerMulModSegNoALT", text_table=table),
            Setting("text_alt", "Vision+text, ALT", "nnUNetTrainerMulModSeg", text_table=table)]


def mulmodseg_table7(encoders: Sequence[TextEncoder], **_) -> List[Setting]:
    table = _main_text_table(encoders)
    return [Setting("correct_prompt", "Correct prompt", "nnUNetTrainerMulModSeg", text_table=table),
            Setting("mistaken_prompt", "Mistaken prompt (CT<->MR)", "nnUNetTrainerMulModSeg", text_table=table,
                    wrong_prompt=True)]


def zeus_table2(**_) -> List[Setting]:
    return [Setting("early_fusion", "Early fusion (nnU-Net, stacked channels)", "nnUNetTrainer"),
            Setting("hybrid_fusion", "Zeus hybrid fusion", "nnUNetTrainerZeusHybrid"),
            Setting("late_fusion", "Zeus late fusion", "nnUNetTrainerZeus")]


EXPERIMENTS = {
    "mulmodseg_table1": ("MulModSeg Table 1: embedding methods and prompt templates", mulmodseg_table1, ("Dice",)),
    "mulmodseg_table2": ("MulModSeg Table 2: single-modality training vs ALT without / with text", mulmodseg_table2,
                         ("Dice",)),
    "mulmodseg_table3": ("MulModSeg Table 3: single-modality training vs ALT without / with text", mulmodseg_table2,
                         ("Dice",)),
    "mulmodseg_table5": ("MulModSeg Table 5: CT:MR ratios of the training cases", mulmodseg_table5, ("Dice",)),
    "mulmodseg_table6": ("MulModSeg Table 6: text x training mode", mulmodseg_table6, ("Dice",)),
    "mulmodseg_table7": ("MulModSeg Table 7: mistaken prompts at test time", mulmodseg_table7, ("Dice",)),
    "zeus_table2": ("Zeus Table 2: early / hybrid / late fusion", zeus_table2, ("Dice", "IoU")),
}


def make_experiment(key: str, encoders: Sequence[TextEncoder] = (), ratios: Sequence[float] = (1, 2, 3),
                    epochs: Optional[int] = None, iterations: Optional[int] = None,
                    val_iterations: Optional[int] = None, seed: int = 0,
                    only: Optional[Sequence[str]] = None, skip_final_validation: bool = False) -> Experiment:
    """The experiment ``key`` with trainer names assigned; ``only``: keep these setting ids (table order kept)."""
    if key not in EXPERIMENTS:
        raise ValueError(f"Unknown experiment {key!r}; one of {sorted(EXPERIMENTS)}.")
    title, build, metrics = EXPERIMENTS[key]
    settings = build(encoders=list(encoders), ratios=list(ratios))
    if only:
        known = [s.id for s in settings]
        unknown = [s for s in only if s not in known]
        if unknown:
            raise ValueError(f"{key} has no setting(s) {unknown}; its settings are {known}.")
        settings = [s for s in settings if s.id in only]
    assign_trainer_names(settings, epochs, iterations, val_iterations, seed, skip_final_validation)
    return Experiment(key, title, settings, metrics)


# ----------------------------------------------------------------------------------------------------------------------
# trainer names and generated classes
# ----------------------------------------------------------------------------------------------------------------------
def assign_trainer_names(settings: Sequence[Setting], epochs: Optional[int], iterations: Optional[int],
                         val_iterations: Optional[int], seed: int, skip_final_validation: bool = False) -> None:
    """Stock trainer name when nothing differs from it, else ``<Base>_<what differs>_<hash of the config>``.

    The hash covers everything that changes the training (base, budget, ratio and seed, text template and
    encoder), so equal names mean equal runs and a finished run is reused across tables and experiments.
    """
    if iterations is not None and val_iterations is None:
        val_iterations = min(50, iterations)  # nnU-Net's 50 validation iterations would dominate a short run
    for s in settings:
        config = {"base": s.base_trainer}
        if epochs is not None:
            config["num_epochs"] = int(epochs)
        if iterations is not None:
            config["num_iterations_per_epoch"] = int(iterations)
        if val_iterations is not None:
            config["num_val_iterations_per_epoch"] = int(val_iterations)
        if skip_final_validation:
            config["skip_final_validation"] = True
        if s.ratio is not None:
            config.update(ratio=s.ratio, ratio_modalities=list(RATIO_MODALITIES), ratio_seed=int(seed))
        if s.text_table is not None and s.base_trainer in TEXT_TABLE_TRAINERS:
            config["text_table"] = {"template": s.text_table.template, "encoder": s.text_table.encoder.spec_dict}
        if len(config) == 1:
            s.trainer, s.trainer_config = s.base_trainer, {}
            continue
        parts = [s.base_trainer]
        if s.text_table is not None and "text_table" in config:
            parts.append(f"{s.text_table.template}{re.sub(r'[^A-Za-z0-9]', '', s.text_table.encoder.name)}")
        if s.ratio is not None:
            parts.append(f"ratio{_ratio_label(s.ratio).replace('.', 'p')}to1")
        if epochs is not None:
            parts.append(f"{epochs}epochs")
        if iterations is not None:
            parts.append(f"{iterations}it")
        digest = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:6]
        s.trainer, s.trainer_config = "_".join(parts + [digest]), config


def trainer_configs(settings: Sequence[Setting]) -> Dict[str, dict]:
    """{trainer name: config} of the settings that need a trainer of their own (the experiment writes it to JSON:
    nnunet_mulmod/training/experiment_trainers.py makes the classes from it)."""
    return {s.trainer: s.trainer_config for s in settings if s.trainer_config}


# Trainer modules that experiments wrote as Python source (before their trainers were made from data) import these.
def configure_trainer(trainer) -> None:
    """Sets the budget an old generated trainer carries (called at the end of its __init__)."""
    config = json.loads(trainer.experiment_config)
    for key in ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch"):
        if key in config:
            setattr(trainer, key, int(config[key]))
