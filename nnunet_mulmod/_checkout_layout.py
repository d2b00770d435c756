"""``nnunet_mulmod.evaluation`` / ``.dataset_conversion`` / ``.plans_extensions`` when run from a checkout as is.

The three folders sit at the repository root, beside ``nnunet_mulmod/``; setup.py installs them as subpackages of
``nnunet_mulmod`` (``package_dir``; setuptools' editable finder maps them the same way). Used straight from a
checkout without that mapping (``PYTHONPATH=<checkout>``, or beside an editable install of another checkout,
whose finder would map them to that other tree), this finder resolves them to this checkout's own folders. An
installed copy (no ``setup.py`` beside the package) is left alone. Runs at every interpreter start (through
``nnunet_mulmod/__init__.py``): ``os``, ``sys`` and ``importlib`` only.
"""
import os
import sys

SUBPACKAGE_FOLDERS = ("evaluation", "dataset_conversion", "plans_extensions")  # as in setup.py


class CheckoutSubpackageFinder:
    """A meta path finder for ``nnunet_mulmod.<folder>`` (the folder's submodules then follow its ``__path__``)."""

    def __init__(self, root: str):
        self.root = root
        self.names = {f"nnunet_mulmod.{folder}": os.path.join(root, folder) for folder in SUBPACKAGE_FOLDERS}

    def find_spec(self, fullname, path=None, target=None):
        folder = self.names.get(fullname)
        if folder is None:
            return None
        from importlib.util import spec_from_file_location
        return spec_from_file_location(fullname, os.path.join(folder, "__init__.py"),
                                       submodule_search_locations=[folder])


def install(package_file: str) -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(package_file)))
    if not (os.path.isfile(os.path.join(root, "setup.py"))
            and all(os.path.isfile(os.path.join(root, f, "__init__.py")) for f in SUBPACKAGE_FOLDERS)):
        return
    if not any(isinstance(f, CheckoutSubpackageFinder) and f.root == root for f in sys.meta_path):
        sys.meta_path.insert(0, CheckoutSubpackageFinder(root))
