"""nnunet_mulmod/nnunet_integration.py: the one module that touches nnU-Net. Its seams table matches the installed
nnU-Net; registration is explicit and idempotent; a moved seam fails loudly, naming it; every module of the
package imports on its own (no import cycles, no registration as an import side effect)."""
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from nnunet_mulmod import nnunet_integration as integration

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nnunet_mulmod", "plans_extensions", "dataset_conversion", "evaluation")


def package_modules():
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_seam_exists_in_the_installed_nnunet():
    assert integration.missing_seams() == []
    for seam in integration.SEAMS:
        assert integration.resolve(seam) is not None
    # the names registered under are the classes' own
    from nnunet_mulmod.intensity import NORMALIZATION_CLASSES
    from nnunet_mulmod.plans_extensions.mulmod_preprocessor import MulModPreprocessor
    assert tuple(c.__name__ for c in NORMALIZATION_CLASSES) == integration.NORMALIZER_NAMES
    assert set(integration.CHANNEL_NAME_TO_NORMALIZER.values()) == set(integration.NORMALIZER_NAMES)
    assert (MulModPreprocessor.__name__,) == integration.PREPROCESSOR_NAMES


def test_a_missing_seam_is_named():
    with pytest.raises(integration.NnUNetSeamError, match=r"nnunetv2\.inference\.predict_from_raw_data\."
                                                          r"nnUNetPredictor\.no_such_method"):
        integration.resolve(integration.Seam(integration.PREDICTOR_MODULE, "nnUNetPredictor.no_such_method", ""))
    with pytest.raises(integration.NnUNetSeamError, match=r"nnunetv2\.no_such_module"):
        integration.resolve(integration.Seam("nnunetv2.no_such_module", "x", ""))


def test_a_moved_channel_map_fails_loudly_instead_of_z_scoring():
    """nnU-Net without ``channel_name_to_normalization_mapping``: registering names it, and the planner's lookup of
    a CT_or_MR channel raises instead of returning nnU-Net's z-score (other channel names are untouched)."""
    from nnunetv2.preprocessing.normalization import map_channel_name_to_normalization as real

    moved = types.ModuleType(integration.CHANNEL_MAP_MODULE)
    moved.get_normalization_scheme = real.get_normalization_scheme.__wrapped__ \
        if hasattr(real.get_normalization_scheme, "__wrapped__") else real.get_normalization_scheme
    with pytest.raises(integration.NnUNetSeamError, match="channel_name_to_normalization_mapping"):
        integration._register_into(moved)
    with pytest.raises(integration.NnUNetSeamError, match=r"map_channel_name_to_normalization\."
                                                          r"channel_name_to_normalization_mapping"):
        moved.get_normalization_scheme("CT_or_MR")
    assert moved.get_normalization_scheme("CT").__name__ == "CTNormalization"


def test_install_is_explicit_idempotent_and_checked(monkeypatch):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.preprocessing.normalization.map_channel_name_to_normalization import (
        channel_name_to_normalization_mapping, get_normalization_scheme)
    from nnunetv2.preprocessing.preprocessors import default_preprocessor

    integration.install()
    wrapped = nnUNetPredictor.predict_logits_from_preprocessed_data
    integration.install()
    assert nnUNetPredictor.predict_logits_from_preprocessed_data is wrapped  # not wrapped twice
    assert integration.predictor_hook_installed()
    assert get_normalization_scheme("CT_or_MR_code").__name__ == "MulModCodeIntensityNormalization"
    assert default_preprocessor.MulModPreprocessor.__module__ == "nnunet_mulmod.plans_extensions.mulmod_preprocessor"
    # the check runs nnU-Net's own lookup: a registration that did not take is an error naming it
    monkeypatch.delitem(channel_name_to_normalization_mapping, "ct_or_mr")
    monkeypatch.setattr(integration, "_register_channel_names", lambda module: None)
    with pytest.raises(integration.NnUNetSeamError, match="get_normalization_scheme.*ZScoreNormalization"):
        integration.register_preprocessing()


def test_registration_and_import_hook_in_fresh_interpreters():
    """Importing our class modules first (they import the nnU-Net modules they register into) and nnU-Net first both
    end registered; importing the trainer module installs no predictor hook (only install() does)."""
    env = {k: v for k, v in os.environ.items() if k != integration.NO_AUTOREGISTER_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    probes = [
        "import nnunet_mulmod.plans_extensions.mulmod_preprocessor, nnunet_mulmod.intensity",
        "import nnunet_mulmod.intensity",
        "import nnunetv2.preprocessing.preprocessors.default_preprocessor",
    ]
    check = ("; from nnunetv2.preprocessing.normalization.map_channel_name_to_normalization import "
             "get_normalization_scheme as g; from nnunetv2.preprocessing.preprocessors import default_preprocessor as d; "
             "from nnunetv2.preprocessing.normalization import default_normalization_schemes as s; "
             "assert g('CT_or_MR').__name__ == 'MulModIntensityNormalization'; "
             "assert d.MulModPreprocessor.__name__ == 'MulModPreprocessor'; "
             "assert s.MulModCodeIntensityNormalization.__name__ == 'MulModCodeIntensityNormalization'; "
             "import nnunet_mulmod.training.mulmodseg_trainer; from nnunet_mulmod import nnunet_integration as n; "
             "assert not n.predictor_hook_installed(); n.install(); assert n.predictor_hook_installed(); print('OK')")
    for probe in probes:
        out = subprocess.run([sys.executable, "-c", probe + check], env=env, capture_output=True, text=True)
        assert out.stdout.strip() == "OK", (probe, out.stderr[-3000:])


IMPORT_EACH = """
import importlib, sys, traceback
OURS = {ours!r}
baseline = set(sys.modules)
failed = []
for name in {names!r}:
    for loaded in [m for m in sys.modules if m.split('.')[0] in OURS or m.split('.')[0] == 'nnunetv2']:
        del sys.modules[loaded]  # a fresh import of our package and of nnU-Net for every module
    try:
        importlib.import_module(name)
    except BaseException:
        failed.append(name + ': ' + traceback.format_exc(limit=-3))
print('FAILED' if failed else 'OK')
print('\\n'.join(failed))
"""


def test_every_module_imports_on_its_own():
    """No import cycles: every module of the package imports first, in a fresh state (our modules and nnU-Net's
    evicted from sys.modules before each)."""
    names = package_modules()
    assert "nnunet_mulmod.nnunet_integration" in names and len(names) > 40
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [
        p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    out = subprocess.run([sys.executable, "-c", IMPORT_EACH.format(ours=PACKAGES, names=names)], env=env,
                         capture_output=True, text=True, cwd=str(ROOT))
    assert out.returncode == 0 and out.stdout.startswith("OK"), out.stdout[-8000:] + out.stderr[-3000:]


def test_startup_imports_nothing_heavy():
    env = {k: v for k, v in os.environ.items() if k != integration.NO_AUTOREGISTER_ENV}
    probe = ("import sys; heavy = [m for m in ('numpy', 'torch', 'nnunetv2') if m in sys.modules]; assert not heavy, heavy;"
             "import nnunet_mulmod.nnunet_integration as n; "
             "assert any(isinstance(f, n.NnUNetPostImportFinder) for f in sys.meta_path); "
             "import os; assert n.TRAINER_FOLDER in os.environ['nnUNet_extTrainer'].split(os.pathsep); print('OK')")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "OK", out.stderr[-3000:]
