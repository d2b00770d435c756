"""Frozen text encoders: texts in, one embedding per text out. Used for MulModSeg's class-prompt tables and
Zeus's instruction embeddings.

Stable API::

    encode_texts(texts: list[str], spec: dict, device="cpu", batch_size=64) -> torch.FloatTensor [N, D]
    describe(spec) -> str              # one line for logs
    load_text_encoder(spec, device)    # the loaded encoder; .spec is the fully resolved spec to record

``spec`` says which encoder (all paths may be relative; they are recorded absolute):

- ``{"type": "open_clip", "model": "ViT-B-32", "pretrained": "openai"}`` (the defaults). ``model``: any
  open_clip model name, ``hf-hub:org/repo``, ``local-dir:/folder`` or a model-config JSON file (for
  architectures open_clip does not ship). ``pretrained``: an open_clip tag (looked up in the Hugging
  Face cache first, downloaded only when online) or a local checkpoint file
  (``open_clip_pytorch_model.bin`` / ``.safetensors``). Text features come from ``model.encode_text``.
  Tokenizer: open_clip's own (for CLIP models the built-in BPE ``SimpleTokenizer``, no download); texts
  longer than the context length (77 tokens for CLIP) are truncated, keeping the end-of-text token.
- ``{"type": "hf", "model": "<hub id or local folder>"}``: a sentence-transformers model (the folder or
  repository has ``modules.json``) is run with ``SentenceTransformer`` and its own pooling; any other
  Hugging Face model (BioBERT, PubMedBERT, ...) with ``AutoModel`` + ``AutoTokenizer`` and a mean of
  the last hidden states over the non-padding tokens (not the [CLS] token: BERT's [CLS]/pooler output
  is not trained as a sentence embedding unless the model was fine-tuned for it). Texts are truncated to
  the model's limit (``max_seq_length`` for sentence-transformers, else the tokenizer's
  ``model_max_length`` capped by ``max_position_embeddings``; 512 for BERT models).
- ``{"type": "medclip", "path": "<folder>"}``: a MedCLIP-style text encoder (Zeus's instruction encoder): a
  Hugging Face BERT (``config.json``, weights, tokenizer files; MedCLIP uses Bio_ClinicalBERT) plus
  ``projection.safetensors`` or ``projection.pt`` holding ``weight`` [D, hidden] (and optionally ``bias``):
  MedCLIP's ``text_model.projection_head`` (768 -> 512, no bias). Pooling follows MedCLIP's text model: the token
  mean of hidden states 1, 2 and the last layer, averaged over the three layers (padding is excluded from the
  token mean; MedCLIP's code includes it, which makes an embedding depend on the batch). Texts are truncated at
  512 tokens. Local folders only.
- ``{"type": "onehot"}``: no model; only meaningful for class tables (``nnunet_mulmod.text.table.one_hot_table``).

On the command line a spec is one string (:func:`parse_encoder_spec`): ``open_clip:<model>[:<pretrained tag or
file>]``, ``hf:<id or folder>``, ``medclip:<folder>``, a JSON dict, or a plain path (a CLIP weights file: OpenAI
CLIP ViT-B/32; anything else: hf).

Common options: ``"normalize": true`` (the default of open_clip and hf) L2-normalises every embedding, so that
tables from different encoders have the same scale (a CLIP ViT-B/32 text feature has a norm of about 8-10
otherwise). MulModSeg's public notebook stored raw CLIP features; ``"normalize": false`` reproduces that. MedCLIP
defaults to raw projected features (``DEFAULT_NORMALIZE``): Zeus's instruction tables have always held them.
``"cache_dir"``: a Hugging Face / open_clip cache folder other than the default.

Offline: nothing is downloaded when ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``) is set; weights
that are neither local files nor in the cache raise ``TextEncoderError`` saying how to pass a local
checkpoint. Without that variable a machine without internet still gets the same error, after the hub
client's retries (tens of seconds).

Truncation is reported with a warning (how many texts, the limit). Loaded encoders are cached per
(spec, device) for repeated calls (``clear_encoder_cache()`` frees them).
"""
from __future__ import annotations

