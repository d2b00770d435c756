"""Every place where nnunet-mulmod reaches into nnU-Net: the names it depends on, and the one way each is touched.

nnU-Net v2 has no plug-in mechanism. It finds trainers through ``nnUNet_extTrainer``, and normalizers and
preprocessors only by name inside its own modules, in every spawned worker. Everything this package does to
nnU-Net beyond subclassing is in this module:

- :data:`SEAMS`, the nnU-Net modules and attributes we depend on (checked against :data:`CHECKED_NNUNET_VERSION`;
  ``tests/test_nnunet_integration.py`` asserts they all exist in the installed nnU-Net) and
  :func:`missing_seams`, which lists those that moved;
- the registration of the trainer folder in ``nnUNet_extTrainer`` (:func:`register_trainer_folder`);
- the registration of our normalizers (channel names ``CT_or_MR`` / ``CT_or_MR_code``) and of
  ``MulModPreprocessor``: :func:`register_preprocessing` for a loaded nnU-Net, and :func:`install_import_hook`, a
  ``sys.meta_path`` finder that registers them right after nnU-Net executes the modules concerned;
- the predictor hook that gives each case its modality (:func:`install_predictor_hook`; what it does with a case is
  nnunet_mulmod/inference/modality_selection.py);
- the per-validation dataset class (:func:`dataset_class_calling_on_load`).

:func:`install` does all of it, explicitly and idempotently. It is called by the trainers (``initialize`` and
MulModSeg's ``build_network_architecture``, which ``nnUNetv2_predict`` calls before it predicts), by
``nnunet_mulmod_predict`` and by ``set_prediction_modality``. ``nnUNetv2_plan_and_preprocess`` and the spawned
preprocessing workers of ``nnUNetv2_predict`` run no code of ours: the only way in is the start-up file
``nnunet_mulmod.pth`` (``_autoregister``), which calls :func:`install_at_startup` in every interpreter:
the trainer folder and the import hook, nothing imported (this module imports only ``os``, ``sys`` and
``importlib`` at the top). ``NNUNET_MULMOD_NO_AUTOREGISTER=1`` switches the start-up part off; a ``CT_or_MR``
channel is then z-scored by nnU-Net as any unknown name is (the documented opt-out).

Self-check: when a seam moved, registration raises :class:`NnUNetSeamError` naming the nnU-Net module and attribute
(from :func:`install`), and a ``CT_or_MR`` channel that nnU-Net plans without our normalizer in its lookup fails
with that error instead of getting nnU-Net's silent z-score (:func:`_guard_channel_lookup`).
"""
from __future__ import annotations

import functools
import importlib
import os
import sys
from typing import Callable, List, NamedTuple, Optional

CHECKED_NNUNET_VERSION = "2.8.1"
NO_AUTOREGISTER_ENV = "NNUNET_MULMOD_NO_AUTOREGISTER"
TRAINER_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nnunet_trainers")

# nnU-Net's modules we touch
NORMALIZATION_SCHEMES_MODULE = "nnunetv2.preprocessing.normalization.default_normalization_schemes"
CHANNEL_MAP_MODULE = "nnunetv2.preprocessing.normalization.map_channel_name_to_normalization"
PREPROCESSOR_MODULE = "nnunetv2.preprocessing.preprocessors.default_preprocessor"
PREDICTOR_MODULE = "nnunetv2.inference.predict_from_raw_data"
TRAINER_MODULE = "nnunetv2.training.nnUNetTrainer.nnUNetTrainer"
DATASET_MODULE = "nnunetv2.training.dataloading.nnunet_dataset"
FIND_TRAINER_MODULE = "nnunetv2.utilities.find_objects"
PLANS_MODULE = "nnunetv2.utilities.plans_handling.plans_handler"
PATHS_MODULE = "nnunetv2.paths"

# ours, registered into them (names, so that nothing is imported until nnU-Net asks)
INTENSITY_MODULE = "nnunet_mulmod.intensity"
MULMOD_PREPROCESSOR_MODULE = "nnunet_mulmod.plans_extensions.mulmod_preprocessor"
NORMALIZER_NAMES = ("MulModIntensityNormalization", "MulModCodeIntensityNormalization")
PREPROCESSOR_NAMES = ("MulModPreprocessor",)
# channel name (nnU-Net matches case-insensitively) -> normalizer class name
CHANNEL_NAME_TO_NORMALIZER = {"ct_or_mr": "MulModIntensityNormalization",
                              "ct_or_mr_code": "MulModCodeIntensityNormalization"}


