"""Zeus (late and hybrid fusion) against vanilla nnU-Net 2d (early fusion) on the same plans and batch.

Measures, per model: trainable parameters, training step time (forward + nnU-Net's Dice+CE loss + backward +
optimizer step; median over --steps after --warmup), inference time per volume (nnU-Net's own
``predict_sliding_window_return_logits`` over a --slices x --volume_size volume, no mirroring), and peak memory
(CUDA: max allocated; CPU: peak RSS of a fresh worker process per model, minus the RSS after imports).
Prints a table of absolute figures and ratios to vanilla.

    python benchmarks/bench_zeus.py                      # a typical 2d plan, CPU-sized defaults
    python benchmarks/bench_zeus.py -d 5 -device cuda    # the real 2d plans of a preprocessed dataset

Vanilla is nnU-Net's default network with deep supervision (as nnUNetTrainer trains it); Zeus trains without.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

MODELS = ("vanilla", "zeus_late", "zeus_hybrid")


def typical_2d_plans(patch, n_channels, batch_size):
    """nnU-Net's usual 2d architecture for the patch size (features 32 doubling to 512, strides 2)."""
    n_stages = min(8, 1 + int(min(patch).bit_length()) - 3)  # down to a 4-8 pixel bottleneck
    features = [min(32 * 2 ** i, 512) for i in range(n_stages)]
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": n_stages, "features_per_stage": features, "conv_op": "torch.nn.modules.conv.Conv2d",
                            "kernel_sizes": [[3, 3]] * n_stages, "strides": [[1, 1]] + [[2, 2]] * (n_stages - 1),
                            "n_conv_per_stage": [2] * n_stages, "n_conv_per_stage_decoder": [2] * (n_stages - 1),
                            "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    cfg = {"data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor", "batch_size": batch_size,
           "patch_size": list(patch), "spacing": [1.0, 1.0], "batch_dice": True, "architecture": arch}
    return {"dataset_name": "Dataset000_Bench", "plans_name": "nnUNetPlans", "configurations": {"2d": cfg},
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2]}


def load_plans(args):
    if args.d is None:
        return typical_2d_plans(tuple(args.patch), args.channels, args.batch_size)
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    folder = os.path.join(os.environ["nnUNet_preprocessed"], maybe_convert_to_dataset_name(args.d))
    with open(os.path.join(folder, args.p + ".json")) as f:
        return json.load(f)


def build(model, plans, n_channels, n_classes, text_dim):
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_mulmod.zeus.network import ZEUS_PLANS_KEY, build_zeus_network, make_spec
    pm = PlansManager(plans)
    cm = pm.get_configuration("2d")
    if model == "vanilla":
        return get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                      cm.network_arch_init_kwargs_req_import, n_channels, n_classes,
                                      allow_init=True, deep_supervision=True), pm, cm
    fusion = model.split("_")[1]
    mods = [f"M{i}" for i in range(n_channels)]
    plans[ZEUS_PLANS_KEY] = make_spec(fusion, dict(enumerate(mods)), mods,
                                      ["background"] + [f"c{i}" for i in range(1, n_classes)], text_dim,
                                      {"type": "unet"})
    net = build_zeus_network(pm, cm, n_channels, n_classes, fusion)
    with torch.no_grad():
        net.instruction_embeddings.normal_()
    return net, pm, cm


