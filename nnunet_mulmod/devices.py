"""Device and torch.compile options of our entry points, checked before anything runs or is written.

nnU-Net takes ``-device cuda|cpu|mps`` on trust: asked for CUDA on a machine without it, nnUNetv2_predict fails
with a traceback when the network is moved to the GPU, nnUNetv2_train likewise once its trainer builds the
network; ``-num_gpus`` is nnUNetv2_train's own (nothing of ours runs before it). Our CLIs (nnunet_mulmod_predict, _demo,
_experiment, _build_text_table, the Zeus instruction tools) call ``resolve_device`` first: a device that is not
there is refused with one line (DeviceError; nnU-Net has no CPU fallback for an explicit ``-device cuda`` either,
and a silent fallback would turn a GPU run into a days-long CPU run).

``nnUNet_compile`` is read by nnU-Net as on for ``true/1/t`` (any case), off for anything else, default on in
the trainer (GPU only: its ``_do_i_compile`` switches compile off on CPU and mps, logging one INFO line) and off
in the predictor (which compiles on any device when asked). ``compile_fallback`` applies the trainer's rule to
the process our CLI runs in: compile asked for where inductor cannot run it (CPU, mps, a CUDA GPU below compute
capability 7.0 or no triton) is switched off with one line; a value nnU-Net would read as off without saying so
(e.g. "yes", "on") is named.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Optional

import torch

COMPILE_ON = ("true", "1", "t")  # exactly what nnU-Net's trainer and predictor accept
COMPILE_OFF = ("false", "0", "f")
DEVICE_TYPES = ("cpu", "cuda", "mps")  # nnU-Net's -device choices


class DeviceError(ValueError):
    """A device option this machine cannot serve (the message is one line: what was asked, what is there)."""


def resolve_device(name: str) -> torch.device:
    """'cpu' | 'cuda' | 'cuda:N' | 'mps' -> torch.device, or DeviceError when this machine does not have it."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise DeviceError(f"-device {name!r} is not one of cpu, cuda, cuda:N, mps (nnU-Net's devices).")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = f"torch {torch.__version__}, built for CUDA {torch.version.cuda}" if torch.version.cuda else \
                f"torch {torch.__version__} is a CPU-only build"
            raise DeviceError(f"-device {name}: no CUDA GPU is usable on this machine ({built}); "
                              f"use -device cpu.")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(f"-device {name}: this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1}); "
                              f"select one with CUDA_VISIBLE_DEVICES, as nnU-Net asks.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"-device mps: Apple's MPS backend is not available on this machine; use -device cpu.")
    return device


def compile_fallback(device: torch.device) -> Optional[str]:
    """Reads ``nnUNet_compile`` for a run on ``device``; switches it off in this process's environment where
    torch.compile cannot run there. -> the one line to print, or None when there is nothing to say."""
    value = os.environ.get("nnUNet_compile")
    if value is None:
        return None
    if value.lower() not in COMPILE_ON + COMPILE_OFF:
        return (f"nnUNet_compile={value!r} is neither on ({'/'.join(COMPILE_ON)}) nor off "
                f"({'/'.join(COMPILE_OFF)}): nnU-Net reads it as off.")
    if value.lower() in COMPILE_OFF:
        return None
    reason = None
    if device.type != "cuda":
        reason = f"device is {device.type} (nnU-Net's trainer compiles on CUDA only)"
    elif importlib.util.find_spec("triton") is None:
        reason = "triton is not installed (inductor, the default backend, needs it on CUDA)"
    else:
        capability = torch.cuda.get_device_capability(device)
        if capability < (7, 0):
            reason = (f"this GPU has compute capability {capability[0]}.{capability[1]}; inductor's triton "
                      f"kernels need 7.0 or newer")
    if reason is None:
        return None
    os.environ["nnUNet_compile"] = "f"  # nnU-Net's fallback: run uncompiled
    return f"INFO: torch.compile disabled because {reason}; running uncompiled (nnUNet_compile={value!r} ignored)."
