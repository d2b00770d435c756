"""Synthetic, unpaired CT and MR abdominal phantoms written as an nnU-Net raw dataset.

Each subject is a random abdomen: a body ellipse with a subcutaneous fat layer, a vertebra with
paraspinal muscles, liver, spleen and two kidneys as smoothly deformed ellipsoids (random position,
size and orientation per subject), and bowel-like soft-tissue blobs inside a visceral fat/soft-tissue
mixture. The same anatomy model is rendered either as

- CT: Hounsfield units (air -1000, fat about -100, muscle 50, liver 60, spleen 45, kidneys 30,
  bone 400+), with Gaussian noise; or as
- MR: a T2-like contrast in arbitrary non-negative units where the organ order is reversed
  (liver darkest, kidneys brightest, fat bright), multiplied by a smooth bias field, with Rician noise.

CT and MR cases are different subjects (unpaired), as in MulModSeg's setting. The organs are meant to be
learnable in minutes but not separable by a voxel threshold: their intensity ranges overlap with each
other and with the bowel blobs and muscle around them once noise is added, so a model has to use shape
and position (see ``tests/test_phantoms.py``, which checks this).

Everything is numpy/scipy; the writer uses SimpleITK and nnU-Net's own ``generate_dataset_json``.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy.ndimage import gaussian_filter

from nnunet_mulmod.modality import set_modalities

# Label map of the dataset (nnU-Net: consecutive integers, background 0).
LABELS: Dict[str, int] = {"background": 0, "liver": 1, "spleen": 2, "kidney_right": 3, "kidney_left": 4}

# The one image channel holds CT for some cases and MR for others. It must not be named "CT": nnU-Net
# picks CTNormalization for a channel called CT, which would clip and scale the MR cases with CT
# percentiles. Any other name gives per-image z-scoring (nnU-Net's AMOS converter does the same).
CHANNEL_NAME = "CT_or_MR"

DEFAULT_SHAPE_XYZ: Tuple[int, int, int] = (48, 40, 32)
DEFAULT_SPACING_XYZ: Tuple[float, float, float] = (6.5, 6.5, 7.0)  # mm, anisotropic like clinical scans

# Tissue codes of the anatomy map (organs use their label values 1..4).
AIR, SUBCUTANEOUS_FAT, VISCERA, MUSCLE, BONE, BOWEL = 10, 11, 12, 13, 14, 15

# Mean intensities per tissue. CT in HU; MR in arbitrary units before bias field and noise.
# The per-subject jitter below is added to these.
CT_MEAN_HU = {AIR: -1000.0, SUBCUTANEOUS_FAT: -100.0, MUSCLE: 50.0, BONE: 450.0,
              LABELS["liver"]: 60.0, LABELS["spleen"]: 45.0, LABELS["kidney_right"]: 30.0,
              LABELS["kidney_left"]: 30.0}
MR_MEAN = {AIR: 0.0, SUBCUTANEOUS_FAT: 600.0, MUSCLE: 160.0, BONE: 260.0,
           LABELS["liver"]: 250.0, LABELS["spleen"]: 420.0, LABELS["kidney_right"]: 520.0,
           LABELS["kidney_left"]: 520.0}
# Visceral background and bowel are mixtures: fat fraction f gives f * fat + (1 - f) * soft tissue.
CT_SOFT_TISSUE_HU, MR_SOFT_TISSUE = 40.0, 350.0
CT_NOISE_SD_HU = 12.0
MR_NOISE_SIGMA = 25.0


@dataclass
class Anatomy:
    """One subject's geometry on a voxel grid. Arrays are indexed [z, y, x] (SimpleITK's numpy order)."""
    tissue: np.ndarray           # int8: organ label values 1..4 or one of the tissue codes above
    label: np.ndarray            # uint8: the segmentation (organs only)
    fat_fraction: np.ndarray     # float32 in [0, 1]: fat content of VISCERA and BOWEL voxels
    spacing_xyz: Tuple[float, float, float]


@dataclass
class Phantom:
    image: np.ndarray            # float32 [z, y, x]: HU for CT, arbitrary non-negative units for MR
    label: np.ndarray            # uint8 [z, y, x]
    modality: str                # "CT" or "MR"
    spacing_xyz: Tuple[float, float, float]
    bias_field: Optional[np.ndarray] = None  # MR only: the multiplicative field that was applied


def _grid_mm(shape_xyz, spacing_xyz):
    """Voxel-centre coordinates in mm relative to the image centre, each array shaped [z, y, x]."""
    nx, ny, nz = shape_xyz
    sx, sy, sz = spacing_xyz
    z, y, x = np.meshgrid((np.arange(nz) - (nz - 1) / 2) * sz, (np.arange(ny) - (ny - 1) / 2) * sy,
                          (np.arange(nx) - (nx - 1) / 2) * sx, indexing="ij")
    return x, y, z


def _smooth_field(rng, shape_zyx, sigma_vox, spacing_xyz=None) -> np.ndarray:
    """Smooth random field with zero mean and unit standard deviation."""
    field = gaussian_filter(rng.standard_normal(shape_zyx), sigma_vox, mode="reflect")
    return ((field - field.mean()) / (field.std() + 1e-8)).astype(np.float32)


def _rotation(rng, max_degrees):
    """Random rotation: mostly in-plane (axial), a little out of plane, as organs lie in a patient."""
    yaw, pitch, roll = np.deg2rad(rng.uniform(-1, 1, 3) * np.array([max_degrees, max_degrees / 3, max_degrees / 3]))
    rz = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    ry = np.array([[np.cos(pitch), 0, np.sin(pitch)], [0, 1, 0], [-np.sin(pitch), 0, np.cos(pitch)]])
    rx = np.array([[1, 0, 0], [0, np.cos(roll), -np.sin(roll)], [0, np.sin(roll), np.cos(roll)]])
    return rz @ ry @ rx


def _deformed_ellipsoid(rng, xyz, centre_mm, semi_axes_mm, max_rotation_deg, deformation, shape_zyx):
    """Mask of an ellipsoid whose surface is pushed in and out by a smooth random field."""
    x, y, z = xyz
    rot = _rotation(rng, max_rotation_deg)
    d = np.stack([x - centre_mm[0], y - centre_mm[1], z - centre_mm[2]], axis=-1) @ rot  # body -> organ frame
    r = np.sqrt(((d / np.asarray(semi_axes_mm)) ** 2).sum(-1))
    return r + deformation * _smooth_field(rng, shape_zyx, sigma_vox=3.0) < 1.0


def make_anatomy(rng: np.random.Generator, shape_xyz: Sequence[int] = DEFAULT_SHAPE_XYZ,
                 spacing_xyz: Sequence[float] = DEFAULT_SPACING_XYZ) -> Anatomy:
    """A random abdomen. x runs to the patient's left, y to posterior, z to cranial (all in mm from the centre)."""
    shape_zyx = tuple(int(s) for s in shape_xyz[::-1])
    xyz = _grid_mm(shape_xyz, spacing_xyz)
    x, y, z = xyz
    fov_x = shape_xyz[0] * spacing_xyz[0]
    fov_y = shape_xyz[1] * spacing_xyz[1]

    def jitter(scale):  # a per-subject random offset
        return rng.uniform(-scale, scale)

    # Body: an elliptic cylinder with a wobbly outline, most of the field of view.
    body_a = fov_x * rng.uniform(0.40, 0.46)
    body_b = fov_y * rng.uniform(0.38, 0.45)
    body_r = np.sqrt((x / body_a) ** 2 + (y / body_b) ** 2) + 0.03 * _smooth_field(rng, shape_zyx, 4.0)
    body = body_r < 1.0
    fat_thickness = rng.uniform(0.08, 0.16)  # subcutaneous fat, as a fraction of the body radius
    inner = body_r < 1.0 - fat_thickness

    tissue = np.full(shape_zyx, AIR, dtype=np.int8)
    tissue[body] = SUBCUTANEOUS_FAT
    tissue[inner] = VISCERA

    # Posterior wall: vertebral body and paraspinal muscles (soft tissue next to the kidneys).
    spine_y = body_b * (1.0 - fat_thickness) - 40.0 + jitter(5)
    vertebra = (x ** 2 + (y - spine_y) ** 2) < (17.0 + jitter(3)) ** 2
    muscle = np.zeros(shape_zyx, bool)
    for side in (-1, 1):
        muscle |= ((x - side * 38.0) / 22.0) ** 2 + ((y - spine_y - 8.0) / 16.0) ** 2 \
            + 0.15 * _smooth_field(rng, shape_zyx, 3.0) < 1.0
    tissue[muscle & inner] = MUSCLE
    tissue[vertebra & inner] = BONE

    # Bowel: soft-tissue blobs (CT 20-60 HU, MR in the organs' range) in the anterior abdomen.
    for _ in range(rng.integers(5, 9)):
        centre = (rng.uniform(-0.55, 0.55) * body_a, rng.uniform(-0.75, 0.05) * body_b, rng.uniform(-0.4, 0.4) * z.max() * 2)
        axes = rng.uniform(15, 32, 3)
        tissue[_deformed_ellipsoid(rng, xyz, centre, axes, 90, 0.25, shape_zyx) & inner & (tissue == VISCERA)] = BOWEL

    # Organs in the order they are painted (later ones win where they touch). Centres are relative to the
    # body size so that organs stay inside the body; every subject gets its own offsets, sizes and rotation.
    def organ(name, centre, axes, max_rot):
        scale = rng.uniform(0.85, 1.15)
        mask = _deformed_ellipsoid(rng, xyz, centre, np.asarray(axes) * scale * rng.uniform(0.92, 1.08, 3),
                                   max_rot, 0.12, shape_zyx) & inner & (tissue != BONE)
        tissue[mask] = LABELS[name]

    organ("spleen", (0.62 * body_a + jitter(8), 0.2 * body_b + jitter(8), 30 + jitter(15)), (36, 55, 60), 30)
    organ("liver", (-0.35 * body_a + jitter(10), -0.1 * body_b + jitter(8), 35 + jitter(15)), (75, 70, 70), 15)
    kidney_y = spine_y - 5.0  # kidneys last: they lie behind liver and spleen and stay whole
    organ("kidney_right", (-62 + jitter(8), kidney_y + jitter(6), -15 + jitter(15)), (33, 28, 56), 25)
    organ("kidney_left", (62 + jitter(8), kidney_y + jitter(6), -5 + jitter(15)), (33, 28, 56), 25)

    label = np.where(tissue <= max(LABELS.values()), tissue, 0).astype(np.uint8)
    # Visceral fat fraction: a smooth mixture, so that the space around organs ranges from fat to soft tissue.
    fat_fraction = np.clip(0.55 + 0.35 * _smooth_field(rng, shape_zyx, 2.0), 0.0, 1.0)
    fat_fraction[tissue == BOWEL] = np.clip(fat_fraction[tissue == BOWEL] * 0.3, 0, 1)
    return Anatomy(tissue=tissue, label=label, fat_fraction=fat_fraction.astype(np.float32),
                   spacing_xyz=tuple(float(s) for s in spacing_xyz))


