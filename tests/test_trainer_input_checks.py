"""MulModSeg/ALT trainers refuse bad input in __init__, before nnU-Net creates the results folder or the log,
with one line naming the file or case and the fix; tables are matched to the dataset by name, not position."""
import copy
import os

import pytest
import torch

from nnunet_mulmod.modality import ModalityError, set_modalities
from nnunet_mulmod.text.table import TextEmbeddingTable, TextTableError
from nnunet_mulmod.training.mulmodseg_trainer import (nnUNetTrainerALT, nnUNetTrainerMulModSeg,
                                                       nnUNetTrainerMulModSegOneHot)
from test_zeus_network import plans_2d

DATASET_NAME = "Dataset991_CheckToy"
CLASSES = ["background", "liver", "spleen"]


def dataset_json(case_modalities=None, vocabulary=("CT", "MR")):
    d = {"name": DATASET_NAME, "channel_names": {"0": "CT_or_MR"}, "numTraining": 4, "file_ending": ".nii.gz",
         "labels": {c: i for i, c in enumerate(CLASSES)}}
    return set_modalities(d, case_modalities or {"ct1": "CT", "ct2": "CT", "mr1": "MR", "mr2": "MR"},
                          vocabulary=list(vocabulary))


@pytest.fixture
def env(tmp_path, monkeypatch):
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, str(tmp_path / key))
    monkeypatch.delenv("nnUNet_mulmod_text_table", raising=False)
    pre = tmp_path / "nnUNet_preprocessed" / DATASET_NAME
    (pre / "nnUNetPlans_2d").mkdir(parents=True)
    for case in ("ct1", "ct2", "mr1", "mr2"):
        (pre / "nnUNetPlans_2d" / f"{case}.b2nd").touch()
    return pre, tmp_path / "nnUNet_results"


def make_trainer(cls, ds):
    plans = plans_2d()
    plans["dataset_name"] = DATASET_NAME
    plans["configurations"]["2d"]["batch_dice"] = True
    plans["continue_training"] = False
    return cls(plans, "2d", 0, copy.deepcopy(ds), device=torch.device("cpu"))


def save_table(path, modalities=("CT", "MR"), classes=CLASSES):
    emb = torch.arange(len(modalities) * len(classes) * 4, dtype=torch.float32).reshape(len(modalities), len(classes), 4)
    table = TextEmbeddingTable(emb, list(modalities), list(classes),
                               [[f"A {m} imaging of a {c}." for c in classes] for m in modalities], "V3",
                               "A {modality} imaging of a {cls}.", {"type": "test"})
    table.save(str(path))
    return table


def nothing_written(results):
    return not results.exists() or not any(results.rglob("*"))


def test_table_in_another_order_is_reordered_by_name(env):
    pre, results = env
    saved = save_table(pre / "mulmod_text_table.pt", modalities=("MR", "CT"), classes=["spleen", "background", "liver"])
    trainer = make_trainer(nnUNetTrainerMulModSeg, dataset_json())
    table = trainer.text_table
    assert table.modalities == ["CT", "MR"] and table.class_names == CLASSES
    # row CT = saved row 1 (CT), column liver = saved column 2
    assert torch.equal(table.embeddings[0, 1], saved.embeddings[1, 2])
    assert table.prompts[0][1] == "A CT imaging of a liver."
    assert trainer.plans_manager.plans["mulmodseg"]["modalities"] == ["CT", "MR"]


def test_table_of_another_dataset_is_refused_before_any_results_folder(env):
    pre, results = env
    save_table(pre / "mulmod_text_table.pt", modalities=("CT", "MR"), classes=["background", "liver", "kidney"])
    with pytest.raises(TextTableError) as e:
        make_trainer(nnUNetTrainerMulModSeg, dataset_json())
    message = str(e.value)
    assert str(pre / "mulmod_text_table.pt") in message and "\n" not in message
    assert "no classes ['spleen']" in message and "classes ['kidney'] that the dataset does not have" in message
    assert "nnunet_mulmod_build_text_table -d 991" in message  # the exact fix, with the dataset id
    assert nothing_written(results)


def test_missing_modality_in_table_is_named(env):
    pre, results = env
    save_table(pre / "mulmod_text_table.pt", modalities=("CT",))
    with pytest.raises(TextTableError, match=r"no modalities \['MR'\] \(the table has \['CT'\]\)"):
        make_trainer(nnUNetTrainerMulModSeg, dataset_json())
    assert nothing_written(results)


def test_corrupted_table_gives_one_clean_line(env):
    pre, results = env
    path = pre / "mulmod_text_table.pt"
    save_table(path)
    path.write_bytes(path.read_bytes()[:200])  # truncated
    with pytest.raises(TextTableError) as e:
        make_trainer(nnUNetTrainerMulModSeg, dataset_json())
    message = str(e.value)
    assert str(path) in message and "truncated, corrupted" in message and "-d 991" in message
    assert "weights_only" not in message and "\n" not in message
    assert e.value.__cause__ is None and e.value.__suppress_context__  # no chained traceback
    assert nothing_written(results)
    torch.save({"format": "something else"}, str(path))
    with pytest.raises(TextTableError, match="is not an nnunet-mulmod text table"):
        make_trainer(nnUNetTrainerMulModSeg, dataset_json())
    assert nothing_written(results)


