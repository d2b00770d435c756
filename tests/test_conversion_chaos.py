"""CHAOS converter: the challenge's DICOM + PNG layout (real CT case 1 plus synthetic CT/MR patients)."""
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conversion_fixtures import nnunet_env  # noqa: F401 (pytest fixture)
from conversion_fixtures import case_files, read_json, run_cli, shared_data, verify_with_nnunet
from nnunet_mulmod.dataset_conversion.chaos import main
from nnunet_mulmod.dataset_conversion.common import ConversionError

SIZE, N_SLICES = 32, 8
MR_GREY = {1: 63, 2: 126, 3: 189, 4: 252}  # liver, right kidney, left kidney, spleen as CHAOS draws them


def write_dicom_series(folder: Path, slices, file_names, positions_z, modality: str, series_uid: str,
                       spacing=(1.5, 1.5), echo_time: str = "4.6", origin_xy=(-20.0, -20.0)):
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for index, (array, name, z) in enumerate(zip(slices, file_names, positions_z)):
        image = sitk.GetImageFromArray(array[None].astype(np.int16))
        image.SetSpacing((spacing[0], spacing[1], 1.0))
        tags = {"0008|0060": modality, "0020|000d": "1.2.3.4", "0020|000e": series_uid,
                "0008|0018": f"{series_uid}.{index + 1}", "0020|0013": str(index + 1),
                "0020|0032": f"{origin_xy[0]}\\{origin_xy[1]}\\{z}", "0020|0037": "1\\0\\0\\0\\1\\0",
                "0028|0030": f"{spacing[1]}\\{spacing[0]}", "0018|0050": "3.2"}
        if modality == "MR":
            tags["0018|0081"] = echo_time
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / name))
        writer.Execute(image)


def write_pngs(folder: Path, masks, names):
    folder.mkdir(parents=True, exist_ok=True)
    for mask, name in zip(masks, names):
        sitk.WriteImage(sitk.GetImageFromArray(mask.astype(np.uint8)), str(folder / name))


def synthetic_ct_patient(patient: Path):
    """File i000k has CT value 100 + 10k inside the body and its PNG liver_GT_00k a (k+2)^2 square; positions
    decrease with the file index, as on the real case, so position order is the reverse of file-name order."""
    slices, masks = [], []
    for k in range(N_SLICES):
        image = np.full((SIZE, SIZE), -1000)
        image[4:-4, 4:-4] = 100 + 10 * k
        mask = np.zeros((SIZE, SIZE))
        mask[6:6 + k + 2, 6:6 + k + 2] = 255
        slices.append(image)
        masks.append(mask)
    names = [f"i{k:04d},0000b.dcm" for k in range(N_SLICES)]
    write_dicom_series(patient / "DICOM_anon", slices, names, [100.0 - 2.0 * k for k in range(N_SLICES)], "CT", "1.2.3.9")
    write_pngs(patient / "Ground", masks, [f"liver_GT_{k:03d}.png" for k in range(N_SLICES)])


def mr_masks():
    masks = []
    for k in range(N_SLICES):
        mask = np.zeros((SIZE, SIZE))
        for organ, grey in MR_GREY.items():
            mask[2 + 7 * (organ - 1):6 + 7 * (organ - 1), 4:4 + k + 2] = grey + (k % 3) - 1  # anti-aliasing-like noise
        masks.append(mask)
    return masks


def synthetic_mr_patient(patient: Path, number: int):
    rng = np.random.default_rng(number)
    masks = mr_masks()
    positions = [10.0 + 6.0 * k for k in range(N_SLICES)]  # here position order == file-name order
    for phase, offset, echo in (("InPhase", 2, "4.6"), ("OutPhase", 1, "2.3")):
        slices = [(rng.random((SIZE, SIZE)) * 200 + 50 + 5 * k) for k in range(N_SLICES)]
        names = [f"IMG-0004-{2 * k + offset:05d}.dcm" for k in range(N_SLICES)]
        write_dicom_series(patient / "T1DUAL" / "DICOM_anon" / phase, slices, names, positions, "MR",
                           f"1.2.5.{number}.{offset}", echo_time=echo)
    write_pngs(patient / "T1DUAL" / "Ground", masks, [f"IMG-0004-{2 * k + 2:05d}.png" for k in range(N_SLICES)])
    # T2-SPIR on its own grid (other spacing and origin), like the real acquisitions
    t2 = [(rng.random((SIZE, SIZE)) * 300 + 100) for _ in range(N_SLICES)]
    write_dicom_series(patient / "T2SPIR" / "DICOM_anon", t2, [f"IMG-0002-{k + 1:05d}.dcm" for k in range(N_SLICES)],
                       [12.0 + 6.0 * k for k in range(N_SLICES)], "MR", f"1.2.6.{number}", spacing=(1.4, 1.4),
                       echo_time="80", origin_xy=(-18.0, -21.0))
    write_pngs(patient / "T2SPIR" / "Ground", masks, [f"IMG-0002-{k + 1:05d}.png" for k in range(N_SLICES)])


