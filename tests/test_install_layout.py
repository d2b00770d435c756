"""The namespaced install: evaluation/, dataset_conversion/ and plans_extensions/ (repository folders) are
installed as nnunet_mulmod.evaluation / .dataset_conversion / .plans_extensions (setup.py package_dir), never as
top-level packages that a working folder or another distribution of the same name could shadow.

Each check runs in a fresh interpreter with its working directory outside the repository (a folder on
``sys.path`` first, as for any ``python -c`` / console script started there).
"""
import json
import os
import subprocess
import sys
from importlib import metadata

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = ("evaluation", "dataset_conversion", "plans_extensions")


def run_python(code: str, cwd, env=None) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=str(cwd), capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def editable_install_of_this_checkout() -> bool:
    # every copy of the metadata: the checkout's own nnunet_mulmod.egg-info (on sys.path here) has no direct_url
    for dist in metadata.distributions(name="nnunet-mulmod"):
        info = json.loads(dist.read_text("direct_url.json") or "{}")
        url = info.get("url", "")
        if info.get("dir_info", {}).get("editable") and \
                os.path.realpath(url.removeprefix("file://")) == os.path.realpath(REPO):
            return True
    return False


def test_subpackages_resolve_to_the_repository_folders(tmp_path):
    out = run_python(f"""
import importlib
for folder in {FOLDERS!r}:
    print(importlib.import_module("nnunet_mulmod." + folder).__file__)
""", tmp_path)
    assert out.split() == [os.path.join(REPO, f, "__init__.py") for f in FOLDERS]


@pytest.mark.skipif(not editable_install_of_this_checkout(),
                    reason="needs this checkout installed with pip install -e (the README's test command)")
def test_editable_install_maps_the_subpackages_itself(tmp_path):
    """setuptools' editable finder (not only the checkout fallback in nnunet_mulmod/_checkout_layout.py) maps
    nnunet_mulmod.<folder> to the repository folders: setup.py's package_dir is right for editable installs."""
    out = run_python(f"""
import importlib, sys
from nnunet_mulmod import _checkout_layout
sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _checkout_layout.CheckoutSubpackageFinder)]
for folder in {FOLDERS!r}:
    print(importlib.import_module("nnunet_mulmod." + folder).__file__)
""", tmp_path)
    assert out.split() == [os.path.join(REPO, f, "__init__.py") for f in FOLDERS]


def test_a_working_folder_named_evaluation_does_not_shadow_ours(tmp_path):
    """A folder with its own evaluation/ package (compare.py included, as in many ML repositories) is first on
    sys.path. Our modules, the trainer module that nnU-Net's trainer search imports and an experiment trainer
    found by that search all stay ours; the folder's package is never imported."""
    shadow = tmp_path / "evaluation"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise SystemExit('the working folder\\'s evaluation/ was imported')\n")
    (shadow / "compare.py").write_text("raise SystemExit('the working folder\\'s evaluation.compare was imported')\n")
    trainer_folder = tmp_path / "experiment_trainers"
    env = {**os.environ, "nnUNet_extTrainer": str(trainer_folder)}  # the start-up hook appends ours
    out = run_python(f"""
import json, os, sys
import nnunet_mulmod.evaluation.compare as compare
import nnunet_mulmod.evaluation.experiments as experiments
from nnunet_mulmod.training import experiment_trainers
experiment_trainers.write_trainer_folder({str(trainer_folder)!r},
    {{"nnUNetTrainer_2epochs_layout": {{"base": "nnUNetTrainer", "num_epochs": 2}}}})
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
made = recursive_find_trainer_class_by_name("nnUNetTrainer_2epochs_layout")
ours = recursive_find_trainer_class_by_name("nnUNetTrainerMulModSeg")
print(json.dumps({{"compare": compare.__file__, "experiments": experiments.__file__,
                  "experiment_trainers": experiment_trainers.__file__, "made": made.__name__,
                  "ours": ours.__module__, "shadow_loaded": "evaluation" in sys.modules}}))
""", tmp_path, env=env)
    result = json.loads(out.strip().splitlines()[-1])
    import nnunet_mulmod
    package = os.path.dirname(os.path.abspath(nnunet_mulmod.__file__))
    assert result["compare"] == os.path.join(REPO, "evaluation", "compare.py")
    assert result["experiments"] == os.path.join(REPO, "evaluation", "experiments.py")
    assert result["experiment_trainers"] == os.path.join(package, "training", "experiment_trainers.py")
    assert result["made"] == "nnUNetTrainer_2epochs_layout"
    assert result["ours"] == "nnunet_mulmod.training.mulmodseg"
    assert not result["shadow_loaded"]


def test_top_level_names_are_not_installed(tmp_path):
    """Outside the repository (which has the folders at its root) the old top-level names do not exist."""
    env = dict(os.environ)
    # a checkout on PYTHONPATH puts its root folders on sys.path: drop it, the installed package is what counts
    env["PYTHONPATH"] = os.pathsep.join(p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                        if p and os.path.realpath(p) != os.path.realpath(REPO))
    out = run_python(f"""
import importlib.util
for name in {FOLDERS!r}:
    spec = importlib.util.find_spec(name)
    print(name, spec.origin if spec else None)
""", tmp_path, env=env)
    found = [line for line in out.splitlines() if not line.endswith(" None")]
    assert not found, (f"top-level packages importable outside the repository: {found}. An install made before "
                       f"the namespaced layout? Reinstall: pip install -e .")