def test_untagged_case_is_named_with_the_file_before_any_results_folder(env):
    pre, results = env
    ds = dataset_json({"ct1": "CT", "ct2": "CT", "mr1": "MR"})  # mr2 is preprocessed but has no tag
    save_table(pre / "mulmod_text_table.pt")
    for cls in (nnUNetTrainerALT, nnUNetTrainerMulModSeg):
        with pytest.raises(ModalityError) as e:
            make_trainer(cls, ds)
        message = str(e.value)
        assert message.startswith(str(pre / "dataset.json")) and "mr2" in message and "Add an entry per case" in message
        assert nothing_written(results)


def test_alt_on_a_single_modality_dataset_is_refused_before_any_results_folder(env):
    pre, results = env
    ds = dataset_json({"ct1": "CT", "ct2": "CT", "mr1": "CT", "mr2": "CT"})
    for cls in (nnUNetTrainerALT, nnUNetTrainerMulModSegOneHot):
        with pytest.raises(ModalityError, match=r"alternates between modalities \(ALT\), but every training case of "
                                                r"Dataset991_CheckToy fold 0 is CT .*Train a single-modality dataset "
                                                r"with nnUNetTrainer"):
            make_trainer(cls, ds)
        assert nothing_written(results)


def test_alt_reads_the_fold_from_splits_final(env):
    pre, results = env
    import json
    (pre / "splits_final.json").write_text(json.dumps([{"train": ["ct1", "ct2"], "val": ["mr1"]}]))
    with pytest.raises(ModalityError, match="every training case of Dataset991_CheckToy fold 0 is CT"):
        make_trainer(nnUNetTrainerALT, dataset_json())
    (pre / "splits_final.json").write_text(json.dumps([{"train": ["ct1", "mr2"], "val": ["mr1"]}]))
    trainer = make_trainer(nnUNetTrainerALT, dataset_json())  # both modalities: accepted, folder now made
    assert os.path.isdir(trainer.output_folder)


def test_alt_step_shares_equal_by_default_and_proportional_to_cases_in_the_prop_variant(env, monkeypatch):
    """The trainers hand their fold's case counts to the ALT loader: the paper's ALT alternates 1:1, the
    case-proportional variant gives CT 3 of every 4 steps when 3 of the 4 training cases are CT."""
    import itertools
    import json

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_mulmod.training.mulmodseg_trainer import nnUNetTrainerMulModSegPropALT

    pre, results = env
    case_modalities = {"ct1": "CT", "ct2": "CT", "ct3": "CT", "mr1": "MR", "mr2": "MR"}
    for case in case_modalities:
        (pre / "nnUNetPlans_2d" / f"{case}.b2nd").touch()
    (pre / "splits_final.json").write_text(json.dumps([{"train": ["ct1", "ct2", "ct3", "mr1"], "val": ["mr2"]}]))
    save_table(pre / "mulmod_text_table.pt")

    def fake_nnunet_loaders(self):  # nnU-Net's get_dataloaders, called once per modality with do_split restricted
        tr, val = self.do_split()
        cases = itertools.cycle(tr)
        return iter(lambda: {"keys": [next(cases)]}, None), None

    monkeypatch.setattr(nnUNetTrainer, "get_dataloaders", fake_nnunet_loaders)
    ds = dataset_json(case_modalities)
    shares = {}
    for cls in (nnUNetTrainerALT, nnUNetTrainerMulModSeg, nnUNetTrainerMulModSegPropALT):
        loader, _ = make_trainer(cls, ds).get_dataloaders()
        modalities = [next(loader)["modality"] for _ in range(8)]
        shares[cls.__name__] = modalities.count(0) / len(modalities)
    assert shares == {"nnUNetTrainerALT": 0.5, "nnUNetTrainerMulModSeg": 0.5, "nnUNetTrainerMulModSegPropALT": 0.75}


def test_single_modality_trainer_without_cases_of_its_modality_is_refused_before_any_results_folder(env):
    import json

    from nnunet_mulmod.training.mulmodseg_trainer import nnUNetTrainerCTOnly, nnUNetTrainerMROnly

    pre, results = env
    with pytest.raises(ModalityError, match=r"nnUNetTrainerMROnly trains on modality 'MR', which Dataset991_CheckToy "
                                            r"does not have .*dataset.json: modalities \['CT'\]"):
        make_trainer(nnUNetTrainerMROnly, dataset_json({c: "CT" for c in ("ct1", "ct2", "mr1", "mr2")}, ("CT",)))
    assert nothing_written(results)
    (pre / "splits_final.json").write_text(json.dumps([{"train": ["mr1", "mr2"], "val": ["ct1"]}]))
    with pytest.raises(ModalityError, match="nnUNetTrainerCTOnly: no training case of Dataset991_CheckToy fold 0 is CT"):
        make_trainer(nnUNetTrainerCTOnly, dataset_json())
    assert nothing_written(results)
    trainer = make_trainer(nnUNetTrainerMROnly, dataset_json())  # its modality is there: accepted
    assert os.path.isdir(trainer.output_folder)
