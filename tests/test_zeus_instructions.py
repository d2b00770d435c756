"""Zeus instruction generation: template, JSON and Hugging Face causal-LM backends, bad input, real slices."""
import copy
import json
import os

import numpy as np
import pytest

from nnunet_mulmod.modality import ModalityError
from nnunet_mulmod.zeus import instructions as zi
from test_zeus_helpers import TOY_DATASET_JSON, tiny_lm_folder  # noqa: F401 (pytest fixture)

SHARED_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")


def test_template_backend_covers_every_pair_with_the_papers_prompt(tmp_path):
    record = zi.generate_instructions(TOY_DATASET_JSON, "template")
    pairs = [(i["modality"], i["class"]) for i in record["instructions"]]
    assert pairs == [(m, c) for m in ("T2", "ADC") for c in ("background", "gland", "lesion")]
    lesion_adc = record["instructions"][5]
    assert lesion_adc["prompt"] == ("Please analyze the given lesion ADC image and give as much important information "
                                    "in such a ADC for segmenting lesion as you can.")
    assert "lesion" in lesion_adc["text"] and "ADC" in lesion_adc["text"]
    assert "gland" in record["instructions"][0]["text"]  # background names what it is not
    assert zi.generate_instructions(TOY_DATASET_JSON, "template") == record
    path = str(tmp_path / "i.json")
    zi.save_instructions(record, path)
    assert zi.load_instructions(path) == json.loads(json.dumps(record))


def test_json_backend_reads_user_instructions_and_names_missing_pairs(tmp_path):
    user = {m: {c: f"{m} {c} text" for c in ("background", "gland", "lesion")} for m in ("T2", "ADC")}
    path = tmp_path / "user.json"
    path.write_text(json.dumps(user))
    record = zi.generate_instructions(TOY_DATASET_JSON, "json", json_file=str(path))
    assert [i["text"] for i in record["instructions"]][4] == "ADC gland text"
    assert record["backend"] == "json"
    del user["ADC"]["lesion"]
    path.write_text(json.dumps(user))
    with pytest.raises(zi.ZeusInstructionError, match=r"\(ADC, lesion\)"):
        zi.generate_instructions(TOY_DATASET_JSON, "json", json_file=str(path))


def test_hf_backend_with_tiny_local_lm_is_deterministic_given_seed(tiny_lm_folder):
    greedy = zi.generate_instructions(TOY_DATASET_JSON, "hf", model=tiny_lm_folder, max_new_tokens=12)
    assert greedy == zi.generate_instructions(TOY_DATASET_JSON, "hf", model=tiny_lm_folder, max_new_tokens=12)
    assert all(i["text"] for i in greedy["instructions"])
    assert greedy["model"] == tiny_lm_folder and greedy["generation"]["max_new_tokens"] == 12
    sampled = [zi.generate_instructions(TOY_DATASET_JSON, "hf", model=tiny_lm_folder, max_new_tokens=12,
                                        do_sample=True, seed=s) for s in (1, 1, 2)]
    texts = [[i["text"] for i in r["instructions"]] for r in sampled]
    assert texts[0] == texts[1]  # same seed, same text
    assert texts[0] != texts[2]  # the seed is used
    assert sampled[0]["generation"]["seed"] == 1 and sampled[0]["generation"]["do_sample"] is True


def test_language_model_not_available_offline_gives_clear_error(tmp_path):
    with pytest.raises(zi.ZeusInstructionError, match="offline.*--model /path/to/folder"):
        zi.generate_instructions(TOY_DATASET_JSON, "hf", model="nobody/no-such-model-zeus")
    with pytest.raises(zi.ZeusInstructionError, match="does not exist"):
        zi.generate_instructions(TOY_DATASET_JSON, "hf", model=str(tmp_path / "missing" / "model"))


def test_dataset_without_channel_modalities_is_rejected():
    dataset_json = copy.deepcopy(TOY_DATASET_JSON)
    del dataset_json["channel_modalities"]
    with pytest.raises(ModalityError, match="channel_modalities"):
        zi.generate_instructions(dataset_json, "template")


def test_cli_writes_default_file(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    (tmp_path / TOY_DATASET_JSON["name"]).mkdir()
    (tmp_path / TOY_DATASET_JSON["name"] / "dataset.json").write_text(json.dumps(TOY_DATASET_JSON))
    zi.main(["-d", TOY_DATASET_JSON["name"]])
    record = zi.load_instructions(str(tmp_path / TOY_DATASET_JSON["name"] / "zeus_instructions.json"))
    assert record["backend"] == "template" and len(record["instructions"]) == 6
    with pytest.raises(SystemExit):  # one-line error, no stack trace
        zi.main(["-d", TOY_DATASET_JSON["name"], "-b", "hf"])


def test_representative_slices_on_real_ct(tmp_path):
    """The vlm backend's slices: the slice with the largest liver area, from a real CT (TotalSegmentator sample)."""
    ct_file = os.path.join(SHARED_DATA, "totalseg_example", "example_ct_sm.nii.gz")
    if not os.path.isfile(ct_file):
        pytest.skip(f"real sample data not found at {SHARED_DATA} (see shared/data/README.md)")
    import SimpleITK as sitk
    ct = sitk.ReadImage(ct_file)
    total = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(SHARED_DATA, "totalseg_example", "example_seg.nii.gz")))
    seg = np.zeros_like(total, dtype=np.uint8)
    seg[total == 5] = 1  # liver
    seg[total == 1] = 2  # spleen
    folder = tmp_path / "Dataset992_RealCT"
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    sitk.WriteImage(ct, str(folder / "imagesTr" / "ct_0000.nii.gz"))
    inverted = sitk.GetImageFromArray(-sitk.GetArrayFromImage(ct).astype(np.float32))  # a second aligned channel
    inverted.CopyInformation(ct)
    sitk.WriteImage(inverted, str(folder / "imagesTr" / "ct_0001.nii.gz"))
    labels = sitk.GetImageFromArray(seg)
    labels.CopyInformation(ct)
    sitk.WriteImage(labels, str(folder / "labelsTr" / "ct.nii.gz"))
    dataset_json = {"channel_names": {"0": "CT", "1": "CTinv"}, "labels": {"background": 0, "liver": 1, "spleen": 2},
                    "file_ending": ".nii.gz", "modalities": ["CT", "CTinv"], "channel_modalities": {"0": "CT", "1": "CTinv"}}
    slices = zi.representative_slices(str(folder), dataset_json, ["CT", "CTinv"], ["background", "liver", "spleen"])
    liver = slices[("CT", "liver")]
    assert liver["slice"] == int(np.argmax((seg == 1).sum(axis=(1, 2))))
    assert slices[("CTinv", "spleen")]["channel"] == 1
    assert slices[("CTinv", "spleen")]["slice"] == int(np.argmax((seg == 2).sum(axis=(1, 2))))
    # the chosen CT slice shows liver tissue at liver HU where the label says liver
    assert 40 < liver["pixels"][seg[liver["slice"]] == 1].mean() < 200
    image = zi.slice_to_pil(liver["pixels"])
    assert image.mode == "RGB" and image.size == (seg.shape[2], seg.shape[1])
