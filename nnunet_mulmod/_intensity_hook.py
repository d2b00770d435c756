"""Start-up hook: lets nnU-Net's name lookups find nnunet_mulmod's normalizers and preprocessor.

nnU-Net looks normalizers and preprocessors up by name inside its own modules only, in every spawned worker.
This meta-path finder wraps the loader of three nnU-Net modules so that, right after nnU-Net executes them,
``nnunet_mulmod.intensity.on_nnunet_module_imported`` adds our classes to them (and our channel names to
nnU-Net's channel-name map). Nothing is imported until nnU-Net itself is: this module uses only ``sys`` and
``importlib`` and runs in every interpreter (see ``_autoregister``). A failure in the callback is reported
and never breaks nnU-Net's import.
"""
import importlib
import sys

HOOKED_MODULES = frozenset((
    "nnunetv2.preprocessing.normalization.default_normalization_schemes",
    "nnunetv2.preprocessing.normalization.map_channel_name_to_normalization",
    "nnunetv2.preprocessing.preprocessors.default_preprocessor",
))


class _CallbackLoader:
    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):  # get_source, get_filename, ... for tracebacks and inspect
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        pending = sys.modules.get("nnunet_mulmod.intensity")
        if pending is not None and not hasattr(pending, "on_nnunet_module_imported"):
            return  # nnunet_mulmod.intensity is being imported (it imports nnU-Net); it registers itself when done
        try:
            importlib.import_module("nnunet_mulmod.intensity").on_nnunet_module_imported(module)
        except Exception as e:  # never break nnU-Net because of us
            print(f"nnunet_mulmod: could not register the MulModSeg intensity normalization with "
                  f"{module.__name__} ({type(e).__name__}: {e}); datasets with channel name 'CT_or_MR' will fail "
                  f"to plan or preprocess.", file=sys.stderr)


class NnUNetPostImportFinder:
    """sys.meta_path entry: finds the hooked modules with the other finders and wraps their loader."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in HOOKED_MODULES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _CallbackLoader(spec.loader)
                return spec
        return None


def install() -> None:
    if not any(isinstance(f, NnUNetPostImportFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, NnUNetPostImportFinder())