def worker(args):
    """One model in a fresh process (so that peak RSS is its own)."""
    import numpy as np
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    torch.manual_seed(0)
    device = torch.device(args.device)
    plans = load_plans(args)
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    net, pm, cm = build(args.worker, plans, args.channels, args.classes, args.text_dim)
    net = net.to(device)
    patch, batch = tuple(cm.patch_size), cm.batch_size
    loss = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1, weight_dice=1,
                          dice_class=MemoryEfficientSoftDiceLoss)
    deep_supervision = args.worker == "vanilla"
    if deep_supervision:
        n_scales = len(cm.pool_op_kernel_sizes)
        weights = np.array([1 / (2 ** i) for i in range(n_scales)])
        weights[-1] = 0
        loss = DeepSupervisionWrapper(loss, weights / weights.sum())
        scales = [tuple(int(p // np.prod(np.vstack(cm.pool_op_kernel_sizes)[:i + 1], 0)[j]) for j, p in
                        enumerate(patch)) for i in range(n_scales)]
    trainable = [p for p in net.parameters() if p.requires_grad]
    optimizer = (torch.optim.SGD(trainable, 1e-2, momentum=0.99, nesterov=True) if deep_supervision
                 else torch.optim.AdamW(trainable, 3e-4, weight_decay=1e-2))
    x = torch.randn(batch, args.channels, *patch, device=device)
    target = torch.randint(0, args.classes, (batch, 1, *patch), device=device)
    targets = ([torch.nn.functional.interpolate(target.float(), s, mode="nearest").long() for s in scales]
               if deep_supervision else target)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    net.train()
    times = []
    for i in range(args.warmup + args.steps):
        sync()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out = net(x)
        l = loss(out, targets)
        l.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 12)
        optimizer.step()
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    net.eval()
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False, device=device,
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    if deep_supervision:
        net.decoder.deep_supervision = False  # as nnU-Net does for inference
    labels = {"background": 0, **{f"c{i}": i for i in range(1, args.classes)}}
    predictor.manual_initialization(net, pm, cm, None, {"labels": labels},
                                    type(net).__name__, None)
    volume = torch.randn(args.channels, args.slices, args.volume_size, args.volume_size)
    sync()
    start = time.perf_counter()
    with torch.no_grad():
        logits = predictor.predict_sliding_window_return_logits(volume)
    sync()
    inference = time.perf_counter() - start
    assert logits.shape[0] == args.classes and tuple(logits.shape[1:]) == tuple(volume.shape[1:])
    peak = (torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_rss) / 1024)
    print(json.dumps({"model": args.worker, "params": sum(p.numel() for p in trainable),
                      "step_s": statistics.median(times), "inference_s": inference, "peak_mib": peak,
                      "patch": list(patch), "batch": batch}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", help="dataset id: use its preprocessed plans (2d configuration)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (with -d)")
    parser.add_argument("--patch", type=int, nargs=2, default=[256, 256], help="patch size of the built-in plan")
    parser.add_argument("--batch_size", type=int, default=4, help="batch size of the built-in plan")
    parser.add_argument("--channels", type=int, default=2, help="aligned input channels (modalities)")
    parser.add_argument("--classes", type=int, default=3, help="output classes incl. background")
    parser.add_argument("--text_dim", type=int, default=512, help="instruction embedding width (MedCLIP: 512)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--slices", type=int, default=8, help="slices of the inference volume")
    parser.add_argument("--volume_size", type=int, default=320, help="in-plane size of the inference volume")
    parser.add_argument("-device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--worker", choices=MODELS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.worker:
        return worker(args)
    results = {}
    for model in MODELS:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", model] + sys.argv[1:]
        out = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace")
        if out.returncode != 0:
            sys.exit(f"{model} failed:\n{out.stderr[-3000:]}")
        results[model] = json.loads(out.stdout.strip().splitlines()[-1])
    base = results["vanilla"]
    print(f"plans: patch {base['patch']}, batch {base['batch']}, {args.channels} channels, {args.classes} classes, "
          f"device {args.device}; inference volume {args.channels}x{args.slices}x{args.volume_size}^2")
    print(f"{'model':<12}{'trainable':>12}{'step s':>9}{'infer s':>9}{'peak MiB':>10}  ratios to vanilla "
          f"(params / step / inference / memory)")
    for model, r in results.items():
        print(f"{model:<12}{r['params'] / 1e6:>11.2f}M{r['step_s']:>9.3f}{r['inference_s']:>9.2f}{r['peak_mib']:>10.0f}"
              f"  {r['params'] / base['params']:.2f} / {r['step_s'] / base['step_s']:.2f} / "
              f"{r['inference_s'] / base['inference_s']:.2f} / {r['peak_mib'] / max(base['peak_mib'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