class Seam(NamedTuple):
    module: str
    attribute: str  # dotted below the module ("nnUNetPredictor.predict_single_npy_array"); "self.x": set in the code
    use: str


SEAMS = (
    Seam(PATHS_MODULE, "nnUNet_extTrainer", "folders nnU-Net's trainer search scans: we add nnunet_trainers/"),
    Seam(FIND_TRAINER_MODULE, "recursive_find_trainer_class_by_name",
         "-tr NAME and checkpoint['trainer_name'] -> our class (asks our modules for schedule names)"),
    Seam(NORMALIZATION_SCHEMES_MODULE, "ImageNormalization", "base class of our normalizers"),
    Seam(NORMALIZATION_SCHEMES_MODULE, "ZScoreNormalization", "what a CT_or_MR channel gets if we are not registered"),
    Seam(CHANNEL_MAP_MODULE, "channel_name_to_normalization_mapping", "we add ct_or_mr, ct_or_mr_code"),
    Seam(CHANNEL_MAP_MODULE, "get_normalization_scheme", "the planner's channel-name lookup (guarded if the map moved)"),
    Seam(PREPROCESSOR_MODULE, "DefaultPreprocessor", "MulModPreprocessor's base; our normalizers and preprocessor "
         "are looked up by name in this package (recursive_find_python_class), so they are placed in these modules"),
    Seam(PREPROCESSOR_MODULE, "DefaultPreprocessor.run_case", "MulModPreprocessor reads the case id from the files"),
    Seam(PREPROCESSOR_MODULE, "DefaultPreprocessor._normalize", "MulModPreprocessor normalises per case"),
    Seam(PLANS_MODULE, "ConfigurationManager.normalization_schemes", "the plans' normalizer names per channel"),
    Seam(PLANS_MODULE, "ConfigurationManager.network_arch_class_name", "named in the backbone errors"),
    Seam(PREDICTOR_MODULE, "nnUNetPredictor.initialize_from_trained_model_folder",
         "calls trainer_class.build_network_architecture (which installs the predictor hook)"),
    Seam(PREDICTOR_MODULE, "nnUNetPredictor.predict_logits_from_preprocessed_data",
         "wrapped: every prediction path calls it once per case; selects the case's modality"),
    Seam(PREDICTOR_MODULE, "nnUNetPredictor.predict_from_data_iterator", "wrapped: queues the cases' names"),
    Seam(PREDICTOR_MODULE, "nnUNetPredictor.predict_from_files_sequential", "wrapped: queues the cases' names"),
    Seam(PREDICTOR_MODULE, "nnUNetPredictor._manage_input_and_output_lists",
         "wrapped per call by the sequential path: its result orders the cases"),
    Seam(PREDICTOR_MODULE, "nnUNetPredictor.predict_single_npy_array", "wrapped: its output_file_truncated names the case"),
    # nnUNetTrainer's hooks our trainers override: renamed, an override would silently stop being called
    *(Seam(TRAINER_MODULE, f"nnUNetTrainer.{hook}", "overridden by our trainers") for hook in (
        "build_network_architecture", "initialize", "do_split", "get_dataloaders", "train_step", "validation_step",
        "on_train_start", "on_train_epoch_start", "on_train_epoch_end", "on_train_end", "on_validation_epoch_end",
        "perform_actual_validation", "configure_rotation_dummyDA_mirroring_and_inital_patch_size")),
    Seam(TRAINER_MODULE, "self.inference_allowed_mirroring_axes",
         "None in the checkpoint: no test-time mirroring (left/right classes, training/mirroring.py)"),
    Seam(TRAINER_MODULE, "self.dataset_class", "the class perform_actual_validation loads each case with"),
    Seam(TRAINER_MODULE, "self.logger", "per-modality keys in my_fantastic_logging"),
    Seam(DATASET_MODULE, "infer_dataset_class", "the dataset class of a preprocessed folder"),
    Seam(DATASET_MODULE, "nnUNetBaseDataset.load_case", "called per validation case: the modality is selected there"),
)


