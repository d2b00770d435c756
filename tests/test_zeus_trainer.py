"""Zeus trainers in-process: table -> plans spec -> network buffer, and their errors for bad input."""
import copy
import os

import pytest
import torch

from nnunet_mulmod.modality import ModalityError
from nnunet_mulmod.zeus import instruction_table as zt
from nnunet_mulmod.zeus.trainer import nnUNetTrainerZeus, nnUNetTrainerZeusHybrid
from test_zeus_helpers import TOY_DATASET_JSON
from test_zeus_network import plans_2d

CLASSES = ["background", "gland", "lesion"]


def write_table(folder, modalities=("T2", "ADC"), classes=CLASSES, dim=8):
    torch.manual_seed(0)
    table = {"format": "nnunet_mulmod.text_table/1", "embeddings": torch.randn(len(modalities), len(classes), dim),
             "modalities": list(modalities), "class_names": list(classes),
             "prompts": [[f"{m} {c}" for c in classes] for m in modalities], "template": zt.TEMPLATE_NAME,
             "template_text": "", "encoder": {"type": "test"}}
    zt.save_table(table, os.path.join(folder, zt.DEFAULT_TABLE_FILENAME))
    return table


@pytest.fixture
def nnunet_env(tmp_path, monkeypatch):
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, str(tmp_path / key))
    monkeypatch.delenv(zt.TABLE_PATH_ENV, raising=False)
    monkeypatch.delenv("nnUNet_zeus_sam_checkpoint", raising=False)
    folder = tmp_path / "nnUNet_preprocessed" / TOY_DATASET_JSON["name"]
    (folder / "nnUNetPlans_2d").mkdir(parents=True)
    (folder / "nnUNetPlans_2d" / "case.b2nd").touch()  # initialize() infers the dataset class from file endings
    return str(folder)


def make_trainer(cls, dataset_json=TOY_DATASET_JSON):
    plans = plans_2d()
    plans["dataset_name"] = TOY_DATASET_JSON["name"]
    plans["configurations"]["2d"]["batch_dice"] = True
    plans["continue_training"] = False
    return cls(plans, "2d", 0, copy.deepcopy(dataset_json), device=torch.device("cpu"))


@pytest.mark.parametrize("cls,fusion", [(nnUNetTrainerZeus, "late"), (nnUNetTrainerZeusHybrid, "hybrid")])
def test_initialize_puts_table_into_network_and_spec_into_plans(nnunet_env, cls, fusion):
    table = write_table(nnunet_env, modalities=("ADC", "DWI", "T2"))  # extra modality, other order: rows selected
    trainer = make_trainer(cls)
    trainer.initialize()
    spec = trainer.plans_manager.plans["zeus"]
    assert spec["fusion"] == fusion and spec["modalities"] == ["T2", "ADC"] and spec["text_dim"] == 8
    assert torch.equal(trainer.network.instruction_embeddings, table["embeddings"][[2, 0]])
    assert trainer.enable_deep_supervision is False
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    x = torch.randn(2, 2, 32, 32)
    assert trainer.network(x).shape == (2, 3, 32, 32)
    target = torch.randint(0, 3, (2, 1, 32, 32))
    assert torch.isfinite(trainer.loss(trainer.network(x), target))  # nnU-Net's Dice + CE on our logits


def test_table_missing_a_pair_names_it(nnunet_env):
    write_table(nnunet_env, classes=["background", "gland"])
    with pytest.raises(zt.ZeusTableError, match=r"\(T2, lesion\), \(ADC, lesion\).*nnunet_mulmod_zeus_embed"):
        make_trainer(nnUNetTrainerZeus).initialize()


def test_missing_table_file_says_how_to_make_it(nnunet_env):
    with pytest.raises(zt.ZeusTableError, match="nnunet_mulmod_zeus_instructions.*nnunet_mulmod_zeus_embed"):
        make_trainer(nnUNetTrainerZeus).initialize()


def test_dataset_without_channel_modalities_is_rejected(nnunet_env):
    write_table(nnunet_env)
    dataset_json = copy.deepcopy(TOY_DATASET_JSON)
    del dataset_json["channel_modalities"]
    with pytest.raises(ModalityError, match="channel_modalities"):
        make_trainer(nnUNetTrainerZeus, dataset_json).initialize()
