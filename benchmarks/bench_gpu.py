"""MulModSeg and Zeus against vanilla nnU-Net on one CUDA GPU, with nnU-Net's real plans, compile and AMP.

    python benchmarks/bench_gpu.py [--shape 512 512 100] [--steps 10] [--workdir DIR]   # one CUDA GPU
    python benchmarks/bench_gpu.py --smoke                                              # tiny, CPU allowed

What it does, in one run:
- a synthetic abdominal-CT-sized dataset (default 512x512x100 voxels at 0.8x0.8x2.5 mm, CT and MR cases, 13
  organ labels + background like AMOS) is written with SimpleITK and planned by nnU-Net's own ExperimentPlanner
  (in-process, from the fingerprint those images have: every case has the same geometry, so extracting it would
  only cost minutes). The 3d_fullres and 2d configurations are used as planned: patch size, batch size and
  architecture are not shrunk;
- for each configuration, nnUNetTrainer, nnUNetTrainerMulModSeg (a random 14-class, --embed_dim table stands in
  for CLIP's) and nnUNetTrainerZeus (2d only: Zeus is a 2d method) are built as nnUNetv2_train builds them,
  each with ``nnUNet_compile`` on (nnU-Net's default on a GPU) and off, each run in its own process (its own
  CUDA memory statistics and dynamo caches). nnU-Net's own ``train_step`` runs on a fixed random batch: AMP
  (fp16 autocast + GradScaler) is nnU-Net's, on CUDA;
- measured: median step time over --steps (after --warmup), compile time (first step minus the median step),
  peak GPU memory of the training steps (max_memory_allocated), trainable parameters, and nnU-Net's
  ``predict_sliding_window_return_logits`` on one full preprocessed volume (the plans' median size), with and
  without mirroring, after a warm-up on one patch;
- printed: one table of ratios to vanilla (same configuration, same compile setting), then the absolute figures.

Targets (MulModSeg / vanilla): step <= 1.05, inference <= 1.03, memory <= 1.10, compile time <= 1.2.
Without CUDA (and without --smoke) it exits with one line. ``--smoke`` runs the same logic on tiny images on the
CPU (compile off only, as nnU-Net does on a CPU; measurements in this process), for tests/test_bench_gpu.py.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_mulmodseg import (LABELS, MeasurementError, measure_in_child, random_batch,  # noqa: E402
                             write_random_table)

DATASET_ID = 992
DATASET = "Dataset992_BenchGPU"
SPACING_XYZ = (0.8, 0.8, 2.5)
TRAINERS = ("nnUNetTrainer", "nnUNetTrainerMulModSeg", "nnUNetTrainerZeus")
CONFIGURATIONS = ("3d_fullres", "2d")
TARGETS = {"step": 1.05, "inference": 1.03, "memory": 1.10, "compile": 1.2}  # MulModSeg / vanilla


def prepare(workdir: str, shape_xyz, n_cases: int = 2) -> str:
    """Raw dataset (SimpleITK), nnU-Net's plans, the text and instruction tables; -> preprocessed dataset folder."""
    import numpy as np
    import SimpleITK as sitk
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunet_mulmod.modality import CHANNEL_MODALITIES_KEY, set_modalities

    raw, pre = os.path.join(workdir, "raw", DATASET), os.path.join(workdir, "pre", DATASET)
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(raw, sub), exist_ok=True)
    os.makedirs(pre, exist_ok=True)
    rng = np.random.RandomState(0)
    x, y, z = shape_xyz
    case_modalities = {}
    for i in range(n_cases):
        modality = ("CT", "MR")[i % 2]
        case = f"{modality.lower()}_{i}"
        image = rng.randint(-100, 200, size=(z, y, x)).astype(np.int16)
        label = np.zeros((z, y, x), np.uint8)
        for organ in range(1, 14):  # 13 organ blocks side by side in the middle slab
            label[z // 4: 3 * z // 4, y // 4: y // 2, (organ - 1) * x // 14: organ * x // 14] = organ
        for arr, folder, name in ((image, "imagesTr", f"{case}_0000"), (label, "labelsTr", case)):
            itk = sitk.GetImageFromArray(arr)
            itk.SetSpacing(SPACING_XYZ)
            sitk.WriteImage(itk, os.path.join(raw, folder, name + ".nii.gz"))
        case_modalities[case] = modality
    dataset_json = {"channel_names": {"0": "CT_or_MR"}, "labels": LABELS, "numTraining": n_cases,
                    "file_ending": ".nii.gz", "name": "BenchGPU"}
    set_modalities(dataset_json, case_modalities, ["CT", "MR"])
    dataset_json[CHANNEL_MODALITIES_KEY] = {"0": "CT"}  # Zeus: the channel's modality
    for folder in (raw, pre):
        with open(os.path.join(folder, "dataset.json"), "w") as f:
            json.dump(dataset_json, f)
    # the fingerprint nnU-Net extracts from these images (same geometry for every case; z, y, x order)
    fingerprint = {"spacings": [list(SPACING_XYZ[::-1])] * n_cases, "shapes_after_crop": [[z, y, x]] * n_cases,
                   "median_relative_size_after_cropping": 1.0,
                   "foreground_intensity_properties_per_channel": {"0": {
                       "max": 200.0, "mean": 50.0, "median": 50.0, "min": -100.0, "percentile_00_5": -98.0,
                       "percentile_99_5": 198.0, "std": 87.0}}}
    with open(os.path.join(pre, "dataset_fingerprint.json"), "w") as f:
        json.dump(fingerprint, f)
    with contextlib.redirect_stdout(io.StringIO()):  # the planner prints every configuration
        ExperimentPlanner(DATASET_ID).plan_experiment()
    with open(os.path.join(pre, "nnUNetPlans.json")) as f:
        plans = json.load(f)
    # one small preprocessed case per configuration folder: the trainer infers the dataset format from it
    # (the benchmark itself feeds random batches and volumes)
    for name in CONFIGURATIONS:
        folder = os.path.join(pre, plans["configurations"][name]["data_identifier"])
        os.makedirs(folder, exist_ok=True)
        seg = np.zeros((1, 4, 8, 8), np.int8)
        seg[0, :, 2:6, 2:6] = 1
        properties = {"spacing": list(SPACING_XYZ[::-1]), "shape_before_cropping": (4, 8, 8),
                      "bbox_used_for_cropping": [[0, 4], [0, 8], [0, 8]],
                      "shape_after_cropping_and_before_resampling": (4, 8, 8),
                      "class_locations": DefaultPreprocessor._sample_foreground_locations(seg, [1], seed=0)}
        for case in list(case_modalities)[:2]:
            nnUNetDatasetBlosc2.save_case(rng.randn(1, 4, 8, 8).astype(np.float32), seg, properties,
                                          os.path.join(folder, case), chunks=(1, 4, 8, 8), blocks=(1, 4, 8, 8))
    with open(os.path.join(pre, "splits_final.json"), "w") as f:  # ALT needs both modalities in training
        json.dump([{"train": list(case_modalities)[:2], "val": list(case_modalities)[:1]}], f)
    return pre


def write_tables(pre: str, embed_dim: int) -> None:
    import torch
    from nnunet_mulmod.modality import class_names
    from nnunet_mulmod.text.table import TextEmbeddingTable
    from nnunet_mulmod.zeus.instruction_table import default_table_path, save_table
    with open(os.path.join(pre, "dataset.json")) as f:
        dataset_json = json.load(f)
    write_random_table(pre, dataset_json, embed_dim)
    classes = class_names(dataset_json)
    table = TextEmbeddingTable(torch.randn(1, len(classes), embed_dim), ["CT"], classes, [["-"] * len(classes)],
                               "zeus-instructions", "", {"type": "random"})
    save_table(table.to_dict(), default_table_path(pre))


def measure(pre: str, trainer_name: str, configuration: str, compile_on: bool, steps: int, warmup: int,
            device_name: str) -> dict:
    """One trainer, one configuration, one compile setting (its own process on CUDA)."""
    os.environ["nnUNet_compile"] = "t" if compile_on else "f"  # read by nnU-Net's trainer and predictor
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunet_mulmod.training.mulmodseg_trainer import nnUNetTrainerMulModSeg
    from nnunet_mulmod.training.unwrap import unwrap_network
    from nnunet_mulmod.zeus.trainer import nnUNetTrainerZeus

    classes = {c.__name__: c for c in (nnUNetTrainer, nnUNetTrainerMulModSeg, nnUNetTrainerZeus)}
    torch.manual_seed(0)
    with open(os.path.join(pre, "nnUNetPlans.json")) as f:
        plans = json.load(f)
    with open(os.path.join(pre, "dataset.json")) as f:
        dataset_json = json.load(f)
    plans["continue_training"] = False  # nnUNetv2_train adds this key
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    trainer = classes[trainer_name](plans, configuration, 0, dataset_json, device)
    trainer.initialize()
    trainer.network.train()
    cfg = plans["configurations"][configuration]
    patch = tuple(cfg["patch_size"])
    batch = random_batch(trainer, dataset_json, cfg["batch_size"], patch)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(1 + warmup + steps):
        sync()
        t = time.perf_counter()
        trainer.train_step(batch)
        sync()
        times.append(time.perf_counter() - t)
    step = statistics.median(times[1 + warmup:])
    peak = torch.cuda.max_memory_allocated() if cuda else None

    core = unwrap_network(trainer.network)
    trainer.set_deep_supervision_enabled(False)
    trainer.network.eval()
    if hasattr(core, "selected_modality"):
        core.selected_modality = 0  # MulModSeg: the case's modality (CT), as the prediction hook sets it
    axes = tuple(range(len(patch)))
    # one full preprocessed volume: the plans' median image (2d: as many slices as the 3d median has)
    size = plans["configurations"][configuration]["median_image_size_in_voxels"]
    if len(patch) == 2:
        size = [plans["configurations"]["3d_fullres"]["median_image_size_in_voxels"][0], *size]
    volume = torch.randn(len(dataset_json["channel_names"]), *[int(s) for s in size])
    one_patch = torch.randn(volume.shape[0], *([2] if len(patch) == 2 else []), *patch)
    inference = {}
    for mirroring in (False, True):
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                    perform_everything_on_device=cuda, device=device, verbose=False,
                                    allow_tqdm=False)
        predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager, None,
                                        dataset_json, trainer_name, axes)
        predictor.predict_sliding_window_return_logits(one_patch)  # warm-up (compiles the inference graphs)
        sync()
        t = time.perf_counter()
        predictor.predict_sliding_window_return_logits(volume)
        sync()
        inference[mirroring] = time.perf_counter() - t
    return {"step_s": step, "first_step_s": times[0], "compile_s": max(times[0] - step, 0.0) if compile_on else None,
            "inference_s": inference[False], "inference_mirror_s": inference[True], "peak_bytes": peak,
            "params": sum(p.numel() for p in core.parameters() if p.requires_grad),
            "patch": list(patch), "batch": cfg["batch_size"], "volume": [int(s) for s in size],
            "architecture": cfg["architecture"]["network_class_name"].split(".")[-1]}