def make_chaos(root: Path, real_ct: bool) -> Path:
    train = root / "CHAOS_Train_Sets" / "Train_Sets"
    if real_ct:
        (train / "CT").mkdir(parents=True)
        os.symlink(shared_data("chaos_ct_sample", "CT", "1"), train / "CT" / "1")  # the original layout, read-only
    synthetic_ct_patient(train / "CT" / "2")
    synthetic_mr_patient(train / "MR" / "1", 1)
    synthetic_mr_patient(train / "MR" / "3", 3)
    return root / "CHAOS_Train_Sets"


def test_unpaired_real_ct_lands_on_the_liver(tmp_path, nnunet_env):
    chaos = make_chaos(tmp_path, real_ct=True)
    run_cli(["nnunet_mulmod_convert_chaos", "-i", chaos, "-d", 503, "-np", 2], nnunet_env)
    out = Path(nnunet_env["nnUNet_raw"]) / "Dataset503_CHAOS"
    cases = ["ct_01", "ct_02", "t1in_01", "t1in_03", "t1out_01", "t1out_03", "t2_01", "t2_03"]
    assert case_files(out, "imagesTr") == sorted(f"{c}_0000.nii.gz" for c in cases)
    dataset_json = read_json(out / "dataset.json")
    assert dataset_json["case_modalities"] == {
        c: {"ct": "CT", "t1in": "MR-T1-in", "t1out": "MR-T1-out", "t2": "MR-T2"}[c.split("_")[0]] for c in cases}
    assert dataset_json["modalities"] == ["CT", "MR-T1-in", "MR-T1-out", "MR-T2"]
    assert dataset_json["channel_names"] == {"0": "CT_or_MR"}
    assert dataset_json["labels"] == {"background": 0, "liver": 1}  # CT GT is liver only: default --organs liver

    # the real CT: slice spacing from ImagePositionPatient (2.0 mm, not SliceThickness 3.2), HU, liver mask on liver
    image = sitk.ReadImage(str(out / "imagesTr" / "ct_01_0000.nii.gz"))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "ct_01.nii.gz")))
    assert image.GetSize() == (512, 512, 78)
    assert image.GetSpacing() == pytest.approx((0.7265625, 0.7265625, 2.0))
    hu = sitk.GetArrayFromImage(image)
    assert hu.min() <= -1000 and label.sum() > 10000
    assert 100 <= hu[label == 1].mean() <= 180  # liver range: the PNG/slice pairing is right
    assert hu[label[::-1] == 1].mean() < 90  # the position-order pairing (what a naive reader does) is not

    # the synthetic CT: file i000k (value 100 + 10k) must carry PNG k (a (k+2)^2 square)
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "imagesTr" / "ct_02_0000.nii.gz")))
    ct_label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "ct_02.nii.gz")))
    for z in range(N_SLICES):
        k = (int(ct[z, 16, 16]) - 100) // 10
        assert ct_label[z].sum() == (k + 2) ** 2
    assert [(int(ct[z, 16, 16]) - 100) // 10 for z in range(N_SLICES)] == list(range(N_SLICES))[::-1]

    # MR: grey ranges -> organ ids, here only the liver is kept
    t1 = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "t1in_01.nii.gz")))
    expected_liver = np.stack([m for m in mr_masks()]) // 1
    assert np.array_equal(t1 == 1, (expected_liver >= 55) & (expected_liver <= 70))
    assert set(np.unique(t1)) == {0, 1}

    # a patient's sequences share a fold (no leak between t1in_01 and t1out_01)
    splits = read_json(out / "splits_final.json")
    for fold in splits:
        for number in ("01", "03"):
            in_val = {f"{s}_{number}" in fold["val"] for s in ("t1in", "t1out", "t2")}
            assert len(in_val) == 1
    assert sorted(c for fold in splits for c in fold["val"]) == sorted(cases)
    verify_with_nnunet(out)


