"""benchmarks/bench_gpu.py: its logic on the CPU (--smoke: tiny images, nnU-Net's real planner and trainers, the
ratio table), and the one-line exit without CUDA. CUDA is hidden from the subprocesses, so a GPU machine runs the
same checks; the GPU figures themselves come from running the script on one (README, Benchmarks)."""
import json
import os
import re
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "bench_gpu.py")


def _run(args, tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_n_proc_DA", "nnUNet_compile"):
        env.pop(name, None)
    return subprocess.run([sys.executable, SCRIPT, *args], env=env, capture_output=True, text=True, timeout=600,
                          cwd=str(tmp_path))


def test_smoke_run_prints_ratio_rows_for_every_trainer_on_the_planned_configurations(tmp_path):
    workdir = tmp_path / "bench"
    result = _run(["--smoke", "--workdir", str(workdir)], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    number = r"(\d+\.\d+)"
    rows = {}
    for configuration, trainer in (("3d_fullres", "nnUNetTrainerMulModSeg"), ("2d", "nnUNetTrainerMulModSeg"),
                                   ("2d", "nnUNetTrainerZeus")):
        # step, inference, inference with mirroring, peak memory (n/a on a CPU), parameters, compile (n/a: off)
        match = re.search(rf"^\| {configuration} \| off \| {trainer} \| {number} \| {number} \| {number} \| n/a \| "
                          rf"{number} \| n/a \|$", out, re.M)
        assert match, (configuration, trainer, out)
        rows[configuration, trainer] = [float(v) for v in match.groups()]
        assert all(v > 0 for v in rows[configuration, trainer])
    assert re.search(r"^\| 3d_fullres \| off \| nnUNetTrainerZeus \| n/a \(2d only\)", out, re.M)  # Zeus is 2d
    # MulModSeg adds the controller (and a 512-d text projection) to nnU-Net's network: more parameters, not 2x
    assert 1.0 < rows["3d_fullres", "nnUNetTrainerMulModSeg"][3] < 1.5
    assert "Targets, MulModSeg / vanilla: step <= 1.05, inference <= 1.03, memory <= 1.1, compile time <= 1.2" in out
    # the planned patch and batch, not shrunk: the absolute table shows the plans nnU-Net's planner wrote
    with open(workdir / "pre" / "Dataset992_BenchGPU" / "nnUNetPlans.json") as f:
        plans = json.load(f)
    for configuration in ("3d_fullres", "2d"):
        cfg = plans["configurations"][configuration]
        patch = "x".join(map(str, cfg["patch_size"]))
        for trainer in ("nnUNetTrainer", "nnUNetTrainerMulModSeg"):
            assert f"| {configuration} | off | {trainer} | PlainConvUNet | {patch} x {cfg['batch_size']} |" in out


def test_without_cuda_it_exits_with_one_line_and_writes_nothing(tmp_path):
    result = _run(["--workdir", str(tmp_path / "bench")], tmp_path)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("bench_gpu: no CUDA GPU on this machine") and "--smoke" in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert os.listdir(tmp_path) == []