class NnUNetSeamError(RuntimeError):
    """An nnU-Net module or attribute that nnunet-mulmod relies on is missing (nnU-Net changed)."""


def _installed_nnunet_version() -> str:
    try:
        from importlib.metadata import version
        return version("nnunetv2")
    except Exception:  # noqa: BLE001 (a version is only named in the message)
        return "unknown"


def seam_error(module: str, attribute: Optional[str], detail: str = "") -> NnUNetSeamError:
    where = f"{module}.{attribute}" if attribute else module
    return NnUNetSeamError(
        f"nnunet-mulmod relies on {where}, which the installed nnU-Net {_installed_nnunet_version()} does not have"
        f"{': ' + detail if detail else ''} (checked against nnunetv2 {CHECKED_NNUNET_VERSION}; see the seams table "
        f"in nnunet_mulmod/nnunet_integration.py and docs/architecture.md). Install nnunetv2=={CHECKED_NNUNET_VERSION}.")


def resolve(seam: Seam):
    """The object a seam names; NnUNetSeamError if its module or attribute is missing."""
    try:
        module = importlib.import_module(seam.module)
    except ImportError as e:
        raise seam_error(seam.module, None, str(e)) from None
    if seam.attribute.startswith("self."):  # an instance attribute: set somewhere in the module's code
        import inspect
        if seam.attribute not in inspect.getsource(module):
            raise seam_error(seam.module, seam.attribute, "no longer set in the module's code")
        return module
    value = module
    for part in seam.attribute.split("."):
        if not hasattr(value, part):
            raise seam_error(seam.module, seam.attribute)
        value = getattr(value, part)
    return value


def missing_seams() -> List[str]:
    """The error of every seam that is missing from the installed nnU-Net (empty when all are there)."""
    missing = []
    for seam in SEAMS:
        try:
            resolve(seam)
        except NnUNetSeamError as e:
            missing.append(str(e))
    return missing


# ---------------------------------------------------------------------------------------------- trainer folder
def register_trainer_folder(environ=os.environ) -> None:
    """Appends nnunet_mulmod/nnunet_trainers to ``nnUNet_extTrainer``, keeping what the user set."""
    current = [p for p in environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if TRAINER_FOLDER not in current:
        environ["nnUNet_extTrainer"] = os.pathsep.join(current + [TRAINER_FOLDER])


# ---------------------------------------------------------------------------------------------- preprocessing
def _lazy_class_lookup(module, names, owner: str) -> None:
    """Lets ``hasattr``/``getattr`` on the nnU-Net module find our classes, importing ``owner`` on first use.

    nnU-Net looks classes up by name (``recursive_find_python_class``); a module-level ``__getattr__`` answers for the
    names it does not have. Nothing of ours is imported while nnU-Net's module is still loading (our class modules
    import that very module: this is what keeps the registration free of import cycles)."""
    previous = module.__dict__.get("__getattr__")
    if getattr(previous, "_mulmod_names", None) == tuple(names):
        return

    def __getattr__(name):
        if name in names:
            cls = getattr(importlib.import_module(owner), name)
            setattr(module, name, cls)
            return cls
        if previous is not None:
            return previous(name)
        raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}")

    __getattr__._mulmod_names = tuple(names)
    module.__getattr__ = __getattr__


def _register_channel_names(module) -> None:
    mapping = getattr(module, "channel_name_to_normalization_mapping", None)
    if not isinstance(mapping, dict):
        _guard_channel_lookup(module)
        raise seam_error(module.__name__, "channel_name_to_normalization_mapping")
    intensity = importlib.import_module(INTENSITY_MODULE)
    for key, name in CHANNEL_NAME_TO_NORMALIZER.items():
        mapping.setdefault(key, getattr(intensity, name))


def _guard_channel_lookup(module) -> None:
    """Replaces the module's ``get_normalization_scheme`` by one that refuses our channel names: planning a
    ``CT_or_MR`` channel then fails, naming what moved, instead of z-scoring CT and MR alike."""
    original = getattr(module, "get_normalization_scheme", None)
    if original is None or getattr(original, "_mulmod_guard", False):
        return

    @functools.wraps(original)
    def get_normalization_scheme(channel_name: str, *args, **kwargs):
        if channel_name.casefold() in CHANNEL_NAME_TO_NORMALIZER:
            raise seam_error(module.__name__, "channel_name_to_normalization_mapping",
                             f"cannot register the normalizer of channel {channel_name!r}")
        return original(channel_name, *args, **kwargs)

    get_normalization_scheme._mulmod_guard = True
    module.get_normalization_scheme = get_normalization_scheme


