"""``nnunet_mulmod_experiment``: the MulModSeg and Zeus papers' comparisons, one resumable command each.

    nnunet_mulmod_experiment mulmodseg_table2 -d 501 -c 3d_fullres -f 0 1 2 3 4
    nnunet_mulmod_experiment mulmodseg_table1 -d 501 -c 3d_fullres -f 0 --text_model CLIP=/models/clip.bin \\
        BioBERT=hf:/models/biobert-v1.1 --epochs 100
    nnunet_mulmod_experiment zeus_table2 -d 505 -c 2d -f 0 --dry_run

For every setting (row) of the table: train with ``nnUNetv2_train`` (reused when checkpoint_final.pth exists,
continued with ``--c`` when only checkpoint_latest.pth does), predict the test cases (``nnUNetv2_predict``, or
``nnunet_mulmod_predict`` with each case's modality for prompted models), evaluate into
``<OUT>/<setting>/fold_<k>/summary.json`` and write the table with ``nnunet_mulmod.evaluation.report.write_report``.

``<OUT>/experiment_state.json`` records the finished steps; a re-run skips them and redoes a step that was
interrupted (its outputs are removed first). Logs of every subprocess are in ``<OUT>/logs``.
See docs/evaluation.md, section "Experiments".
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from typing import Dict, List, Optional, Sequence

from .experiment_paths import dataset_name, env_folder, model_folder, test_case_ids, test_modalities
from .experiment_settings import (EXPERIMENTS, TEXT_TABLE_TRAINERS, ZEUS_TRAINERS, Experiment, Setting,
                                  TextTableSpec, make_experiment, parse_text_model, trainer_configs)
from .experiment_state import ExperimentError, ExperimentState
from .parameter_count import count_parameters
from nnunet_mulmod.command_runner import CommandFailed, format_command, print_epoch_lines, run_logged

TRAINER_FOLDER = "experiment_trainers"
TEXT_TABLE_FOLDER = "text_tables"
TEST_INPUT_FOLDER = "test_inputs"
LOG_FOLDER = "logs"
PARAMETERS_FILE = "parameters.csv"


# ----------------------------------------------------------------------------------------------------------------------
# the experiment
# ----------------------------------------------------------------------------------------------------------------------
def run_command(command: Sequence[str], env_changes: Dict[str, str], log_file: str, on_line=None) -> None:
    """One step of the experiment, its output appended to ``log_file`` (nnunet_mulmod.command_runner)."""
    try:
        run_logged(command, log_file, env_changes, on_line=on_line)
    except CommandFailed as e:
        raise ExperimentError(str(e)) from None


class ExperimentRunner:
    def __init__(self, experiment: Experiment, dataset: str, configuration: str, folds: Sequence[str],
                 output_folder: Optional[str] = None, plans: str = "nnUNetPlans", device: str = "cuda",
                 test_folder: Optional[str] = None, test_labels: Optional[str] = None,
                 test_modality_map: Optional[str] = None, instruction_table: Optional[str] = None,
                 npp: int = 3, nps: int = 3, num_processes_eval: int = 3, disable_tta: bool = False,
                 metrics: Optional[Sequence[str]] = None, qualitative: bool = True, dry_run: bool = False):
        self.experiment = experiment
        self.dataset = dataset_name(dataset)
        self.configuration, self.plans, self.device = configuration, plans, device
        self.folds = [str(f) for f in folds]
        self.dry_run = dry_run
        self.npp, self.nps, self.np_eval, self.disable_tta = npp, nps, num_processes_eval, disable_tta
        self.metrics = tuple(metrics or experiment.metrics)
        self.qualitative = qualitative
        self.instruction_table = os.path.abspath(instruction_table) if instruction_table else None
        raw = os.path.join(env_folder("nnUNet_raw"), self.dataset)
        self.preprocessed = os.path.join(env_folder("nnUNet_preprocessed"), self.dataset)
        self.dataset_json_file = next((p for p in (os.path.join(raw, "dataset.json"),
                                                   os.path.join(self.preprocessed, "dataset.json"))
                                       if os.path.isfile(p)), None)
        if self.dataset_json_file is None:
            raise ExperimentError(f"No dataset.json for {self.dataset} in $nnUNet_raw or $nnUNet_preprocessed.")
        with open(self.dataset_json_file) as f:
            self.dataset_json = json.load(f)
        self.output = os.path.abspath(output_folder or os.path.join(
            env_folder("nnUNet_results"), self.dataset, "experiments", f"{experiment.key}__{plans}__{configuration}"))
        self.test_images = os.path.abspath(test_folder or os.path.join(raw, "imagesTs"))
        self.test_labels = os.path.abspath(test_labels or os.path.join(os.path.dirname(self.test_images), "labelsTs"))
        file_ending = self.dataset_json["file_ending"]
        self.test_cases = test_case_ids(self.test_images, file_ending)
        needs_modalities = any(s.prompted or s.predict_modalities for s in experiment.settings)
        self.case_modalities = test_modalities(self.dataset_json, self.test_cases, test_modality_map,
                                               required=needs_modalities)
        # evaluation and the report group cases by modality from dataset.json: give them the test cases' tags
        self.eval_dataset_json = json.loads(json.dumps(self.dataset_json))
        self.eval_dataset_json.setdefault("case_modalities", {}).update(self.case_modalities)
        if not os.path.isdir(self.test_labels):
            raise ExperimentError(f"Reference folder {self.test_labels} does not exist; give it with --test_labels.")
        self.trainer_folder = os.path.join(self.output, TRAINER_FOLDER)
        self.state = ExperimentState(self.output, {"experiment": experiment.key, "dataset": self.dataset,
                                                   "configuration": configuration, "plans": plans})
        self.n_steps, self.step_index = 0, 0

    # ------------------------------------------------------------------ checks
    def check_inputs(self) -> List[str]:
        """Problems that would make a step fail later; in a dry run they are printed as warnings."""
        problems = []
        plans_file = os.path.join(self.preprocessed, f"{self.plans}.json")
        if not os.path.isfile(plans_file):
            problems.append(f"{plans_file} does not exist: run nnUNetv2_plan_and_preprocess -d {self.dataset} "
                            f"-c {self.configuration} first.")
        else:
            with open(plans_file) as f:
                configurations = json.load(f)["configurations"]
            if self.configuration not in configurations:
                problems.append(f"{plans_file} has no configuration {self.configuration} "
                                f"({sorted(configurations)}).")
        modalities = set(self.case_modalities.values())
        for s in self.experiment.settings:
            for m in s.predict_modalities or ():
                if m not in modalities:
                    problems.append(f"Setting {s.id} is evaluated on {m} test cases, but the test set has none "
                                    f"(its modalities: {sorted(modalities)}).")
            if s.base_trainer in TEXT_TABLE_TRAINERS and s.text_table is None:
                from nnunet_mulmod.text.table import default_table_path
                table = default_table_path(self.preprocessed)
                if not os.path.isfile(table):
                    problems.append(f"Setting {s.id} uses the dataset's text table {table}, which does not exist: "
                                    f"build it (nnunet_mulmod_build_text_table -d {self.dataset} ...) or pass "
                                    f"--text_model to let the experiment build one.")
            if s.base_trainer in ZEUS_TRAINERS and self.instruction_table is None:
                from nnunet_mulmod.zeus.instruction_table import default_table_path as zeus_table_path
                table = zeus_table_path(self.preprocessed)
                if not os.path.isfile(table):
                    problems.append(f"Setting {s.id} needs the Zeus instruction table {table}: build it with "
                                    f"nnunet_mulmod_zeus_instructions / nnunet_mulmod_zeus_embed -d {self.dataset}, "
                                    f"or pass --instruction_table.")
        return problems

    # ------------------------------------------------------------------ helpers
    def text_table_path(self, spec: TextTableSpec) -> str:
        return os.path.join(self.output, TEXT_TABLE_FOLDER, spec.file_name)

    def train_env(self, s: Setting) -> Dict[str, str]:
        env = {}
        if s.trainer_config:
            current = os.environ.get("nnUNet_extTrainer", "")
            env["nnUNet_extTrainer"] = os.pathsep.join(p for p in (self.trainer_folder, current) if p)
        if s.text_table is not None and s.base_trainer in TEXT_TABLE_TRAINERS:
            env["nnUNet_mulmod_text_table"] = self.text_table_path(s.text_table)
        if s.base_trainer in ZEUS_TRAINERS and self.instruction_table:
            env["nnUNet_zeus_instruction_table"] = self.instruction_table
        return env

    def predict_env(self, s: Setting) -> Dict[str, str]:
        return {k: v for k, v in self.train_env(s).items() if k == "nnUNet_extTrainer"}

    def model_folder(self, s: Setting) -> str:
        return model_folder(self.dataset, s.trainer, self.plans, self.configuration)

    def fold_folder(self, s: Setting, fold: str) -> str:
        return os.path.join(self.output, s.id, f"fold_{fold}")

    def input_folder(self, s: Setting) -> str:
        if not s.predict_modalities:
            return self.test_images
        return os.path.join(self.output, TEST_INPUT_FOLDER, "_".join(s.predict_modalities))

    def cases_of(self, s: Setting) -> List[str]:
        if not s.predict_modalities:
            return list(self.test_cases)
        return [c for c in self.test_cases if self.case_modalities[c] in s.predict_modalities]

    def train_command(self, s: Setting, fold: str, resume: bool) -> List[str]:
        command = ["nnUNetv2_train", self.dataset, self.configuration, fold, "-tr", s.trainer, "-p", self.plans,
                   "-device", self.device]
        return command + (["--c"] if resume else [])

    def predict_command(self, s: Setting, fold: str, output: str) -> List[str]:
        common = ["-i", self.input_folder(s), "-o", output, "-f", fold, "-device", self.device,
                  "-npp", str(self.npp), "-nps", str(self.nps)] + (["--disable_tta"] if self.disable_tta else [])
        if s.prompted:
            command = ["nnunet_mulmod_predict", "-m", self.model_folder(s)] + common + [
                "--modality_map", os.path.join(self.output, TEST_INPUT_FOLDER, "modality_map.json")]
            return command + (["--wrong_prompt"] if s.wrong_prompt else [])
        return ["nnUNetv2_predict", "-d", self.dataset, "-c", self.configuration, "-p", self.plans,
                "-tr", s.trainer] + common

    def progress(self, text: str) -> None:
        self.step_index += 1
        print(f"[{self.step_index}/{self.n_steps}] {text}", flush=True)

    # ------------------------------------------------------------------ steps
    def prepare(self) -> None:
        """Trainer module, test inputs and modality map (cheap; rewritten only when they change)."""
        os.makedirs(self.output, exist_ok=True)
        configs = trainer_configs(self.experiment.settings)
        if configs:
            from nnunet_mulmod.training.experiment_trainers import write_trainer_folder
            write_trainer_folder(self.trainer_folder, configs)
        inputs = os.path.join(self.output, TEST_INPUT_FOLDER)
        os.makedirs(inputs, exist_ok=True)
        with open(os.path.join(inputs, "modality_map.json"), "w") as f:
            json.dump(self.case_modalities, f, indent=2)
        file_ending = self.dataset_json["file_ending"]
        for s in self.experiment.settings:
            if not s.predict_modalities:
                continue
            folder = self.input_folder(s)
            os.makedirs(folder, exist_ok=True)
            wanted = set()
            for case in self.cases_of(s):
                for name in os.listdir(self.test_images):
                    if name.startswith(case + "_") and name.endswith(file_ending) and \
                            len(name) == len(case) + 5 + len(file_ending):
                        wanted.add(name)
                        link = os.path.join(folder, name)
                        if not os.path.lexists(link):
                            try:  # links keep the experiment small; copies where links are not allowed
                                os.symlink(os.path.join(self.test_images, name), link)
                            except OSError:
                                shutil.copy(os.path.join(self.test_images, name), link)
            for name in os.listdir(folder):
                if name not in wanted:
                    os.remove(os.path.join(folder, name))

    def build_text_tables(self) -> None:
        specs = []
        for s in self.experiment.settings:
            if s.text_table is not None and s.base_trainer in TEXT_TABLE_TRAINERS and s.text_table not in specs:
                specs.append(s.text_table)
        for spec in specs:
            path = self.text_table_path(spec)
            key = f"text_table/{spec.file_name}"
            if self.dry_run:
                plan = "done" if os.path.isfile(path) else f"build_text_table({spec.encoder.spec_dict!r})"
                self.progress(f"text table {spec.template} x {spec.encoder.name} -> {path}: {plan}")
                continue
            if self.state.is_done(key) and os.path.isfile(path):
                self.progress(f"text table {spec.file_name}: done, skipped")
                continue
            self.progress(f"text table {spec.template} x {spec.encoder.name} -> {path}")
            from nnunet_mulmod.text.cli import build_text_table
            from nnunet_mulmod.text.encoders import TextEncoderError
            from nnunet_mulmod.text.prompts import PromptError
            from nnunet_mulmod.text.table import TextTableError
            self.state.mark(key, "started")
            try:
                table = build_text_table(self.dataset_json, spec.encoder.spec_dict, spec.template)
            except (TextEncoderError, PromptError, TextTableError) as e:
                raise ExperimentError(f"Text table {spec.template} x {spec.encoder.name}: {e}") from e
            table.save(path)  # atomic
            self.state.mark(key, "done", path=path)

    def train(self, s: Setting, fold: str) -> None:
        folder = os.path.join(self.model_folder(s), f"fold_{fold}")
        key = f"train/{s.trainer}/fold_{fold}"
        final, latest = (os.path.join(folder, f"checkpoint_{n}.pth") for n in ("final", "latest"))
        if os.path.isfile(final):
            self.progress(f"train {s.trainer} fold {fold}: finished run found, reused ({final})")
            if not self.dry_run and not self.state.is_done(key):
                self.state.mark(key, "done", checkpoint=final, reused=True)
            return
        resume = os.path.isfile(latest)
        command = self.train_command(s, fold, resume)
        log = os.path.join(self.output, LOG_FOLDER, f"train_{s.trainer}_fold_{fold}.log")
        what = "continue interrupted run (--c)" if resume else "train"
        self.progress(f"{what} {s.trainer} fold {fold} (setting {s.id}): {format_command(command, self.train_env(s))}")
        if self.dry_run:
            return
        print(f"      log: {log}", flush=True)
        self.state.mark(key, "started")
        start = time.time()
        run_command(command, self.train_env(s), log, on_line=print_epoch_lines)
        if not os.path.isfile(final):
            raise ExperimentError(f"nnUNetv2_train finished without writing {final}; see {log}.")
        self.state.mark(key, "done", checkpoint=final, seconds=round(time.time() - start, 1))

    def _checkpoint_stamp(self, s: Setting, fold: str) -> Optional[float]:
        final = os.path.join(self.model_folder(s), f"fold_{fold}", "checkpoint_final.pth")
        return os.path.getmtime(final) if os.path.isfile(final) else None

    def predict(self, s: Setting, fold: str) -> bool:
        """Returns whether predictions were (re)made."""
        output = os.path.join(self.fold_folder(s, fold), "predictions")
        key = f"predict/{s.id}/fold_{fold}"
        expected = [c + self.dataset_json["file_ending"] for c in self.cases_of(s)]
        record = self.state.step(key)
        complete = os.path.isdir(output) and all(os.path.isfile(os.path.join(output, e)) for e in expected)
        if record.get("status") == "done" and complete and \
                record.get("checkpoint_mtime") == self._checkpoint_stamp(s, fold):
            self.progress(f"predict {s.id} fold {fold}: done, skipped")
            return False
        command = self.predict_command(s, fold, output)
        self.progress(f"predict {s.id} fold {fold} ({len(expected)} cases): "
                      f"{format_command(command, self.predict_env(s))}")
        if self.dry_run:
            return True
        if os.path.isdir(output):  # interrupted, or the model changed: start over
            shutil.rmtree(output)
        self.state.mark(key, "started")
        log = os.path.join(self.output, LOG_FOLDER, f"predict_{s.id}_fold_{fold}.log")
        run_command(command, self.predict_env(s), log)
        missing = [e for e in expected if not os.path.isfile(os.path.join(output, e))]
        if missing:
            raise ExperimentError(f"Prediction of {s.id} fold {fold} left out {missing[:10]}; see the log.")
        self.state.mark(key, "done", checkpoint_mtime=self._checkpoint_stamp(s, fold))
        return True

    def evaluate(self, s: Setting, fold: str, redo: bool) -> None:
        summary = os.path.join(self.fold_folder(s, fold), "summary.json")
        key = f"evaluate/{s.id}/fold_{fold}"
        if not redo and self.state.is_done(key) and os.path.isfile(summary):
            self.progress(f"evaluate {s.id} fold {fold}: done, skipped")
            return
        self.progress(f"evaluate {s.id} fold {fold} -> {summary}")
        if self.dry_run:
            return
        from .evaluate_folder import EvaluationError, evaluate_folder
        self.state.mark(key, "started")
        if os.path.isfile(summary):
            os.remove(summary)
        surface = any(m in ("HD95", "ASSD") for m in self.metrics)
        try:
            evaluate_folder(self.test_labels, os.path.join(self.fold_folder(s, fold), "predictions"),
                            self.eval_dataset_json, output_file=summary, num_processes=self.np_eval,
                            surface_metrics=surface, missing="skip" if s.predict_modalities else "error",
                            progress=False)
        except EvaluationError as e:
            raise ExperimentError(f"Evaluating {s.id} fold {fold}: {e}") from e
        self.state.mark(key, "done", summary=summary)

    def parameters(self) -> List[dict]:
        """Parameter counts per setting (from its first fold's final checkpoint), cached in the state."""
        rows = []
        for s in self.experiment.settings:
            key = f"parameters/{s.trainer}"
            record = self.state.step(key)
            stamp = self._checkpoint_stamp(s, self.folds[0])
            if record.get("checkpoint_mtime") != stamp or "parameters" not in record:
                saved = os.environ.get("nnUNet_extTrainer")
                os.environ.update(self.predict_env(s))  # generated trainers are found like nnUNetv2_predict finds them
                try:
                    counts = count_parameters(self.model_folder(s), self.folds[0])
                finally:
                    if saved is None:
                        os.environ.pop("nnUNet_extTrainer", None)
                    else:
                        os.environ["nnUNet_extTrainer"] = saved
                self.state.mark(key, "done", checkpoint_mtime=stamp, **counts)
                record = self.state.step(key)
            rows.append({"setting": s.id, "name": s.name, "trainer": s.trainer,
                         "parameters": record["parameters"], "trainable_parameters": record["trainable_parameters"]})
        return rows

    def report(self) -> Dict[str, str]:
        from .report import write_report
        from .tables import REPORT_SETTINGS_FILE
        self.progress(f"report -> {os.path.join(self.output, 'report')}")
        if self.dry_run:
            return {}
        with open(os.path.join(self.output, REPORT_SETTINGS_FILE), "w") as f:
            json.dump({"title": f"{self.experiment.title} ({self.dataset}, {self.configuration})",
                       "settings": [{"name": s.name, "path": s.id} for s in self.experiment.settings]}, f, indent=2)
        from .evaluate_folder import EvaluationError
        report_folder = os.path.join(self.output, "report")
        try:
            paths = write_report(self.output, report_folder, metrics=self.metrics, dataset_json=self.eval_dataset_json,
                                 image_folder=self.test_images if self.qualitative else None)
        except EvaluationError as e:
            raise ExperimentError(f"Report of {self.output}: {e}") from e
        rows = self.parameters()
        csv_path = os.path.join(report_folder, PARAMETERS_FILE)
        with open(csv_path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, ["setting", "name", "trainer", "parameters", "trainable_parameters"])
            writer.writeheader()
            writer.writerows(rows)
        table = ["## Parameters", "", "Counted on the network nnUNetv2_predict rebuilds from each run's plans.json "
                 "(frozen text/instruction embeddings are buffers, not parameters).", "",
                 "| setting | trainer | parameters | trainable |", "|---|---|---:|---:|"]
        table += [f"| {r['name']} | {r['trainer']} | {r['parameters'] / 1e6:.2f}M | "
                  f"{r['trainable_parameters'] / 1e6:.2f}M |" for r in rows]
        with open(paths["markdown"], "a") as f:
            f.write("\n" + "\n".join(table) + "\n")
        paths["parameters"] = csv_path
        self.state.mark("report", "done", folder=report_folder)
        return paths

    # ------------------------------------------------------------------ all of it
    def run(self) -> Dict[str, str]:
        problems = self.check_inputs()
        if problems and not self.dry_run:
            raise ExperimentError("\n".join(problems))
        trainings = list(dict.fromkeys((s.trainer, f) for s in self.experiment.settings for f in self.folds))
        n_tables = len({s.text_table for s in self.experiment.settings
                        if s.text_table is not None and s.base_trainer in TEXT_TABLE_TRAINERS})
        self.n_steps = n_tables + len(trainings) + 2 * len(self.experiment.settings) * len(self.folds) + 1
        print(f"{self.experiment.title}: {self.dataset}, {self.configuration}, folds {' '.join(self.folds)}, "
              f"{len(self.experiment.settings)} settings, {len(trainings)} training runs -> {self.output}"
              + (" (dry run: nothing is run)" if self.dry_run else ""), flush=True)
        for problem in problems:
            print(f"WARNING: {problem}", flush=True)
        if not self.dry_run:
            self.prepare()
        self.build_text_tables()
        by_trainer = {s.trainer: s for s in self.experiment.settings}
        for trainer, fold in trainings:
            self.train(by_trainer[trainer], fold)
        for s in self.experiment.settings:
            for fold in self.folds:
                redo = self.predict(s, fold)
                self.evaluate(s, fold, redo)
        return self.report()


# ----------------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    settings_help = "; ".join(
        f"{key}: " + ", ".join(s.id for s in make_experiment(key, ratios=(1, 2, 3)).settings)
        for key in EXPERIMENTS)
    p = argparse.ArgumentParser(prog="nnunet_mulmod_experiment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=sorted(EXPERIMENTS), help="the paper comparison to run")
    p.add_argument("-d", required=True, help="dataset name or id (preprocessed for -c with -p)")
    p.add_argument("-c", default="3d_fullres", help="configuration (Zeus: 2d)")
    p.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"], help="folds (default 0 1 2 3 4)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier")
    p.add_argument("-o", default=None, help="experiment folder (default $nnUNet_results/<Dataset>/experiments/"
                                            "<experiment>__<plans>__<configuration>)")
    p.add_argument("--settings", nargs="+", default=None, help="run only these settings (rows): " + settings_help)
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default nnU-Net's 1000)")
    p.add_argument("--iterations", type=int, default=None, help="training iterations per epoch (default 250)")
    p.add_argument("--val_iterations", type=int, default=None,
                   help="validation iterations per epoch (default 50; min(50, --iterations) with --iterations)")
    p.add_argument("--no_final_validation", action="store_true",
                   help="skip nnU-Net's validation of the validation cases after training (the experiment evaluates "
                        "on the test cases anyway): saves time in quick runs")
    p.add_argument("--text_model", nargs="+", default=None, metavar="[NAME=]SPEC",
                   help="text encoders: hf:<id or folder>, open_clip:<model>:<pretrained tag or file>, a JSON spec, a "
                        "folder (hf) or a CLIP weights file. Table 1: V1/V2/V3 with the first, V3 with the others "
                        "(default CLIP ViT-B/32 OpenAI weights from the local open_clip cache). Other tables: V3 with "
                        "the first; without it the dataset's own table ($nnUNet_preprocessed/<Dataset>/"
                        "mulmod_text_table.pt) is used")
    p.add_argument("--ratios", nargs="+", type=float, default=[1, 2, 3], help="Table 5: CT:MR ratios (r means r:1)")
    p.add_argument("--seed", type=int, default=0, help="Table 5: seed of the MR (or CT) case subsampling")
    p.add_argument("--instruction_table", default=None, help="Zeus: instruction table file (default the dataset's)")
    p.add_argument("--test_folder", default=None, help="test images (default $nnUNet_raw/<Dataset>/imagesTs)")
    p.add_argument("--test_labels", default=None, help="test references (default labelsTs next to the test folder)")
    p.add_argument("--test_modality_map", default=None,
                   help="JSON {case_id: modality} for test cases that dataset.json's case_modalities does not list")
    p.add_argument("-m", "--metrics", nargs="+", default=None,
                   help="metrics of the tables (Dice IoU HD95 ASSD RVD); default Dice (Zeus: Dice IoU)")
    p.add_argument("-device", default=None, choices=["cuda", "cpu", "mps"],
                   help="device for training and prediction (default cuda if available)")
    p.add_argument("-npp", type=int, default=3, help="prediction: preprocessing processes")
    p.add_argument("-nps", type=int, default=3, help="prediction: export processes")
    p.add_argument("-np", type=int, default=3, help="evaluation processes")
    p.add_argument("--disable_tta", action="store_true", help="prediction without mirroring")
    p.add_argument("--no_qualitative", action="store_true", help="skip the qualitative figure")
    p.add_argument("--dry_run", action="store_true", help="print the planned steps and commands; run nothing")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        try:
            encoders = [parse_text_model(t) for t in args.text_model or []]
            experiment = make_experiment(args.experiment, encoders, args.ratios, args.epochs, args.iterations,
                                         args.val_iterations, args.seed, args.settings, args.no_final_validation)
        except (ValueError, json.JSONDecodeError) as e:
            raise ExperimentError(str(e)) from e
        device = args.device
        if device is None:
            import torch
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif not args.dry_run:  # a dry run only prints the commands, e.g. for another machine
            from nnunet_mulmod.devices import DeviceError, compile_fallback, resolve_device
            try:
                note = compile_fallback(resolve_device(device))
            except DeviceError as e:
                raise ExperimentError(str(e)) from e
            if note:
                print(note, file=sys.stderr)
        runner = ExperimentRunner(experiment, args.d, args.c, args.f, args.o, args.p, device, args.test_folder,
                                  args.test_labels, args.test_modality_map, args.instruction_table, args.npp,
                                  args.nps, args.np, args.disable_tta, args.metrics, not args.no_qualitative,
                                  args.dry_run)
        paths = runner.run()
    except ExperimentError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted. Run the same command again to continue where it stopped.", file=sys.stderr)
        return 130
    if paths:
        print("Report: " + ", ".join(sorted(paths.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