import functools
import json
import os
import warnings
from typing import Callable, Dict, List, Mapping, Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm

ENCODER_TYPES = ("open_clip", "hf", "medclip", "onehot")
DEFAULT_OPEN_CLIP_MODEL = "ViT-B-32"
DEFAULT_OPEN_CLIP_PRETRAINED = "openai"
# A bare CLIP weights file on the command line is OpenAI's ViT-B/32 (trained with QuickGELU).
DEFAULT_OPEN_CLIP_FILE_MODEL = "ViT-B-32-quickgelu"
DEFAULT_NORMALIZE = {"open_clip": True, "hf": True, "medclip": False}
WEIGHT_FILE_ENDINGS = (".bin", ".pt", ".pth", ".safetensors")

# Keys a user sets, per type; the rest are written by load_text_encoder for the record and are accepted
# (ignored) on input, so that a table's recorded encoder spec can be passed back to encode_texts.
_USER_KEYS = {
    "open_clip": {"type", "model", "pretrained", "normalize", "cache_dir"},
    "hf": {"type", "model", "normalize", "cache_dir"},
    "medclip": {"type", "path", "normalize"},
    "onehot": {"type"},
}
_RECORD_KEYS = {"backend", "embed_dim", "max_tokens", "quick_gelu", "library_version"}


class TextEncoderError(ValueError):
    """An encoder spec is invalid or its weights cannot be loaded. The message says what to pass instead."""