def _register_into(module) -> None:
    """Registers what belongs into one of nnU-Net's lookup modules (idempotent)."""
    name = module.__name__
    if name == NORMALIZATION_SCHEMES_MODULE:
        _lazy_class_lookup(module, NORMALIZER_NAMES, INTENSITY_MODULE)
    elif name == CHANNEL_MAP_MODULE:
        _register_channel_names(module)
    elif name == PREPROCESSOR_MODULE:
        _lazy_class_lookup(module, PREPROCESSOR_NAMES, MULMOD_PREPROCESSOR_MODULE)


HOOKED_MODULES = (NORMALIZATION_SCHEMES_MODULE, CHANNEL_MAP_MODULE, PREPROCESSOR_MODULE)


def check_preprocessing_registered() -> None:
    """NnUNetSeamError unless nnU-Net's own lookups now return our normalizers and preprocessor."""
    lookup = resolve(Seam(CHANNEL_MAP_MODULE, "get_normalization_scheme", ""))
    for channel, cls_name in CHANNEL_NAME_TO_NORMALIZER.items():
        found = lookup(channel.upper())
        if getattr(found, "__name__", None) != cls_name:
            raise seam_error(CHANNEL_MAP_MODULE, "get_normalization_scheme",
                             f"channel {channel!r} gives {getattr(found, '__name__', found)}, not {cls_name}")
    for module_name, names in ((NORMALIZATION_SCHEMES_MODULE, NORMALIZER_NAMES),
                               (PREPROCESSOR_MODULE, PREPROCESSOR_NAMES)):
        module = importlib.import_module(module_name)
        for cls_name in names:
            if not hasattr(module, cls_name):
                raise seam_error(module_name, cls_name, "registration did not take")


def register_preprocessing() -> None:
    """Registers our normalizers and preprocessor with nnU-Net in this process (idempotent) and checks that
    nnU-Net's lookups find them; NnUNetSeamError naming the module/attribute otherwise."""
    for name in HOOKED_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            raise seam_error(name, None, str(e)) from None
        _register_into(module)
    check_preprocessing_registered()


class _CallbackLoader:
    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):  # get_source, get_filename, ... for tracebacks and inspect
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        try:
            _register_into(module)
        except Exception as e:  # noqa: BLE001 -- a failure must not break nnU-Net's import for datasets without us
            print(f"nnunet_mulmod: could not register the MulModSeg intensity normalization with {module.__name__} "
                  f"({type(e).__name__}: {e}); planning or predicting a 'CT_or_MR' channel will fail.",
                  file=sys.stderr)


class NnUNetPostImportFinder:
    """sys.meta_path entry: finds the hooked modules with the other finders and wraps their loader. Recognised by
    the marker, not the class: a re-imported copy of this module must neither add a second one nor ask it."""

    _nnunet_mulmod_finder = True

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in HOOKED_MODULES:
            return None
        for finder in sys.meta_path:
            if getattr(finder, "_nnunet_mulmod_finder", False) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _CallbackLoader(spec.loader)
                return spec
        return None


def install_import_hook() -> None:
    """Registers with each hooked nnU-Net module right after nnU-Net executes it (and with those already loaded)."""
    if not any(getattr(f, "_nnunet_mulmod_finder", False) for f in sys.meta_path):
        sys.meta_path.insert(0, NnUNetPostImportFinder())
    for name in HOOKED_MODULES:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__spec__", None) is not None \
                and not getattr(module.__spec__, "_initializing", False):
            _register_into(module)