def _render(anatomy: Anatomy, rng, tissue_means: Dict[int, float], soft_tissue: float, jitter: float,
            texture: float) -> np.ndarray:
    """Piecewise-constant tissue means (jittered per subject) plus a smooth per-voxel texture."""
    image = np.zeros(anatomy.tissue.shape, np.float32)
    for code, mean in tissue_means.items():
        image[anatomy.tissue == code] = mean + (rng.uniform(-jitter, jitter) if code != AIR else 0.0)
    fat = tissue_means[SUBCUTANEOUS_FAT]
    mixed = (anatomy.tissue == VISCERA) | (anatomy.tissue == BOWEL)
    f = anatomy.fat_fraction[mixed]
    image[mixed] = f * fat + (1 - f) * (soft_tissue + rng.uniform(-jitter, jitter))
    inside = anatomy.tissue != AIR
    image[inside] += texture * _smooth_field(rng, image.shape, 1.0)[inside]
    return image


def render_ct(anatomy: Anatomy, rng: np.random.Generator) -> np.ndarray:
    image = _render(anatomy, rng, CT_MEAN_HU, CT_SOFT_TISSUE_HU, jitter=5.0, texture=6.0)
    image += rng.normal(0.0, CT_NOISE_SD_HU, image.shape).astype(np.float32)
    return np.clip(image, -1024, 3071)


