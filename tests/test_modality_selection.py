"""Modality schema errors and the per-case modality order used at prediction."""
import pytest

from nnunet_mulmod.inference.modality_selection import CaseModalityResolver, case_id_from_output_file
from nnunet_mulmod.modality import (ModalityError, get_channel_modalities, modality_family, modality_prompt_text,
                                    require_case_modalities, set_modalities)

DATASET = {"channel_names": {"0": "CT_or_MR"}, "labels": {"background": 0, "liver": 1}, "file_ending": ".nii.gz",
           "numTraining": 3}


def dataset(**case_modalities):
    return set_modalities(dict(DATASET), case_modalities, vocabulary=["CT", "MR-T1", "MR-T2"])


def test_vocabulary_is_not_a_boolean_and_families_come_from_names():
    d = dataset(a="CT", b="MR-T1", c="MR-T2")
    assert d["modalities"] == ["CT", "MR-T1", "MR-T2"]
    assert [modality_family(m) for m in d["modalities"]] == ["CT", "MR", "MR"]
    assert modality_prompt_text("MR-T1") == "MR T1"
    with pytest.raises(ModalityError, match="Invalid modality name"):
        set_modalities(dict(DATASET), {"a": "CT scan"})


def test_untagged_cases_are_listed_with_the_fix():
    d = dataset(a="CT")
    with pytest.raises(ModalityError, match=r"2 case\(s\) have no modality tag .*: b, c\. Add an entry per case"):
        require_case_modalities(d, ["a", "b", "c"])
    d["case_modalities"]["x"] = "PET"
    with pytest.raises(ModalityError, match=r"x: 'PET'"):
        require_case_modalities(d, ["a"])


def test_channel_modalities_missing_channel_is_named():
    d = dict(DATASET, channel_names={"0": "T2", "1": "ADC"})
    set_modalities(d, {"p1": "T2"}, vocabulary=["T2", "ADC"])
    with pytest.raises(ModalityError, match="no 'channel_modalities' map"):
        get_channel_modalities(d)
    d["channel_modalities"] = {"0": "T2"}
    with pytest.raises(ModalityError, match=r"no modality for channel\(s\) \[1\] \(\['ADC'\]\)"):
        get_channel_modalities(d)


def test_resolution_order_user_map_then_user_default_then_dataset_then_auto():
    d = dataset(listed="MR-T2")
    modalities = d["modalities"]
    r = CaseModalityResolver(modalities, d, modality_map={"mapped": "MR-T1"})
    assert r.resolve("mapped") == ("MR-T1", "given by the user (modality map)")
    assert r.resolve("listed") == ("MR-T2", "dataset.json case_modalities")
    assert r.resolve("new_scan") == (None, "automatic detection")
    r = CaseModalityResolver(modalities, d, modality="CT", modality_map={"mapped": "MR-T1"})
    assert r.resolve("mapped")[0] == "MR-T1"  # per-case map wins over the global flag
    assert r.resolve("listed") == ("CT", "given by the user")  # the user's word wins over the dataset map
    r = CaseModalityResolver(modalities, d, modality="auto", modality_map={"mapped": "MR-T1"})
    assert r.resolve("listed") == (None, "automatic detection")  # 'auto' overrides the dataset map
    assert r.resolve("mapped")[0] == "MR-T1"


def test_mistaken_prompt_switch_and_its_limits():
    d = dataset(listed="MR-T2")
    r = CaseModalityResolver(["CT", "MR"], {"case_modalities": {"c1": "CT", "m1": "MR"}}, wrong_prompt=True)
    assert r.resolve("c1")[0] == "MR" and r.resolve("m1")[0] == "CT"
    assert "MISTAKEN PROMPT: CT case prompted as MR" in r.resolve("c1")[1]
    r3 = CaseModalityResolver(d["modalities"], d, wrong_prompt=True)
    assert r3.resolve("listed")[0] == "CT"  # next in the vocabulary, wrapping around
    with pytest.raises(ModalityError, match="needs the case's true modality"):
        r3.resolve("unlisted")


def test_unknown_modality_from_user_is_refused():
    with pytest.raises(ModalityError, match=r"Unknown modality 'PET': this model was trained with \['CT', 'MR'\]"):
        CaseModalityResolver(["CT", "MR"], None, modality="PET")
    with pytest.raises(ModalityError, match="Unknown modality 'T1'"):
        CaseModalityResolver(["CT", "MR"], None, modality_map={"a": "T1"})


def test_case_id_from_nnunet_output_file():
    assert case_id_from_output_file("/preds/amos_0507") == "amos_0507"
    assert case_id_from_output_file(None) is None


def test_intensity_families_by_prefix_declaration_or_refusal():
    import numpy as np

    from nnunet_mulmod.intensity import MulModIntensityNormalization, decide_family
    assert [modality_family(m) for m in ("CT", "CTinv", "MR-T1", "T1gd", "ADC", "FLAIR", "PET", "SPECT-Tc")] == \
        ["CT", "CT", "MR", "MR", "MR", "MR", "other", "other"]
    assert modality_family("XR") == "unknown"
    with pytest.raises(ModalityError, match=r"cannot tell the intensity family of modality \['XR'\].*CT: CT\*, CBCT\*; "
                                            r"MR: MR\*.*other: PET\*, SPECT\*.*\"modality_families\": \{\"XR\": \"other\"\}"):
        set_modalities(dict(DATASET), {"a": "CT", "b": "XR"})
    d = set_modalities(dict(DATASET), {"a": "CT", "b": "XR", "c": "PET"}, families={"XR": "CT"})
    assert d["modality_families"] == {"XR": "CT"} and modality_family("XR", d) == "CT"
    with pytest.raises(ModalityError, match=r"declares unknown families \{'XR': 'bone'\}"):
        set_modalities(dict(DATASET), {"b": "XR"}, families={"XR": "bone"})
    # the family picks the protocol per case: PET (other) is z-scored, not given the MR protocol
    assert decide_family("b", d) == "CT" and decide_family("c", d) == "other"
    pet = np.random.RandomState(0).gamma(2.0, 3.0, (8, 8, 8)).astype(np.float32)
    normalized = MulModIntensityNormalization(family="other").run(pet.copy())
    assert abs(normalized.mean()) < 1e-4 and abs(normalized.std() - 1) < 1e-3
    as_mr = MulModIntensityNormalization(family="MR").run(pet.copy())
    assert as_mr.min() == 0 and as_mr.max() == 1  # what PET used to get: MR's min-max protocol
