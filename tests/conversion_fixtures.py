"""Helpers shared by the converter tests (tests/test_conversion_*.py, tests/test_plans_variants.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BIN = Path(sys.executable).parent


def shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real sample data not available: {path} is missing (tests read ../shared/data next to the repo)")
    return path


@pytest.fixture
def nnunet_env(tmp_path, monkeypatch) -> Dict[str, str]:
    """nnUNet_raw/preprocessed/results in tmp_path, for this process and for subprocesses."""
    env = dict(os.environ)
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        folder = tmp_path / var
        folder.mkdir()
        monkeypatch.setenv(var, str(folder))
        env[var] = str(folder)
    env["nnUNet_def_n_proc"] = "1"
    return env


def run_cli(args: Sequence[str], env: Dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    """Runs a console script of the venv as a user would."""
    command = [str(BIN / args[0]), *map(str, args[1:])]
    result = subprocess.run(command, env=env, capture_output=True, text=True, encoding="utf-8",
                            errors="replace", timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def write_volume(path, array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None) -> None:
    """array in numpy (z, y, x) order, spacing/origin in (x, y, z) like SimpleITK."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    if direction is not None:
        image.SetDirection(direction)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)


def synthetic_pair(seed: int, shape=(8, 32, 32), labels: Sequence[int] = (1, 2), modality: str = "CT"):
    """A small image (HU-like CT with air, or positive MR) and a label map with one box per label value."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, dtype=np.uint8)
    for i, value in enumerate(labels):
        z0, y0, x0 = 1 + i % 3, 4 + 6 * i % 20, 4 + 5 * i % 20
        label[z0:z0 + 4, y0:y0 + 6, x0:x0 + 6] = value
    if modality == "CT":
        image = np.full(shape, -1000, dtype=np.int16)
        image[:, 4:-4, 4:-4] = 40
        image = image + rng.integers(-20, 20, shape).astype(np.int16)
    else:
        image = (rng.random(shape) * 300 + 20).astype(np.int16)
    return image, label


def read_json(path) -> dict:
    with open(path) as f:
        return json.load(f)


def read_array(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


class _InProcessPool:
    """Stands in for multiprocessing's spawn pool: the same checks without a worker start-up per call."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def starmap(self, fn, iterable):
        return [fn(*args) for args in iterable]


class _InProcessMultiprocessing:
    @staticmethod
    def get_context(*args):
        return _InProcessMultiprocessing

    Pool = _InProcessPool


def verify_with_nnunet(folder) -> None:
    """nnU-Net's own dataset check (the function behind --verify_dataset_integrity), run in this process."""
    import nnunetv2.experiment_planning.verify_dataset_integrity as verify
    original = verify.multiprocessing
    verify.multiprocessing = _InProcessMultiprocessing
    try:
        verify.verify_dataset_integrity(str(folder), num_processes=1)
    finally:
        verify.multiprocessing = original


def case_files(folder, sub: str) -> List[str]:
    return sorted(p.name for p in (Path(folder) / sub).glob("*.nii.gz"))


def truncate(path) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
