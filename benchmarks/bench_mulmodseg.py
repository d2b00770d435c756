"""MulModSeg vs vanilla nnU-Net on the same plans and the same batch: step time, inference time,
parameters and peak memory, printed as ratios MulModSeg / vanilla, for each backbone.

    python benchmarks/bench_mulmodseg.py [--device cpu|cuda] [--patch3d 64 64 64] [--patch2d 256 256] \
        [--batch 2] [--steps 5] [--embed_dim 512] [--backbones plain resenc primus] [--patch_primus 64 64 64] \
        [--rounds 1]

What it does, in one run: writes a few synthetic CT+MR phantoms of abdominal-CT size, lets nnU-Net plan
them (``nnUNetv2_plan_and_preprocess -c 2d 3d_fullres``; for ``resenc`` also
``nnUNetv2_plan_experiment -pl nnUNetPlannerResEncM``), so both trainers get nnU-Net's own plans and
architecture (6-7 stages, 32..320/512 features). ``--patch3d/--patch2d/--patch_primus`` only shrink the patch
(the architecture stays as planned) so the run fits a CPU. The pairs, each built by nnU-Net from the same plans:
- ``plain``: nnUNetTrainer vs nnUNetTrainerMulModSeg on nnUNetPlans (PlainConvUNet), 3d_fullres and 2d;
- ``resenc``: the same two trainers on nnUNetResEncUNetMPlans (ResidualEncoderUNet, the M preset), 3d_fullres;
- ``primus``: nnU-Net's nnUNet_Primus_M_Trainer vs nnUNetTrainerMulModSegPrimus (Primus-M: 864-d tokens of
  8^3 voxels, 16 blocks; the patch must be divisible by 8), 3d_fullres.
A random table of --embed_dim dims stands in for CLIP's 512-d table, 14 classes like AMOS. It measures, each
trainer in its own subprocess:
- median ``train_step`` time over --steps steps (after one warm-up) on one fixed random batch;
- ``predict_sliding_window_return_logits`` on one volume of 1.5x the patch (2d: 8 such slices; no mirroring);
- trainable parameters;
- peak memory of the training steps: CUDA max_memory_allocated, or on the CPU the growth of the
  process's peak RSS over its RSS before the first step.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LABELS = {"background": 0, **{f"organ_{i}": i for i in range(1, 14)}}


def prepare(workdir: str, shape_xyz) -> str:
    """Phantoms with 13 organ labels relabelled from the demo phantoms' anatomy, planned by nnU-Net."""
    import numpy as np
    import SimpleITK as sitk
    from nnunet_mulmod.demo.phantoms import make_phantom
    from nnunet_mulmod.modality import set_modalities

    raw = os.path.join(workdir, "raw", "Dataset991_BenchMulMod")
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(raw, sub), exist_ok=True)
    case_modalities = {}
    for modality in ("CT", "MR"):
        for i in range(3):
            case = f"{modality.lower()}_{i}"
            phantom = make_phantom(modality, [i, ord(modality[0])], shape_xyz, (0.8, 0.8, 2.5))
            # spread the phantom's organs over 13 labels (by position), so that the head has AMOS's class count
            label = phantom.label.astype(np.int32)
            label = np.where(label > 0, (label * 7 + np.arange(label.shape[2])[None, None] // 16) % 13 + 1, 0)
            for arr, folder, name in ((phantom.image.astype(np.float32), "imagesTr", f"{case}_0000"),
                                      (label.astype(np.uint8), "labelsTr", case)):
                img = sitk.GetImageFromArray(arr)
                img.SetSpacing(tuple(float(s) for s in phantom.spacing_xyz))
                sitk.WriteImage(img, os.path.join(raw, folder, name + ".nii.gz"))
            case_modalities[case] = modality
    dataset_json = {"channel_names": {"0": "zscore"}, "labels": LABELS, "numTraining": 6,
                    "file_ending": ".nii.gz", "name": "BenchMulMod"}
    set_modalities(dataset_json, case_modalities, ["CT", "MR"])
    with open(os.path.join(raw, "dataset.json"), "w") as f:
        json.dump(dataset_json, f)
    env = dict(os.environ, nnUNet_raw=os.path.join(workdir, "raw"), nnUNet_preprocessed=os.path.join(workdir, "pre"),
               nnUNet_results=os.path.join(workdir, "res"))
    subprocess.run(["nnUNetv2_plan_and_preprocess", "-d", "991", "-c", "2d", "3d_fullres", "-np", "2", "-npfp", "2"],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    return env["nnUNet_preprocessed"]


def write_random_table(preprocessed_dataset_folder: str, dataset_json: dict, embed_dim: int) -> None:
    """A random [modalities, classes, embed_dim] MulModSeg text table where the trainer looks for it (stands in
    for CLIP's table: the cost of the head depends on its size, not its values)."""
    import torch
    from nnunet_mulmod.modality import class_names, get_modalities
    from nnunet_mulmod.text.table import TextEmbeddingTable, default_table_path
    modalities, classes = get_modalities(dataset_json), class_names(dataset_json)
    table = TextEmbeddingTable(torch.randn(len(modalities), len(classes), embed_dim), modalities, classes,
                               [["-"] * len(classes)] * len(modalities), "V3", "", {"type": "random"})
    table.save(default_table_path(preprocessed_dataset_folder))


def random_batch(trainer, dataset_json: dict, batch_size: int, patch) -> dict:
    """One fixed random batch as nnU-Net's loader gives it: data [B, C, *patch], target a list per
    deep-supervision scale (one tensor without deep supervision), keys: the first case (ALT reads its modality)."""
    import torch
    from nnunet_mulmod.modality import class_names
    n_labels = len(class_names(dataset_json))
    data = torch.randn(batch_size, len(dataset_json["channel_names"]), *patch)
    scales = trainer._get_deep_supervision_scales()
    target = [torch.randint(0, n_labels, (batch_size, 1, *[int(round(p * s)) for p, s in zip(patch, sc)])).float()
              for sc in (scales if scales is not None else [[1] * len(patch)])]
    return {"data": data, "target": target if scales is not None else target[0],
            "keys": [next(iter(dataset_json["case_modalities"]))] * batch_size}


RESENC_PLANS = "nnUNetResEncUNetMPlans"
# --trainer of a measurement -> (trainer module, class): vanilla and MulModSeg of each backbone
TRAINERS = {
    "vanilla": ("nnunetv2.training.nnUNetTrainer.nnUNetTrainer", "nnUNetTrainer"),
    "mulmodseg": ("nnunet_mulmod.training.mulmodseg_trainer", "nnUNetTrainerMulModSeg"),
    "primus": ("nnunetv2.training.nnUNetTrainer.primus.primus_trainers", "nnUNet_Primus_M_Trainer"),
    "mulmodseg_primus": ("nnunet_mulmod.training.primus_trainers", "nnUNetTrainerMulModSegPrimus"),
}
# backbone -> (plans, configurations, vanilla trainer, MulModSeg trainer)
BACKBONES = {
    "plain": ("nnUNetPlans", ("3d_fullres", "2d"), "vanilla", "mulmodseg"),
    "resenc": (RESENC_PLANS, ("3d_fullres",), "vanilla", "mulmodseg"),
    "primus": ("nnUNetPlans", ("3d_fullres",), "primus", "mulmodseg_primus"),  # Primus takes the patch size only
}


class MeasurementError(RuntimeError):
    """A measurement process failed or printed no RESULT line (the message holds its command and output tails)."""


def measure_in_child(command, env: dict) -> dict:
    """Runs ``command`` (a benchmark script in its measuring mode, which prints one ``RESULT <json>`` line) in its own
    process, so that each measurement has its own memory accounting and no state of the previous one; its result."""
    out = subprocess.run(command, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace")
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if out.returncode != 0 or not line:
        raise MeasurementError(f"measurement failed: {' '.join(command)}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(line[0][len("RESULT "):])


MEDIAN_KEYS = ("step_s", "step_cpu_s", "inference_s", "inference_cpu_s", "peak_bytes")


def describe(network, cfg: dict) -> str:
    """The backbone, in a few words (the vanilla network)."""
    from dynamic_network_architectures.architectures.primus import Primus
    if isinstance(network, Primus):
        return f"Primus {network.embed_dim}-d, {len(network.eva.blocks)} blocks, 8^3 tokens"
    kwargs = cfg["architecture"]["arch_kwargs"]
    features = kwargs["features_per_stage"]
    text = f"{type(network).__name__} {features[0]}..{features[-1]}, {len(features)} stages"
    if "n_blocks_per_stage" in kwargs:
        text += f", blocks {kwargs['n_blocks_per_stage']}"
    return text


def measure(args) -> dict:
    """One trainer, one configuration: runs inside its own process (clean peak-memory accounting)."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    import importlib
    from nnunet_mulmod.modeling.primus_net import PrimusMulModSegNet
    from nnunet_mulmod.training.mulmodseg_trainer import unwrap_network

    torch.manual_seed(0)
    pre = args.dataset_folder or os.path.join(os.environ["nnUNet_preprocessed"], "Dataset991_BenchMulMod")
    plans = load_json(os.path.join(pre, f"{args.plans}.json"))
    dataset_json = load_json(os.path.join(pre, "dataset.json"))
    cfg = plans["configurations"][args.configuration]
    cfg["patch_size"] = list(args.patch)
    cfg["batch_size"] = args.batch
    plans["continue_training"] = False  # nnUNetv2_train adds this key
    mulmodseg = args.trainer.startswith("mulmodseg")
    if mulmodseg and args.dataset_folder is None:  # a given dataset brings its own table
        write_random_table(pre, dataset_json, args.embed_dim)
    device = torch.device(args.device)
    module, class_name = TRAINERS[args.trainer]
    cls = getattr(importlib.import_module(module), class_name)
    trainer = cls(plans, args.configuration, 0, dataset_json, device)
    trainer.initialize()
    trainer.network.train()
    patch = tuple(args.patch)
    batch = random_batch(trainer, dataset_json, args.batch, patch)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, cpu_times = [], []
    for i in range(args.steps + 1):
        sync()
        t, c = time.perf_counter(), time.process_time()
        trainer.train_step(batch)
        sync()
        if i > 0:
            times.append(time.perf_counter() - t)
            cpu_times.append(time.process_time() - c)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024

    network = unwrap_network(trainer.network)
    trainer.set_deep_supervision_enabled(False)
    network.eval()
    if mulmodseg:
        network.selected_modality = 0
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                                allow_tqdm=False)
    predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager, None,
                                    dataset_json, cls.__name__, None)
    # one volume of 1.5x the patch per axis (2d: 8 slices of 1.5x the patch)
    volume = torch.randn(1, *([8] if len(patch) == 2 else []), *[int(p * 1.5) for p in patch])
    predictor.predict_sliding_window_return_logits(volume)  # warm-up
    sync()
    t, c = time.perf_counter(), time.process_time()
    predictor.predict_sliding_window_return_logits(volume)
    sync()
    inference, inference_cpu = time.perf_counter() - t, time.process_time() - c
    return {"step_s": statistics.median(times), "step_cpu_s": statistics.median(cpu_times),
            "inference_s": inference, "inference_cpu_s": inference_cpu, "peak_bytes": peak,
            "params": sum(p.numel() for p in network.parameters() if p.requires_grad),
            "architecture": plans["configurations"][args.configuration]["architecture"]["network_class_name"],
            "features": cfg["architecture"]["arch_kwargs"]["features_per_stage"],
            "network": describe(network.encoder if isinstance(network, PrimusMulModSegNet) else network, cfg)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--patch3d", type=int, nargs=3, default=[64, 64, 64])
    parser.add_argument("--patch2d", type=int, nargs=2, default=[256, 256])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure each pair this many times, alternating which goes first; medians")
    parser.add_argument("--backbones", nargs="+", choices=list(BACKBONES), default=list(BACKBONES))
    parser.add_argument("--patch_primus", type=int, nargs=3, default=[64, 64, 64],
                        help="Primus's patch (divisible by 8; Primus-M is slow on a CPU)")
    parser.add_argument("--embed_dim", type=int, default=512)
    parser.add_argument("--shape", type=int, nargs=3, default=[256, 256, 64], help="phantom size (x y z voxels)")
    parser.add_argument("--workdir", default=None)
    # internal: one measurement
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trainer", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--configuration", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--patch", type=int, nargs="+", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dataset_folder", default=None, help=argparse.SUPPRESS)  # a preprocessed dataset folder
    parser.add_argument("--plans", default="nnUNetPlans", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print("RESULT " + json.dumps(measure(args)))
        return

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_mulmodseg_")
    env = dict(os.environ, nnUNet_raw=os.path.join(workdir, "raw"), nnUNet_preprocessed=os.path.join(workdir, "pre"),
               nnUNet_results=os.path.join(workdir, "res"), nnUNet_compile="f")
    os.environ.update(env)
    if not os.path.isdir(os.path.join(workdir, "pre", "Dataset991_BenchMulMod")):
        print(f"planning synthetic data in {workdir} ...", flush=True)
        prepare(workdir, args.shape)
    if "resenc" in args.backbones and not os.path.isfile(os.path.join(workdir, "pre", "Dataset991_BenchMulMod",
                                                                      RESENC_PLANS + ".json")):
        # the M preset's plans for the same data (its architecture; the measurements use random batches)
        subprocess.run(["nnUNetv2_plan_experiment", "-d", "991", "-pl", "nnUNetPlannerResEncM"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
    rows = []
    for backbone in args.backbones:
        plans, configurations, vanilla, ours = BACKBONES[backbone]
        for configuration in configurations:
            patch = args.patch_primus if backbone == "primus" else \
                args.patch3d if configuration == "3d_fullres" else args.patch2d
            runs = {vanilla: [], ours: []}
            for round_ in range(args.rounds):  # alternated, so that a change in the machine's load hits both alike
                for trainer in ((vanilla, ours) if round_ % 2 == 0 else (ours, vanilla)):
                    cmd = [sys.executable, __file__, "--measure", "--trainer", trainer, "--configuration",
                           configuration, "--patch", *map(str, patch), "--batch", str(args.batch), "--steps",
                           str(args.steps), "--device", args.device, "--embed_dim", str(args.embed_dim),
                           "--plans", plans]
                    # nnUNet_n_proc_DA=0 only here: nnU-Net's planner cannot run with it (torch.set_num_threads(0))
                    try:
                        runs[trainer].append(measure_in_child(cmd, dict(env, nnUNet_n_proc_DA="0")))
                    except MeasurementError as e:
                        raise SystemExit(str(e))
            # medians over the rounds (parameters and descriptions are the same in every round)
            results = {t: {k: statistics.median(r[k] for r in rs) if k in MEDIAN_KEYS else rs[0][k] for k in rs[0]}
                       for t, rs in runs.items()}
            rows.append((f"{TRAINERS[ours][1]} / {TRAINERS[vanilla][1]}", plans, configuration, patch,
                         results[vanilla], results[ours]))
    print(f"\nMulModSeg / vanilla nnU-Net, same plans and batch (batch {args.batch}, device {args.device}, "
          f"{args.steps} timed steps, {args.rounds} round(s), text dim {args.embed_dim}, 14 classes)")
    print("Times are medians of wall-clock seconds, and in [brackets] of the process's CPU seconds, which a "
          "busy machine disturbs less.")
    print("| trainers | plans, configuration | patch | backbone | step time | inference | parameters | peak memory |")
    print("|---|---|---|---|---|---|---|---|")
    for pair, plans, configuration, patch, v, m in rows:
        print(f"| {pair} | {plans} {configuration} | {'x'.join(map(str, patch))} | {v['network']} | "
              f"{m['step_s'] / v['step_s']:.3f} [{m['step_cpu_s'] / v['step_cpu_s']:.3f}] "
              f"({v['step_s']:.2f}s -> {m['step_s']:.2f}s) | "
              f"{m['inference_s'] / v['inference_s']:.3f} [{m['inference_cpu_s'] / v['inference_cpu_s']:.3f}] "
              f"({v['inference_s']:.2f}s -> {m['inference_s']:.2f}s) | "
              f"{m['params'] / v['params']:.4f} ({v['params'] / 1e6:.2f}M -> {m['params'] / 1e6:.2f}M) | "
              f"{m['peak_bytes'] / max(v['peak_bytes'], 1):.3f} ({v['peak_bytes'] / 2**20:.0f} -> "
              f"{m['peak_bytes'] / 2**20:.0f} MiB) |")

if __name__ == "__main__":
    main()