def _ratio(value, reference, digits=3):
    if value is None or reference is None or reference == 0:
        return "n/a"
    return f"{value / reference:.{digits}f}"


def print_report(results: dict, args) -> None:
    print(f"\nRatios to vanilla nnU-Net (nnUNetTrainer), same configuration and compile setting; device "
          f"{args.device}; planned patch and batch; {args.steps} timed steps; text dim {args.embed_dim}, "
          f"14 classes; AMP: nnU-Net's (fp16 autocast + GradScaler on CUDA, none on a CPU)")
    print("| configuration | compile | trainer | step | inference | inference (mirroring) | peak memory | "
          "parameters | compile time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (configuration, compile_on), by_trainer in results.items():
        vanilla = by_trainer["nnUNetTrainer"]
        for name in TRAINERS[1:]:
            r = by_trainer.get(name)
            label = "on" if compile_on else "off"
            if r is None:
                print(f"| {configuration} | {label} | {name} | n/a (2d only) | | | | | |")
                continue
            print(f"| {configuration} | {label} | {name} | {_ratio(r['step_s'], vanilla['step_s'])} | "
                  f"{_ratio(r['inference_s'], vanilla['inference_s'])} | "
                  f"{_ratio(r['inference_mirror_s'], vanilla['inference_mirror_s'])} | "
                  f"{_ratio(r['peak_bytes'], vanilla['peak_bytes'])} | {_ratio(r['params'], vanilla['params'], 4)} | "
                  f"{_ratio(r['compile_s'], vanilla['compile_s'])} |")
    print(f"Targets, MulModSeg / vanilla: step <= {TARGETS['step']}, inference <= {TARGETS['inference']}, "
          f"memory <= {TARGETS['memory']}, compile time <= {TARGETS['compile']}.")
    print("\nAbsolute figures")
    print("| configuration | compile | trainer | architecture | patch x batch | volume | step s | first step s | "
          "inference s | mirrored s | peak MiB | parameters |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (configuration, compile_on), by_trainer in results.items():
        for name, r in by_trainer.items():
            peak = "n/a" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2 ** 20:.0f}"
            print(f"| {configuration} | {'on' if compile_on else 'off'} | {name} | {r['architecture']} | "
                  f"{'x'.join(map(str, r['patch']))} x {r['batch']} | {'x'.join(map(str, r['volume']))} | "
                  f"{r['step_s']:.3f} | {r['first_step_s']:.2f} | {r['inference_s']:.2f} | "
                  f"{r['inference_mirror_s']:.2f} | {peak} | {r['params'] / 1e6:.2f}M |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 100], help="image size, x y z voxels")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after the first (compiling) one")
    parser.add_argument("--embed_dim", type=int, default=512)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny images, CPU allowed, compile off (tests)")
    parser.add_argument("--measure", nargs=4, default=None, help=argparse.SUPPRESS)  # internal: one process
    args = parser.parse_args(argv)
    import torch

    if args.measure:
        pre, trainer_name, configuration, compile_on = args.measure
        print("RESULT " + json.dumps(measure(pre, trainer_name, configuration, compile_on == "on", args.steps,
                                             args.warmup, "cuda")))
        return 0
    if args.smoke:
        args.shape, args.steps, args.warmup = [32, 32, 8], 1, 0
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif not torch.cuda.is_available():
        print(f"bench_gpu: no CUDA GPU on this machine (torch {torch.__version__}); run it on one, or with --smoke "
              f"to check the script on the CPU.", file=sys.stderr)
        return 1
    else:
        args.device = "cuda"
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_gpu_")
    os.environ.update(nnUNet_raw=os.path.join(workdir, "raw"), nnUNet_preprocessed=os.path.join(workdir, "pre"),
                      nnUNet_results=os.path.join(workdir, "res"))
    started = time.time()
    pre = os.path.join(workdir, "pre", DATASET)
    if not os.path.isfile(os.path.join(pre, "nnUNetPlans.json")):
        print(f"writing and planning a {'x'.join(map(str, args.shape))} dataset in {workdir} ...", flush=True)
        prepare(workdir, args.shape)
    write_tables(pre, args.embed_dim)
    os.environ["nnUNet_n_proc_DA"] = "0"  # after planning: nnU-Net's planner cannot run with it (set_num_threads(0))
    compile_settings = (False,) if args.smoke else (True, False)
    results = {}
    for configuration in CONFIGURATIONS:
        for compile_on in compile_settings:
            by_trainer = results.setdefault((configuration, compile_on), {})
            for name in TRAINERS:
                if name == "nnUNetTrainerZeus" and configuration != "2d":
                    continue
                print(f"measuring {configuration} compile {'on' if compile_on else 'off'} {name} ...", flush=True)
                if args.smoke:  # in this process: seconds instead of a fresh interpreter per run
                    by_trainer[name] = measure(pre, name, configuration, compile_on, args.steps, args.warmup,
                                               args.device)
                    continue
                cmd = [sys.executable, os.path.abspath(__file__), "--measure", pre, name, configuration,
                       "on" if compile_on else "off", "--steps", str(args.steps), "--warmup", str(args.warmup)]
                try:
                    by_trainer[name] = measure_in_child(cmd, dict(os.environ))
                except MeasurementError as e:
                    print(f"bench_gpu: {e}", file=sys.stderr)
                    return 1
    print_report(results, args)
    print(f"\nbench_gpu: {time.time() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
