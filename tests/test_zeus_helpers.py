"""Tiny offline models and datasets for the Zeus tests (no test functions here; imported by test_zeus_*.py).

Every model is randomly initialised and saved by the test itself: nothing is downloaded.
"""
import os

import pytest
import torch

WORDS = ("please analyze the given image and give as much important information in such a for segmenting as you "
         "can this is t2 adc mr ct background gland lesion liver spleen segment find by its typical location shape "
         "size delineate boundary where intensity texture differ from adjacent tissue . , : every pixel that "
         "belongs to none of these targets it includes air other organs tissues imaging artefacts of").split()

TOY_DATASET_JSON = {"name": "Dataset990_ZeusToy", "channel_names": {"0": "T2", "1": "ADC"},
                    "labels": {"background": 0, "gland": 1, "lesion": 2}, "numTraining": 1,
                    "file_ending": ".nii.gz", "modalities": ["T2", "ADC"], "case_modalities": {},
                    "channel_modalities": {"0": "T2", "1": "ADC"}}


def make_tiny_medclip(folder: str, hidden: int = 32, out_dim: int = 16) -> str:
    """A MedCLIP-style folder: a 2-layer random BERT + tokenizer from a small vocab + projection.safetensors."""
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel, BertTokenizerFast
    os.makedirs(folder, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS))
    with open(os.path.join(folder, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=os.path.join(folder, "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    save_file({"weight": torch.randn(out_dim, hidden)}, os.path.join(folder, "projection.safetensors"))
    return folder


def make_tiny_causal_lm(folder: str) -> str:
    """A 1-layer random GPT-2 with a word-level tokenizer built offline with the `tokenizers` library."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(["<unk>", "<eos>"] + sorted(set(WORDS)))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(vocab), n_positions=256, n_embd=32, n_layer=1, n_head=2,
                        bos_token_id=1, eos_token_id=1)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_medclip_folder(tmp_path_factory):
    return make_tiny_medclip(str(tmp_path_factory.mktemp("medclip")))


@pytest.fixture(scope="session")
def tiny_lm_folder(tmp_path_factory):
    return make_tiny_causal_lm(str(tmp_path_factory.mktemp("tiny_lm")))