def test_mr_all_organs_and_aligned_mode(tmp_path, nnunet_env):
    chaos = make_chaos(tmp_path, real_ct=False)
    main(["-i", str(chaos), "-d", "504", "--sequences", "T1in", "T2", "-np", "1"])
    out = Path(nnunet_env["nnUNet_raw"]) / "Dataset504_CHAOS"
    dataset_json = read_json(out / "dataset.json")
    assert dataset_json["labels"] == {"background": 0, "liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4}
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "t2_03.nii.gz")))
    grey = np.stack(mr_masks())
    for organ, value in MR_GREY.items():
        assert np.array_equal(label == organ, np.abs(grey - value) <= 1)
    verify_with_nnunet(out)

    main(["-i", str(chaos), "-d", "505", "--name", "CHAOS_aligned", "--mode", "aligned", "--with_t2", "--union",
          "-np", "1"])
    out = Path(nnunet_env["nnUNet_raw"]) / "Dataset505_CHAOS_aligned"
    dataset_json = read_json(out / "dataset.json")
    assert case_files(out, "imagesTr") == [f"mr_{p}_{c:04d}.nii.gz" for p in ("01", "03") for c in range(3)]
    assert dataset_json["channel_names"] == {"0": "T1in", "1": "T1out", "2": "T2"}
    assert dataset_json["channel_modalities"] == {"0": "MR-T1-in", "1": "MR-T1-out", "2": "MR-T2"}
    assert dataset_json["case_modalities"] == {"mr_01": "MR", "mr_03": "MR"}
    assert dataset_json["labels"] == {"background": 0, "foreground": 1}
    t1 = sitk.ReadImage(str(out / "imagesTr" / "mr_01_0000.nii.gz"))
    t2 = sitk.ReadImage(str(out / "imagesTr" / "mr_01_0002.nii.gz"))
    assert t2.GetSize() == t1.GetSize() and t2.GetOrigin() == pytest.approx(t1.GetOrigin())  # on the T1 grid
    assert t2.GetSpacing() == pytest.approx(t1.GetSpacing())
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "mr_01.nii.gz"))), grey > 0)
    verify_with_nnunet(out)


def _remove_slice(folder: Path, dicom_name: str, png_name: str):
    os.remove(folder / "DICOM_anon" / dicom_name)
    os.remove(folder / "Ground" / png_name)


@pytest.mark.parametrize("problem", ["gap", "mixed", "missing_mask", "grey_value", "truncated", "mask_size"])
def test_bad_dicom_input_names_the_case(tmp_path, nnunet_env, problem):
    chaos = make_chaos(tmp_path, real_ct=False)
    patient = chaos / "Train_Sets" / "CT" / "2"
    if problem == "gap":
        _remove_slice(patient, "i0003,0000b.dcm", "liver_GT_003.png")
        expected = "Case ct_02: slice positions .* are not evenly spaced: 4 mm .* has 2 mm"
    elif problem == "mixed":
        write_dicom_series(patient / "DICOM_anon", [np.zeros((SIZE, SIZE))], ["i0100,0000b.dcm"], [300.0], "CT",
                           "9.9.9")
        write_pngs(patient / "Ground", [np.zeros((SIZE, SIZE))], ["liver_GT_100.png"])
        expected = "Case ct_02: .* mixes DICOM series \\(SeriesInstanceUID differs"
    elif problem == "missing_mask":
        os.remove(patient / "Ground" / "liver_GT_005.png")
        expected = "Case ct_02: 7 PNG masks .* but 8 DICOM slices"
    elif problem == "grey_value":
        patient = chaos / "Train_Sets" / "MR" / "3"
        mask = np.zeros((SIZE, SIZE))
        mask[3:6, 3:6] = 100
        write_pngs(patient / "T2SPIR" / "Ground", [mask], ["IMG-0002-00004.png"])
        expected = "Case t2_03: mask .*IMG-0002-00004.png has grey values \\[100\\] outside the CHAOS ranges"
    elif problem == "mask_size":
        write_pngs(patient / "Ground", [np.zeros((SIZE, SIZE + 4))], ["liver_GT_005.png"])
        expected = (f"Case ct_02: mask .*liver_GT_005.png is {SIZE + 4}x{SIZE} pixels but the DICOM slices are "
                    f"{SIZE}x{SIZE}: it does not belong to this series. Restore .*Ground from the CHAOS download "
                    f".*or remove the case")
    else:
        path = patient / "DICOM_anon" / "i0004,0000b.dcm"
        path.write_bytes(path.read_bytes()[:-700])
        expected = "Case ct_02: cannot read the pixel data .* \\(truncated or corrupt"
    with pytest.raises(ConversionError, match=expected):
        main(["-i", str(chaos), "-d", "503", "-np", "1"])
    assert list(Path(nnunet_env["nnUNet_raw"]).iterdir()) == []
