"""Bad device / compile options (nnunet_mulmod/devices.py): our entry points refuse a device this machine lacks
with one line and exit code 1, before anything is written; nnUNet_compile asked for where torch.compile cannot
run falls back to uncompiled as nnU-Net's trainer does, with one line.

CUDA is hidden from the subprocesses (CUDA_VISIBLE_DEVICES="") and faked in-process, so these tests behave the
same on a machine with a GPU.
"""
import os
import subprocess
import sys

import pytest
import torch

from nnunet_mulmod import devices
from nnunet_mulmod.devices import DeviceError, compile_fallback, resolve_device


def _run_cli(module, args, tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", nnUNet_raw=str(tmp_path / "raw"),
               nnUNet_preprocessed=str(tmp_path / "pre"), nnUNet_results=str(tmp_path / "res"))
    return subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=str(tmp_path))


@pytest.mark.parametrize("module,args,output", [
    # the model folder does not exist either: the device is checked first, so that is not what is reported
    ("nnunet_mulmod.inference.cli", ["-i", "in", "-o", "preds", "-m", "no_model", "-device", "cuda"], "preds"),
    ("nnunet_mulmod.demo.run_demo", ["-o", "demo_out", "-device", "cuda"], "demo_out"),
    ("nnunet_mulmod.demo.run_demo", ["-o", "demo_out", "-device", "mps"], "demo_out"),
])
def test_clis_refuse_a_missing_gpu_with_one_line_and_write_nothing(tmp_path, module, args, output):
    result = _run_cli(module, args, tmp_path)
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ERROR: -device "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    device = args[-1]
    assert ("no CUDA GPU is usable" if device == "cuda" else "MPS backend is not available") in lines[0]
    assert "use -device cpu" in lines[0]
    assert sorted(os.listdir(tmp_path)) == [], os.listdir(tmp_path)  # no output folder, no nnUNet folders
    assert not (tmp_path / output).exists()


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_experiment_text_table_and_zeus_clis_refuse_cuda_without_writing(tmp_path, monkeypatch, capsys, no_cuda):
    from nnunet_mulmod.evaluation.experiments import main as experiment_main
    from nnunet_mulmod.text.cli import main as table_main
    from nnunet_mulmod.zeus import instruction_table, instructions

    monkeypatch.chdir(tmp_path)
    assert experiment_main(["mulmodseg_table6", "-d", "999", "-f", "0", "-o", str(tmp_path / "exp"),
                            "-device", "cuda"]) == 1
    assert capsys.readouterr().err.strip().startswith("ERROR: -device cuda: no CUDA GPU is usable")
    # a dry run only prints commands (for another machine): not refused
    assert experiment_main(["mulmodseg_table2", "-d", "999", "-f", "0", "--settings", "ct_ct", "nonsense",
                            "--dry_run", "-device", "cuda"]) == 1
    assert "no CUDA GPU" not in capsys.readouterr().err
    calls = ((table_main, ["--dataset_json", str(tmp_path / "dataset.json"), "--encoder", "onehot", "-o",
                           str(tmp_path / "t.pt"), "--device", "cuda"]),
             (instructions.main, ["-d", "999", "-o", str(tmp_path / "i.json"), "-device", "cuda"]),
             (instruction_table.main, ["-d", "999", "-e", "hf:x", "-o", str(tmp_path / "t.pt"), "-device", "cuda:1"]))
    for entry, argv in calls:
        with pytest.raises(SystemExit) as exit_info:
            entry(argv)
        assert exit_info.value.code == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "-device cuda" in err and "no CUDA GPU is usable" in err, err
    assert os.listdir(tmp_path) == []


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("tpu", "gpu", "cuda:x"):
        with pytest.raises(DeviceError, match="not one of cpu, cuda, cuda:N, mps"):
            resolve_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="no CUDA GPU is usable"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with one GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(DeviceError, match=r"has 1 CUDA GPU\(s\) \(cuda:0..cuda:0\).*CUDA_VISIBLE_DEVICES"):
        resolve_device("cuda:2")


def test_compile_fallback(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("nnUNet_compile", raising=False)
    assert compile_fallback(cpu) is None  # not set: nnU-Net's own default, nothing to say
    for value in ("f", "False", "0"):
        monkeypatch.setenv("nnUNet_compile", value)
        assert compile_fallback(cuda) is None and os.environ["nnUNet_compile"] == value
    monkeypatch.setenv("nnUNet_compile", "yes")  # nnU-Net silently reads anything but true/1/t as off
    assert "nnUNet_compile='yes' is neither on (true/1/t) nor off (false/0/f): nnU-Net reads it as off" in \
        compile_fallback(cuda)
    for value in ("1", "True", "t"):  # on a CPU: nnU-Net's trainer fallback, applied to the predictor as well
        monkeypatch.setenv("nnUNet_compile", value)
        note = compile_fallback(cpu)
        assert note.startswith("INFO: torch.compile disabled because device is cpu") and "uncompiled" in note
        assert os.environ["nnUNet_compile"] == "f"
    # CUDA without what inductor needs, and with it (faked: no GPU in these tests)
    monkeypatch.setattr(devices.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 1))
    monkeypatch.setenv("nnUNet_compile", "1")
    assert "compute capability 6.1" in compile_fallback(cuda) and os.environ["nnUNet_compile"] == "f"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setenv("nnUNet_compile", "1")
    assert compile_fallback(cuda) is None and os.environ["nnUNet_compile"] == "1"  # a supported GPU: compiles
    monkeypatch.setattr(devices.importlib.util, "find_spec", lambda name: None)
    assert "triton is not installed" in compile_fallback(cuda) and os.environ["nnUNet_compile"] == "f"