# ---------------------------------------------------------------------------------------------- predictor
def install_predictor_hook() -> None:
    """Wraps the nnUNetPredictor methods through which a case reaches the network; what the wrappers do with a
    MulModSeg network is nnunet_mulmod/inference/modality_selection.py (other networks pass through untouched)."""
    predictor_class = resolve(Seam(PREDICTOR_MODULE, "nnUNetPredictor", ""))
    if getattr(predictor_class.predict_logits_from_preprocessed_data, "_mulmod_hook", False):
        return
    for seam in SEAMS:
        if seam.module == PREDICTOR_MODULE:
            resolve(seam)
    from nnunet_mulmod.inference import modality_selection as selection

    original_logits = predictor_class.predict_logits_from_preprocessed_data
    original_iterator = predictor_class.predict_from_data_iterator
    original_sequential = predictor_class.predict_from_files_sequential
    original_single = predictor_class.predict_single_npy_array

    @functools.wraps(original_logits)
    def predict_logits_from_preprocessed_data(self, data):
        network = selection.mulmod_network(self)
        if network is None:
            return original_logits(self, data)
        return selection.predict_case_with_its_modality(self, network, lambda d: original_logits(self, d), data)

    @functools.wraps(original_iterator)
    def predict_from_data_iterator(self, data_iterator, *args, **kwargs):
        if selection.mulmod_network(self) is None:
            return original_iterator(self, data_iterator, *args, **kwargs)
        with selection.pending_cases_cleared(self):
            return original_iterator(self, selection.queue_cases_of_data_iterator(self, data_iterator), *args,
                                     **kwargs)

    @functools.wraps(original_sequential)
    def predict_from_files_sequential(self, *args, **kwargs):
        # nnUNetv2_predict -npp 0 -nps 0: one loop over the cases, no iterator; the case order is the one
        # _manage_input_and_output_lists returns, so the names are queued from its result
        if selection.mulmod_network(self) is None:
            return original_sequential(self, *args, **kwargs)
        manage = self._manage_input_and_output_lists

        def manage_and_queue(*margs, **mkwargs):
            inputs, outputs, segs = manage(*margs, **mkwargs)
            selection.queue_cases_of_file_lists(self, inputs, outputs)
            return inputs, outputs, segs

        with selection.pending_cases_cleared(self):
            self._manage_input_and_output_lists = manage_and_queue
            try:
                return original_sequential(self, *args, **kwargs)
            finally:
                del self._manage_input_and_output_lists

    @functools.wraps(original_single)
    def predict_single_npy_array(self, input_image, image_properties, segmentation_previous_stage=None,
                                 output_file_truncated=None, *args, **kwargs):
        if selection.mulmod_network(self) is None:
            return original_single(self, input_image, image_properties, segmentation_previous_stage,
                                   output_file_truncated, *args, **kwargs)
        with selection.pending_cases_cleared(self):
            selection.queue_case(self, selection.case_id_from_output_file(output_file_truncated))
            return original_single(self, input_image, image_properties, segmentation_previous_stage,
                                   output_file_truncated, *args, **kwargs)

    for wrapper in (predict_logits_from_preprocessed_data, predict_from_data_iterator, predict_from_files_sequential,
                    predict_single_npy_array):
        wrapper._mulmod_hook = True
        setattr(predictor_class, wrapper.__name__, wrapper)


def predictor_hook_installed() -> bool:
    module = sys.modules.get(PREDICTOR_MODULE)
    predictor_class = getattr(module, "nnUNetPredictor", None)
    return predictor_class is not None and \
        getattr(predictor_class.predict_logits_from_preprocessed_data, "_mulmod_hook", False)


# ---------------------------------------------------------------------------------------------- validation
def dataset_class_calling_on_load(dataset_class: type, on_load: Callable[[str], None]) -> type:
    """A subclass of nnU-Net's dataset class whose ``load_case(identifier)`` calls ``on_load(identifier)`` after
    loading: ``perform_actual_validation`` loads each validation case with it right before predicting it."""

    class DatasetSelectingModality(dataset_class):
        def load_case(self, identifier):
            loaded = super().load_case(identifier)
            on_load(identifier)
            return loaded

    return DatasetSelectingModality


# ---------------------------------------------------------------------------------------------- entry points
def install() -> None:
    """All of the above in this process (idempotent): trainer folder, normalizers and preprocessor (checked), the
    import hook for nnU-Net modules loaded later, the predictor hook."""
    register_trainer_folder()
    install_import_hook()
    register_preprocessing()
    install_predictor_hook()


def install_at_startup(environ=os.environ) -> None:
    """What ``nnunet_mulmod.pth`` runs in every interpreter: only what imports nothing (see module docstring)."""
    if environ.get(NO_AUTOREGISTER_ENV):
        return
    register_trainer_folder(environ)
    install_import_hook()