def _hub_offline() -> bool:
    """Read at call time (huggingface_hub reads the variables only once, at import)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    try:
        from huggingface_hub import constants
        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return False


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", "./", "../", "~")) or os.path.exists(ref)


def resolve_spec(spec: Mapping) -> dict:
    """Validates a spec and fills in defaults; local paths become absolute. Raises TextEncoderError."""
    if not isinstance(spec, Mapping) or spec.get("type") not in ENCODER_TYPES:
        raise TextEncoderError(f"Text encoder spec {spec!r} needs a 'type' out of {list(ENCODER_TYPES)}, e.g. "
                               f'{{"type": "open_clip", "model": "ViT-B-32", "pretrained": "openai"}}.')
    kind = spec["type"]
    unknown = sorted(set(spec) - _USER_KEYS[kind] - _RECORD_KEYS)
    if unknown:
        raise TextEncoderError(f"Unknown key(s) {unknown} in the {kind} encoder spec; allowed: "
                               f"{sorted(_USER_KEYS[kind])}.")
    out = {k: v for k, v in spec.items() if k in _USER_KEYS[kind]}
    if kind == "onehot":
        return out
    out["normalize"] = bool(spec.get("normalize", DEFAULT_NORMALIZE[kind]))
    if kind == "medclip":
        if not spec.get("path"):
            raise TextEncoderError("The medclip encoder needs 'path': a local folder with a Hugging Face BERT and "
                                   "projection.safetensors (or projection.pt).")
        out["path"] = os.path.abspath(os.path.expanduser(spec["path"]))
        return out
    if out.get("cache_dir"):
        out["cache_dir"] = os.path.abspath(os.path.expanduser(out["cache_dir"]))
    if kind == "open_clip":
        out["model"] = spec.get("model") or DEFAULT_OPEN_CLIP_MODEL
        out["pretrained"] = spec.get("pretrained") or DEFAULT_OPEN_CLIP_PRETRAINED
        if out["model"].endswith(".json"):
            out["model"] = os.path.abspath(os.path.expanduser(out["model"]))
        if _looks_like_path(out["pretrained"]):
            out["pretrained"] = os.path.abspath(os.path.expanduser(out["pretrained"]))
    else:
        if not spec.get("model"):
            raise TextEncoderError("The hf encoder needs 'model': a Hugging Face id (e.g. "
                                   "'sentence-transformers/all-MiniLM-L6-v2', 'dmis-lab/biobert-v1.1') or a local "
                                   "model folder.")
        out["model"] = spec["model"]
        if _looks_like_path(out["model"]):
            out["model"] = os.path.abspath(os.path.expanduser(out["model"]))
    return out


def parse_encoder_spec(text: str) -> dict:
    """A spec written as one string (command lines) -> spec dict: ``open_clip:<model>[:<pretrained tag or file>]``,
    ``hf:<id or folder>``, ``medclip:<folder>``, a JSON dict, or a plain path (a weights file: OpenAI CLIP
    ViT-B/32; anything else: hf). Defaults are filled in later, by :func:`resolve_spec`."""
    text = text.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise TextEncoderError(f"Cannot read encoder spec {text!r} as JSON: {e}") from e
    kind, _, rest = text.partition(":")
    if kind == "open_clip":
        model, _, pretrained = rest.partition(":")
        spec = {"type": "open_clip", "model": model or DEFAULT_OPEN_CLIP_MODEL}
        if pretrained:
            spec["pretrained"] = pretrained
        return spec
    if kind in ("hf", "medclip"):
        if not rest:
            raise TextEncoderError(f"Encoder spec {text!r} names no model: use {kind}:<{'id or folder' if kind == 'hf' else 'folder'}>.")
        return {"type": "hf", "model": rest} if kind == "hf" else {"type": "medclip", "path": rest}
    if not text:
        raise TextEncoderError("Empty encoder spec: use open_clip:<model>:<pretrained>, hf:<id or folder>, "
                               "medclip:<folder> or a JSON dict.")
    if text.endswith(WEIGHT_FILE_ENDINGS):
        return {"type": "open_clip", "model": DEFAULT_OPEN_CLIP_FILE_MODEL, "pretrained": text}
    return {"type": "hf", "model": text}


def describe(spec: Mapping) -> str:
    """One line saying which encoder a spec means, e.g. for logs and the CLI summary."""
    spec = dict(spec)
    kind = spec.get("type")
    if kind == "onehot":
        return "one-hot (class one-hot + modality one-hot), no text encoder"
    if kind == "open_clip":
        pretrained = spec.get("pretrained") or DEFAULT_OPEN_CLIP_PRETRAINED
        weights = f"checkpoint {pretrained}" if os.path.sep in pretrained else f"pretrained '{pretrained}'"
        text = f"open_clip {spec.get('model') or DEFAULT_OPEN_CLIP_MODEL}, {weights}"
    elif kind == "hf":
        backend = {"sentence_transformers": "sentence-transformers",
                   "transformers_mean_pooling": "transformers, mean pooling"}.get(spec.get("backend"), "Hugging Face")
        text = f"{backend} model {spec.get('model')}"
    elif kind == "medclip":
        text = f"MedCLIP-style BERT + projection {spec.get('path')}"
    else:
        return f"unknown encoder {spec!r}"
    if "embed_dim" in spec:
        text += f", D={spec['embed_dim']}"
    return text + (", L2-normalised" if spec.get("normalize", DEFAULT_NORMALIZE[kind]) else ", raw features")


class TextEncoder:
    """A loaded frozen encoder. ``spec`` is the resolved spec plus what loading found (backend, D, limit)."""

    def __init__(self, spec: dict, device: torch.device, encode_batch: Callable[[List[str]], torch.Tensor],
                 count_tokens: Optional[Callable[[str], int]] = None):
        self.spec = spec
        self.device = device
        self._encode_batch = encode_batch
        self._count_tokens = count_tokens

    def _warn_truncation(self, texts: List[str]) -> None:
        limit = self.spec.get("max_tokens")
        if not limit or self._count_tokens is None:
            return
        try:
            too_long = [t for t in texts if self._count_tokens(t) > limit]
        except Exception:  # counting is only for the warning; never fail encoding because of it
            return
        if too_long:
            warnings.warn(f"{len(too_long)} of {len(texts)} texts exceed the {limit}-token limit of "
                          f"{describe(self.spec)} and were truncated (first: {too_long[0][:80]!r}...).")

    @torch.inference_mode()
    def encode(self, texts: List[str], batch_size: int = 64) -> torch.Tensor:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TextEncoderError("encode_texts expects a list of strings.")
        if not texts:
            raise TextEncoderError("encode_texts got an empty list of texts.")
        self._warn_truncation(texts)
        chunks = [texts[i:i + batch_size] for i in range(0, len(texts), batch_size)]
        out = [self._encode_batch(c).float() for c in tqdm(chunks, desc="encoding texts", disable=len(chunks) < 2)]
        emb = torch.cat(out)
        if self.spec.get("normalize", DEFAULT_NORMALIZE.get(self.spec.get("type"), True)):
            emb = F.normalize(emb, dim=-1)
        return emb.cpu()


def _missing_weights_error(what: str, fix: str, reason: object = None) -> TextEncoderError:
    offline = ", and HF_HUB_OFFLINE is set" if _hub_offline() else ""
    msg = f"Cannot find {what}: not a local file or folder and not in the download cache{offline}. {fix}"
    if reason is not None:
        msg += f"\n(underlying error: {str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__})"
    return TextEncoderError(msg)


# ----------------------------------------------------------------------------------------------- open_clip
def _open_clip_checkpoint_for_tag(open_clip, model_name: str, tag: str, cache_dir: Optional[str]) -> str:
    """Local file of an open_clip pretrained tag: cache first, download only when online."""
    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise TextEncoderError(
            f"'{tag}' is neither an open_clip pretrained tag of model '{model_name}' nor an existing checkpoint "
            f"file. Tags of {model_name}: {tags or 'none'}. For a local checkpoint pass its path "
            f"(--pretrained /path/to/open_clip_pytorch_model.bin).")
    if cfg.get("file"):
        return cfg["file"]
    hf_hub, url = cfg.get("hf_hub", ""), cfg.get("url", "")
    repo_id, filename = os.path.split(hf_hub) if hf_hub else ("", "")
    filename = filename or "open_clip_pytorch_model.bin"
    if hf_hub:
        from huggingface_hub import try_to_load_from_cache
        candidates = ["open_clip_model.safetensors", filename] if filename == "open_clip_pytorch_model.bin" else \
            [filename[:-4] + ".safetensors", filename] if filename.endswith((".bin", ".pth")) else [filename]
        for name in candidates:
            cached = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
            if isinstance(cached, str) and os.path.isfile(cached):
                return cached
    if url:
        target = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        if os.path.isfile(target):
            return target
    quick = cfg.get("quick_gelu", False) and not model_name.endswith("-quickgelu")
    model_arg = f"--model {model_name}-quickgelu " if quick else ""
    source = f"https://huggingface.co/{repo_id} (file {filename})" if hf_hub else url
    fix = (f"Download the checkpoint on a machine with internet from {source} and pass the file: "
           f"'nnunet_mulmod_build_text_table ... {model_arg}--pretrained /path/to/{filename}' (Python: "
           f'{{"type": "open_clip", "model": "{model_name}{"-quickgelu" if quick else ""}", '
           f'"pretrained": "/path/to/{filename}"}})'
           + (". The '-quickgelu' model name selects the QuickGELU activation these weights were trained with"
              if quick else "")
           + ". Alternatively copy a Hugging Face cache holding it to this machine and point HF_HOME (or "
             "'cache_dir') at it.")
    what = f"open_clip weights '{tag}' for {model_name}"
    if _hub_offline():
        raise _missing_weights_error(what, fix)
    try:
        return open_clip.download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as e:  # no network, hub errors, checksum failures
        raise _missing_weights_error(what, fix, e) from e


def _load_open_clip(spec: dict, device: torch.device) -> TextEncoder:
    import open_clip
    model_name, pretrained, cache_dir = spec["model"], spec["pretrained"], spec.get("cache_dir")
    if model_name.endswith(".json"):
        if not os.path.isfile(model_name):
            raise TextEncoderError(f"open_clip model config file {model_name} does not exist.")
        open_clip.add_model_config(model_name)  # registers the file under its stem
        model_name = os.path.splitext(os.path.basename(model_name))[0]
    schema = model_name.split(":", 1)[0] if model_name.startswith(("hf-hub:", "local-dir:")) else None
    if schema is None and open_clip.get_model_config(model_name) is None:
        raise TextEncoderError(f"Unknown open_clip model '{model_name}'. Use a name from open_clip.list_models() "
                               f"(e.g. ViT-B-32, ViT-B-16, ViT-L-14), 'hf-hub:org/repo', 'local-dir:/folder' or a "
                               f"model-config JSON file.")

    quick_gelu = False
    if schema is not None:
        checkpoint = None  # the schema's folder/repository holds config and weights
    elif os.path.isfile(pretrained):
        checkpoint = pretrained
    elif os.path.sep in pretrained or pretrained.endswith((".bin", ".pt", ".pth", ".safetensors")):
        raise TextEncoderError(f"open_clip checkpoint file {pretrained} does not exist.")
    else:
        checkpoint = _open_clip_checkpoint_for_tag(open_clip, model_name, pretrained, cache_dir)
        quick_gelu = bool(open_clip.get_pretrained_cfg(model_name, pretrained).get("quick_gelu", False))
    try:
        model = open_clip.create_model(model_name, pretrained=checkpoint, force_quick_gelu=quick_gelu,
                                       device=device, cache_dir=cache_dir, require_pretrained=True)
        tokenizer = open_clip.get_tokenizer(model_name, cache_dir=cache_dir)
    except TextEncoderError:
        raise
    except Exception as e:  # a checkpoint of another architecture, a hub failure for hf-hub: models, ...
        if schema == "hf-hub":
            raise _missing_weights_error(
                f"open_clip model {model_name}",
                f"Download the repository on a machine with internet and pass it as "
                f"--model local-dir:/path/to/folder.", e) from e
        raise TextEncoderError(f"Cannot load open_clip model '{model_name}' with weights {checkpoint or pretrained}: "
                               f"{e}. Check that the checkpoint belongs to this model architecture.") from e
    if hasattr(model, "visual"):
        model.visual = torch.nn.Identity()  # only the text tower is used; frees most of the memory
    model.eval()
    context_length = getattr(tokenizer, "context_length", None) or getattr(model, "context_length", None)

    def encode_batch(texts: List[str]) -> torch.Tensor:
        return model.encode_text(tokenizer(texts).to(device))

    def count_tokens(text: str) -> int:  # + start and end tokens
        return len(tokenizer.encode(text)) + 2

    with torch.inference_mode():
        embed_dim = int(encode_batch(["a"]).shape[-1])
    record = dict(spec, backend="open_clip", embed_dim=embed_dim, max_tokens=context_length, quick_gelu=quick_gelu,
                  library_version=f"open_clip {open_clip.__version__}")
    return TextEncoder(record, device, encode_batch, count_tokens if hasattr(tokenizer, "encode") else None)


# --------------------------------------------------------------------------------------- Hugging Face
def _hf_fix(model_ref: str) -> str:
    return (f"Download it on a machine with internet (e.g. 'huggingface-cli download {model_ref} --local-dir "
            f"/path/to/folder') and pass the folder: 'nnunet_mulmod_build_text_table ... --encoder hf --model "
            f"/path/to/folder' (Python: {{\"type\": \"hf\", \"model\": \"/path/to/folder\"}}), or copy a Hugging Face "
            f"cache holding it to this machine and point HF_HOME (or 'cache_dir') at it.")


def _hf_is_sentence_transformers(model_ref: str, local: bool, cache_dir: Optional[str]) -> bool:
    if local:
        return os.path.isfile(os.path.join(model_ref, "modules.json"))
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    cached = try_to_load_from_cache(model_ref, "modules.json", cache_dir=cache_dir)
    if isinstance(cached, str):
        return True
    if cached is not None:  # the cache knows the repository has no modules.json
        return False
    if _hub_offline():
        config = try_to_load_from_cache(model_ref, "config.json", cache_dir=cache_dir)
        if isinstance(config, str):
            return False  # a plain transformers model in the cache
        raise _missing_weights_error(f"Hugging Face model '{model_ref}'", _hf_fix(model_ref))
    try:
        hf_hub_download(model_ref, "modules.json", cache_dir=cache_dir)
        return True
    except LocalEntryNotFoundError as e:  # a subclass of EntryNotFoundError: the hub could not be reached
        raise _missing_weights_error(f"Hugging Face model '{model_ref}'", _hf_fix(model_ref), e) from e
    except EntryNotFoundError:  # the repository exists and has no modules.json
        return False
    except Exception as e:  # no network, unknown repository, gated model ...
        raise _missing_weights_error(f"Hugging Face model '{model_ref}'", _hf_fix(model_ref), e) from e


def _load_hf(spec: dict, device: torch.device) -> TextEncoder:
    model_ref, cache_dir = spec["model"], spec.get("cache_dir")
    local = os.path.isdir(model_ref)
    if not local and _looks_like_path(model_ref):
        raise TextEncoderError(f"Model folder {model_ref} does not exist (or is not a folder).")
    if local and not any(os.path.isfile(os.path.join(model_ref, f)) for f in ("config.json", "modules.json")):
        raise TextEncoderError(f"{model_ref} has neither config.json (transformers) nor modules.json "
                               f"(sentence-transformers): it is not a Hugging Face model folder. Download the model "
                               f"with 'huggingface-cli download <id> --local-dir {model_ref}'.")
    offline = _hub_offline() and not local
    try:
        if _hf_is_sentence_transformers(model_ref, local, cache_dir):
            from sentence_transformers import SentenceTransformer
            model = SentenceTransformer(model_ref, device=str(device), cache_folder=cache_dir, local_files_only=offline)
            model.eval()
            tokenizer = getattr(model, "tokenizer", None)
            max_tokens = model.max_seq_length

            def encode_batch(texts: List[str]) -> torch.Tensor:
                return model.encode(texts, batch_size=len(texts), convert_to_tensor=True,
                                    normalize_embeddings=False, show_progress_bar=False)
            backend = "sentence_transformers"
        else:
            from transformers import AutoModel, AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(model_ref, cache_dir=cache_dir, local_files_only=offline)
            model = AutoModel.from_pretrained(model_ref, cache_dir=cache_dir, local_files_only=offline).to(device)
            model.eval()
            limits = [tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", None)]
            # model_max_length is a huge sentinel when the tokenizer config does not set it
            limits = [int(x) for x in limits if x is not None and x < 100_000]
            max_tokens = min(limits) if limits else 512

            def encode_batch(texts: List[str]) -> torch.Tensor:
                batch = tokenizer(texts, padding=True, truncation=True, max_length=max_tokens,
                                  return_tensors="pt").to(device)
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            backend = "transformers_mean_pooling"
        with torch.inference_mode():
            embed_dim = int(encode_batch(["a"]).shape[-1])  # also checks that the model runs on text alone
    except TextEncoderError:
        raise
    except Exception as e:  # hub/network errors, missing files, unsupported architectures
        if local:
            raise TextEncoderError(f"Cannot load or run the Hugging Face model in {model_ref}: {e}. The folder must "
                                   f"hold a text encoder: a transformers model (config.json, weights, tokenizer "
                                   f"files) or a sentence-transformers model (modules.json). For CLIP models use "
                                   f"the open_clip encoder.") from e
        raise _missing_weights_error(f"Hugging Face model '{model_ref}'", _hf_fix(model_ref), e) from e

    def count_tokens(text: str) -> int:
        return len(tokenizer(text, truncation=False)["input_ids"])

    import transformers
    record = dict(spec, backend=backend, embed_dim=int(embed_dim), max_tokens=int(max_tokens),
                  library_version=f"transformers {transformers.__version__}")
    return TextEncoder(record, device, encode_batch, count_tokens if tokenizer is not None else None)


# -------------------------------------------------------------------------------------------- MedCLIP
def _load_medclip_projection(folder: str) -> torch.nn.Linear:
    st, pt = os.path.join(folder, "projection.safetensors"), os.path.join(folder, "projection.pt")
    if os.path.isfile(st):
        from safetensors.torch import load_file
        state = load_file(st)
    elif os.path.isfile(pt):
        state = torch.load(pt, map_location="cpu", weights_only=True)
        state = {"weight": state} if isinstance(state, torch.Tensor) else dict(state)
    else:
        raise TextEncoderError(f"MedCLIP folder {folder} has no projection.safetensors or projection.pt "
                               f"(the linear text projection, 'weight' [D, hidden]).")
    if "weight" not in state:
        raise TextEncoderError(f"The projection file in {folder} has no 'weight' tensor (keys: {list(state)}).")
    weight = state["weight"]
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in state)
    linear.load_state_dict(state)
    return linear.eval()


def _load_medclip(spec: dict, device: torch.device) -> TextEncoder:
    import transformers
    folder = spec["path"]
    if not os.path.isdir(folder):
        raise TextEncoderError(
            f"MedCLIP text encoder folder {folder} does not exist. It must hold a Hugging Face BERT "
            f"(config.json, weights, tokenizer) and projection.safetensors or projection.pt with 'weight' "
            f"[D, hidden] (MedCLIP's text_model.projection_head.weight).")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        bert = transformers.AutoModel.from_pretrained(folder, local_files_only=True).to(device).eval()
    except (OSError, ValueError) as e:
        raise TextEncoderError(f"Cannot load the BERT of MedCLIP folder {folder}: {e}. Save it there with "
                               f"BertModel.save_pretrained and tokenizer.save_pretrained.") from e
    projection = _load_medclip_projection(folder).to(device)
    if projection.in_features != bert.config.hidden_size:
        raise TextEncoderError(f"MedCLIP projection expects {projection.in_features} features but the BERT has "
                               f"hidden size {bert.config.hidden_size}: projection and BERT come from different "
                               f"models.")
    max_tokens = min(512, tokenizer.model_max_length)

    def encode_batch(texts: List[str]) -> torch.Tensor:
        batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_tokens,
                          return_tensors="pt").to(device)
        states = bert(**batch, output_hidden_states=True).hidden_states
        mask = batch["attention_mask"].unsqueeze(-1).float()
        layers = torch.stack([states[1], states[2], states[-1]])  # [3, B, L, H]
        pooled = ((layers * mask).sum(2) / mask.sum(1)).mean(0)   # token mean, then layer mean
        return projection(pooled)

    def count_tokens(text: str) -> int:
        return len(tokenizer(text, truncation=False)["input_ids"])

    with torch.inference_mode():
        embed_dim = int(encode_batch(["a"]).shape[-1])
    record = dict(spec, backend="medclip", embed_dim=embed_dim, max_tokens=int(max_tokens),
                  library_version=f"transformers {transformers.__version__}")
    return TextEncoder(record, device, encode_batch, count_tokens)


# ---------------------------------------------------------------------------------------------- public
@functools.lru_cache(maxsize=2)
def _load_cached(spec_json: str, device: str) -> TextEncoder:
    spec = json.loads(spec_json)
    torch_device = torch.device(device)
    loaders = {"open_clip": _load_open_clip, "hf": _load_hf, "medclip": _load_medclip}
    return loaders[spec["type"]](spec, torch_device)


def load_text_encoder(spec: Mapping, device: str = "cpu") -> TextEncoder:
    """The loaded encoder for a spec (cached: a second call with the same spec and device is free)."""
    spec = resolve_spec(spec)
    if spec["type"] == "onehot":
        raise TextEncoderError("'onehot' is not a text encoder: it has no embedding of free text. For class tables "
                               "use nnunet_mulmod.text.table.one_hot_table (or --encoder onehot in the CLI).")
    return _load_cached(json.dumps(spec, sort_keys=True), str(torch.device(device)))


def encode_texts(texts: List[str], spec: Mapping, device: str = "cpu", batch_size: int = 64) -> torch.Tensor:
    """Embeds ``texts`` with the encoder ``spec`` describes: float32 CPU tensor [len(texts), D].

    Deterministic (eval mode, no dropout): the same text always gives the same row. See the module
    docstring for spec keys, truncation, normalisation and offline behaviour.
    """
    if isinstance(texts, str):
        raise TextEncoderError("encode_texts expects a list of strings, not one string.")
    return load_text_encoder(spec, device).encode(list(texts), batch_size=batch_size)


def clear_encoder_cache() -> None:
    _load_cached.cache_clear()