def bias_field(rng: np.random.Generator, shape_zyx, strength: float = 0.3) -> np.ndarray:
    """Smooth multiplicative field exp(strength * g) from a low-order random polynomial g (range ~0.6-1.6)."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape_zyx], indexing="ij")
    terms = [x, y, z, x * y, x * z, y * z, x ** 2, y ** 2, z ** 2]
    g = sum(c * t for c, t in zip(rng.normal(0, 1, len(terms)), terms))
    g = (g - g.mean()) / (g.std() + 1e-8)
    return np.exp(strength * g).astype(np.float32)


def render_mr(anatomy: Anatomy, rng: np.random.Generator):
    """MR image and the bias field it was multiplied with."""
    clean = _render(anatomy, rng, MR_MEAN, MR_SOFT_TISSUE, jitter=30.0, texture=20.0)
    field = bias_field(rng, clean.shape)
    signal = np.maximum(clean, 0) * field
    # Rician noise: magnitude of a complex signal with Gaussian noise in both channels.
    real = signal + rng.normal(0.0, MR_NOISE_SIGMA, signal.shape)
    imaginary = rng.normal(0.0, MR_NOISE_SIGMA, signal.shape)
    return np.sqrt(real ** 2 + imaginary ** 2).astype(np.float32), field


def make_phantom(modality: str, seed, shape_xyz: Sequence[int] = DEFAULT_SHAPE_XYZ,
                 spacing_xyz: Sequence[float] = DEFAULT_SPACING_XYZ) -> Phantom:
    """One subject rendered as ``modality`` ('CT' or 'MR'); the same seed gives the same phantom."""
    if modality not in ("CT", "MR"):
        raise ValueError(f"Phantom modality must be 'CT' or 'MR', got {modality!r}.")
    rng = np.random.default_rng(seed)
    anatomy = make_anatomy(rng, shape_xyz, spacing_xyz)
    if modality == "CT":
        return Phantom(render_ct(anatomy, rng), anatomy.label, "CT", anatomy.spacing_xyz)
    image, field = render_mr(anatomy, rng)
    return Phantom(image, anatomy.label, "MR", anatomy.spacing_xyz, bias_field=field)


def case_seed(seed: int, modality: str, split: str, index: int) -> List[int]:
    """Distinct subject per (modality, split, index): CT and MR never share an anatomy (unpaired)."""
    return [seed, ("CT", "MR").index(modality), ("train", "test").index(split), index]


def write_image(array_zyx: np.ndarray, spacing_xyz, path: str) -> None:
    import SimpleITK as sitk
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing(tuple(float(s) for s in spacing_xyz))
    sitk.WriteImage(image, path, useCompression=True)


def dataset_folder_name(dataset_id: int, name: str) -> str:
    return f"Dataset{dataset_id:03d}_{name}"


def write_phantom_dataset(nnunet_raw: str, dataset_id: int = 990, name: str = "MulModPhantom",
                          n_train: Tuple[int, int] = (8, 8), n_test: Tuple[int, int] = (3, 3), seed: int = 0,
                          shape_xyz: Sequence[int] = DEFAULT_SHAPE_XYZ,
                          spacing_xyz: Sequence[float] = DEFAULT_SPACING_XYZ, overwrite: bool = False,
                          progress: bool = True) -> str:
    """Writes ``<nnunet_raw>/DatasetXXX_Name`` (imagesTr, labelsTr, imagesTs, labelsTs, dataset.json).

    ``n_train`` / ``n_test`` are (CT, MR) case counts. Every case, test cases included, is tagged with its
    modality in dataset.json (schema: nnunet_mulmod/modality.py). Returns the dataset folder.
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    from tqdm import tqdm

    folder = os.path.join(nnunet_raw, dataset_folder_name(dataset_id, name))
    if os.path.exists(folder):
        if not overwrite:
            raise FileExistsError(f"{folder} already exists. Delete it or pass overwrite=True.")
        shutil.rmtree(folder)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        os.makedirs(os.path.join(folder, sub))

    jobs = []
    for split, counts in (("train", n_train), ("test", n_test)):
        for modality, count in zip(("CT", "MR"), counts):
            for i in range(count):
                # Train and test ids share one numbering per modality so that ids are unique dataset-wide.
                number = i if split == "train" else counts_offset(n_train, modality) + i
                jobs.append((split, modality, i, f"phantom_{modality.lower()}_{number:03d}"))

    case_modalities = {}
    for split, modality, i, case_id in tqdm(jobs, desc="phantoms", disable=not progress, unit="case"):
        phantom = make_phantom(modality, case_seed(seed, modality, split, i), shape_xyz, spacing_xyz)
        images, labels = ("imagesTr", "labelsTr") if split == "train" else ("imagesTs", "labelsTs")
        # CT as int16 HU (as scanners store it), MR as float32.
        image = np.round(phantom.image).astype(np.int16) if modality == "CT" else phantom.image
        write_image(image, phantom.spacing_xyz, os.path.join(folder, images, f"{case_id}_0000.nii.gz"))
        write_image(phantom.label, phantom.spacing_xyz, os.path.join(folder, labels, f"{case_id}.nii.gz"))
        case_modalities[case_id] = modality

    schema = set_modalities({}, case_modalities, vocabulary=["CT", "MR"])
    generate_dataset_json(
        folder, channel_names={0: CHANNEL_NAME}, labels=LABELS, num_training_cases=sum(n_train),
        file_ending=".nii.gz", dataset_name=dataset_folder_name(dataset_id, name),
        description="Synthetic unpaired CT and MR abdominal phantoms (nnunet_mulmod.demo.phantoms), "
                    f"seed {seed}, shape {tuple(shape_xyz)} voxels, spacing {tuple(spacing_xyz)} mm.",
        license="CC0 (synthetic data)", converted_by="nnunet_mulmod.demo.phantoms", **schema)
    return folder


def counts_offset(n_train: Tuple[int, int], modality: str) -> int:
    return n_train[("CT", "MR").index(modality)]
