"""Where does MulModSeg's inference time go? torch.profiler over inference forwards of vanilla nnU-Net's network
and MulModSeg's, built by nnU-Net from the same plans, each in its own process (as bench_mulmodseg.py measures).

    python benchmarks/bench_mulmodseg.py --backbones plain --workdir /tmp/bench_mulmodseg   # plans the phantoms
    python benchmarks/profile_mulmodseg_forward.py --dataset_folder /tmp/bench_mulmodseg/pre/Dataset991_BenchMulMod \
        --configuration 2d --patch 192 192

Prints, per trainer, the mean forward time, the profiler's time in nnU-Net's convolutions (the same layers in
both networks but for the last 1x1) and in everything else, and the top operators. When the convolutions of the
two processes differ by more than MulModSeg's own operators cost, a time ratio of this machine measures the
machine, not the method (README, Benchmarks).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CONVOLUTION_OPS = ("aten::mkldnn_convolution", "aten::_slow_conv2d_forward", "aten::slow_conv3d_forward",
                   "aten::slow_conv_transpose2d", "aten::slow_conv_transpose3d", "aten::_convolution")


def profile(args) -> dict:
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from torch.profiler import ProfilerActivity, profile as torch_profile

    sys.path.insert(0, HERE)
    from bench_mulmodseg import TRAINERS, write_random_table
    from nnunet_mulmod.training.mulmodseg_trainer import unwrap_network

    plans = load_json(os.path.join(args.dataset_folder, f"{args.plans}.json"))
    dataset_json = load_json(os.path.join(args.dataset_folder, "dataset.json"))
    plans["continue_training"] = False
    plans["configurations"][args.configuration]["patch_size"] = list(args.patch)
    if args.trainer == "mulmodseg" and not os.path.isfile(os.path.join(args.dataset_folder, "mulmod_text_table.pt")):
        write_random_table(args.dataset_folder, dataset_json, 512)
    module, class_name = TRAINERS[args.trainer]
    trainer = getattr(importlib.import_module(module), class_name)(plans, args.configuration, 0, dataset_json,
                                                                   torch.device("cpu"))
    trainer.initialize()
    trainer.set_deep_supervision_enabled(False)
    network = unwrap_network(trainer.network).eval()
    if args.trainer == "mulmodseg":
        network.selected_modality = 0
    x = torch.randn(1, len(dataset_json["channel_names"]), *args.patch)
    with torch.no_grad():
        for _ in range(3):  # warm-up
            network(x)
        start = time.perf_counter()
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.forwards):
                network(x)
        seconds = (time.perf_counter() - start) / args.forwards
    averages = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in averages) / 1e6
    convolution = sum(e.self_cpu_time_total for e in averages if e.key in CONVOLUTION_OPS) / 1e6
    top = sorted(averages, key=lambda e: -e.self_cpu_time_total)[:args.top]
    return {"trainer": class_name, "forward_s": seconds, "profiled_s": total, "convolution_s": convolution,
            "top": [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in top]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_folder", required=True, help="a preprocessed dataset folder (nnUNet_preprocessed/...)")
    p.add_argument("--plans", default="nnUNetPlans")
    p.add_argument("--configuration", default="2d")
    p.add_argument("--patch", type=int, nargs="+", default=[192, 192])
    p.add_argument("--forwards", type=int, default=10)
    p.add_argument("--top", type=int, default=8)
    p.add_argument("--trainer", default=None, help=argparse.SUPPRESS)  # set in the child processes
    args = p.parse_args()
    if args.trainer:
        print("RESULT " + json.dumps(profile(args)))
        return 0
    if not os.path.isfile(os.path.join(args.dataset_folder, f"{args.plans}.json")):
        print(f"ERROR: {args.dataset_folder} has no {args.plans}.json: pass a preprocessed dataset folder (see the "
              f"usage above).", file=sys.stderr)
        return 1
    env = {**os.environ, "nnUNet_compile": "f", "OMP_WAIT_POLICY": "PASSIVE",
           "nnUNet_preprocessed": os.path.dirname(os.path.abspath(args.dataset_folder)),
           "nnUNet_raw": os.environ.get("nnUNet_raw", "/tmp"), "nnUNet_results": os.environ.get("nnUNet_results", "/tmp")}
    sys.path.insert(0, HERE)
    from bench_mulmodseg import MeasurementError, measure_in_child

    results = {}
    for trainer in ("vanilla", "mulmodseg"):
        try:
            results[trainer] = measure_in_child([sys.executable, __file__, *sys.argv[1:], "--trainer", trainer], env)
        except MeasurementError as e:
            print(f"ERROR: profiling {trainer} failed: {str(e).strip().splitlines()[-1]}", file=sys.stderr)
            return 1
    for r in results.values():
        print(f"{r['trainer']}: forward {r['forward_s']:.3f} s; profiled per {args.forwards} forwards: "
              f"{r['profiled_s']:.2f} s, of which nnU-Net's convolutions {r['convolution_s']:.2f} s, "
              f"the rest {r['profiled_s'] - r['convolution_s']:.2f} s")
        for name, seconds, count in r["top"]:
            print(f"    {name:<34} {seconds:7.3f} s  {count:5d} calls")
    v, m = results["vanilla"], results["mulmodseg"]
    rest = (m["profiled_s"] - m["convolution_s"]) - (v["profiled_s"] - v["convolution_s"])
    print(f"forward ratio {m['forward_s'] / v['forward_s']:.3f}; convolutions {m['convolution_s']:.2f} s vs "
          f"{v['convolution_s']:.2f} s (ratio {m['convolution_s'] / v['convolution_s']:.3f}); MulModSeg's other "
          f"operators cost {rest:+.2f} s more than vanilla's ({100 * rest / v['profiled_s']:+.1f} % of vanilla's "
          f"profiled time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
