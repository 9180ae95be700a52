"""Text encoders and their embedding cache (``tak/encoders.py``, ``tak/cache.py``), with real components.

MiniLM runs on its shipped weights. The open_clip path is proven on tiny CLIP architectures built
offline (random weights saved into a tmp folder): a CLIP text transformer, and a Hugging Face BERT text
tower with a local ``config.json`` (the BiomedCLIP layout).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.errors import ConfigError
from tak import encoders
from tak.cache import EmbeddingCache, batch_key
from tak.encoders import (ENCODERS, MissingWeightsError, describe_encoders, embed_texts, encoder_info,
                          weights_dir)

REPO = Path(__file__).resolve().parent.parent
LIVER_A = "The liver is a large organ in the upper right abdomen."
LIVER_B = "The liver lies in the right upper quadrant of the abdomen."
OTHER = "The stock market closed higher today."


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the repo's weights/ or .cache/: both point into tmp_path."""
    monkeypatch.setenv("ORGANBENCH_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("ORGANBENCH_CACHE", str(tmp_path / "cache"))


# -- minilm --------------------------------------------------------------------------------------------
def test_minilm_shape_determinism_and_similarity(tmp_path: Path) -> None:
    vectors, record = embed_texts("minilm", [LIVER_A, LIVER_B, OTHER], cache_dir=tmp_path / "c1")
    assert vectors.shape == (3, 384) and vectors.dtype == torch.float32 and vectors.device.type == "cpu"
    assert not torch.allclose(vectors.norm(dim=1), torch.ones(3))         # raw, not normalised
    again, _ = embed_texts("minilm", [OTHER, LIVER_A], cache_dir=tmp_path / "c2")   # fresh cache, other batch
    assert torch.equal(again, vectors[[2, 0]])
    unit = torch.nn.functional.normalize(vectors, dim=1)
    assert unit[0] @ unit[1] > 0.6 > 0.2 > unit[0] @ unit[2]
    info = encoder_info("minilm")
    assert info.dim == 384
    assert record == {"text_encoder": "minilm", "text_encoder_weights": info.weights,
                      "text_encoder_sha256": info.weights_sha256,
                      "text_cache_key": batch_key("minilm", info.weights_sha256, [LIVER_A, LIVER_B, OTHER])}
    weights = Path(info.weights) / "model.safetensors"
    digest = hashlib.sha256(b"model.safetensors\0" + weights.read_bytes()).hexdigest()
    assert info.weights_sha256 == digest


def test_minilm_matches_sentence_transformers_up_to_scale(tmp_path: Path) -> None:
    """Our plain-transformers mean pooling is the sentence-transformers recipe minus its final Normalize."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    ours, _ = embed_texts("minilm", [LIVER_A, OTHER], cache_dir=tmp_path)
    st = sentence_transformers.SentenceTransformer(encoder_info("minilm").weights, device="cpu")
    theirs = torch.as_tensor(st.encode([LIVER_A, OTHER]))
    torch.testing.assert_close(torch.nn.functional.normalize(ours, dim=1), theirs, atol=1e-5, rtol=0)


def test_cache_hit_skips_model_and_key_tracks_text(tmp_path: Path) -> None:
    first, rec1 = embed_texts("minilm", [LIVER_A, OTHER], cache_dir=tmp_path)
    encoders._load_encoder.cache_clear()                 # a new process would have no loaded model either
    loads = encoders.MODEL_LOADS["minilm"]
    second, rec2 = embed_texts("minilm", [LIVER_A, OTHER], cache_dir=tmp_path)
    assert encoders.MODEL_LOADS["minilm"] == loads       # served from disk, no model load
    assert torch.equal(first, second) and rec1 == rec2
    _, rec3 = embed_texts("minilm", [LIVER_A, OTHER + " "], cache_dir=tmp_path)
    assert rec3["text_cache_key"] != rec1["text_cache_key"]
    assert encoders.MODEL_LOADS["minilm"] == loads + 1   # the changed text needed the model
    _, rec4 = embed_texts("minilm", [OTHER, LIVER_A], cache_dir=tmp_path)
    assert rec4["text_cache_key"] != rec1["text_cache_key"]   # order is part of the key
    cache = EmbeddingCache("minilm", rec1["text_encoder_sha256"], 384, tmp_path)
    assert cache.path(LIVER_A) != cache.path(OTHER) and cache.path(LIVER_A).is_file()


def test_cache_hit_in_fresh_process_imports_no_model_library(tmp_path: Path) -> None:
    embed_texts("minilm", [LIVER_A], cache_dir=tmp_path)
    code = ("import sys; from tak.encoders import embed_texts, MODEL_LOADS; "
            f"v, _ = embed_texts('minilm', [{LIVER_A!r}], cache_dir={str(tmp_path)!r}); "
            "assert v.shape == (1, 384) and not MODEL_LOADS; "
            "print(sorted(m for m in ('transformers', 'open_clip') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_corrupt_cache_file_is_recomputed(tmp_path: Path, damage: str) -> None:
    good, rec = embed_texts("minilm", [LIVER_B], cache_dir=tmp_path)
    path = EmbeddingCache("minilm", rec["text_encoder_sha256"], 384, tmp_path).path(LIVER_B)
    blob = path.read_bytes()
    path.write_bytes({"truncate": blob[:-7], "flip": blob[:100] + bytes([blob[100] ^ 1]) + blob[101:],
                      "garbage": b"not an embedding", "empty": b""}[damage])
    again, _ = embed_texts("minilm", [LIVER_B], cache_dir=tmp_path)
    assert torch.equal(again, good)
    assert path.read_bytes() == blob                       # rewritten with the recomputed row
    assert not [p for p in path.parent.iterdir() if p.suffix == ".tmp"]


def test_cache_rejects_entry_copied_under_another_key(tmp_path: Path) -> None:
    cache = EmbeddingCache("minilm", "0" * 64, 4, tmp_path)
    cache.put("a", torch.arange(4.0))
    torch.testing.assert_close(cache.get("a"), torch.arange(4.0))
    cache.path("b").parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(cache.path("a"), cache.path("b"))
    assert cache.get("b") is None
    assert EmbeddingCache("minilm", "0" * 64, 5, tmp_path).get("a") is None   # another width
    with pytest.raises(ValueError):
        cache.put("c", torch.zeros(3))


def test_empty_text_list(tmp_path: Path) -> None:
    vectors, record = embed_texts("minilm", [], cache_dir=tmp_path)
    assert vectors.shape == (0, 384) and record["text_encoder"] == "minilm"


# -- open_clip (tiny architectures built offline) ------------------------------------------------------
TINY_VISION = {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16}


def _save_open_clip_folder(folder: Path, model_cfg: dict, **create_kwargs: object) -> torch.nn.Module:
    """Write open_clip_config.json, build the architecture with random weights, save open_clip_pytorch_model.bin."""
    import open_clip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    torch.manual_seed(0)
    model = open_clip.create_model_and_transforms(f"local-dir:{folder}", **create_kwargs)[0].eval()
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return model


def test_open_clip_local_dir_end_to_end(tmp_path: Path) -> None:
    import open_clip
    folder = weights_dir("clip")                                    # $ORGANBENCH_WEIGHTS/clip
    model_cfg = {"embed_dim": 24, "quick_gelu": True, "vision_cfg": TINY_VISION,
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    model = _save_open_clip_folder(folder, model_cfg)
    info = encoder_info("clip")
    assert (info.name, info.dim, Path(info.weights)) == ("clip", 24, folder)
    blob = b"".join(f.name.encode() + b"\0" + f.read_bytes()
                    for f in (folder / "open_clip_config.json", folder / "open_clip_pytorch_model.bin"))
    assert info.weights_sha256 == hashlib.sha256(blob).hexdigest()
    texts = ["liver", "the spleen lies posterior to the stomach"]
    vectors, record = embed_texts("clip", texts, cache_dir=tmp_path / "cache")
    with torch.no_grad():
        expected = model.encode_text(open_clip.get_tokenizer("ViT-B-16")(texts))
    assert vectors.shape == (2, 24)
    torch.testing.assert_close(vectors, expected, atol=1e-5, rtol=1e-5)
    assert record["text_encoder_sha256"] == info.weights_sha256 and record["text_encoder_weights"] == str(folder)
    # New weights -> new sha -> new cache entries (never the old rows).
    torch.save({k: v + 0.01 for k, v in model.state_dict().items()}, folder / "open_clip_pytorch_model.bin")
    changed, record2 = embed_texts("clip", texts, cache_dir=tmp_path / "cache")
    assert record2["text_encoder_sha256"] != info.weights_sha256 and not torch.equal(changed, vectors)


def test_open_clip_hf_text_tower_from_local_config(tmp_path: Path) -> None:
    """The BiomedCLIP layout: an HF BERT text tower whose config.json and tokenizer sit in the folder."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "tiny-biomedclip"
    folder.mkdir()
    transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=64).save_pretrained(folder)
    minilm = Path(encoder_info("minilm").weights)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm / name, folder / name)
    text_cfg = {"hf_model_name": "example-org/tiny-bert-not-on-any-hub", "hf_tokenizer_name": "example-org/tiny-bert",
                "hf_proj_type": "linear", "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 64}
    local_text = {**text_cfg, "hf_model_name": str(folder), "hf_model_pretrained": False}
    model = _save_open_clip_folder(folder, {"embed_dim": 16, "vision_cfg": TINY_VISION, "text_cfg": text_cfg},
                                   text_cfg=local_text)
    info = encoder_info("biomedclip", folder)
    assert info.dim == 16
    vectors, _ = embed_texts("biomedclip", ["pancreas", "the aorta is tubular"], folder, tmp_path / "cache")
    import open_clip
    with torch.no_grad():
        expected = model.encode_text(open_clip.get_tokenizer(f"local-dir:{folder}")(["pancreas", "the aorta is tubular"]))
    torch.testing.assert_close(vectors, expected, atol=1e-5, rtol=1e-5)
    (folder / "config.json").unlink()
    with pytest.raises(MissingWeightsError, match="tiny-bert-not-on-any-hub"):
        encoder_info("biomedclip", folder)


# -- missing weights and the overview ------------------------------------------------------------------
def test_missing_weights_names_hub_id_and_folder(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError) as err:
        encoder_info("biomedclip")
    message = str(err.value)
    assert "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224" in message
    assert str(tmp_path / "weights" / "biomedclip") in message
    assert isinstance(err.value, ConfigError)
    with pytest.raises(MissingWeightsError, match="vit_base_patch16_clip_224.openai"):
        embed_texts("clip", ["liver"], tmp_path / "elsewhere")
    for name in ("pmc-clip", "unimed-clip"):
        with pytest.raises(MissingWeightsError, match=f"{tmp_path / 'weights' / name}.*open_clip"):
            encoder_info(name)
    (tmp_path / "weights" / "clip").mkdir(parents=True)       # a folder without a checkpoint
    with pytest.raises(MissingWeightsError, match="open_clip_pytorch_model.bin"):
        encoder_info("clip")
    with pytest.raises(ConfigError, match="unknown text encoder"):
        encoder_info("bert-large")


def test_describe_encoders_lists_all() -> None:
    table = describe_encoders()
    for name in ENCODERS:
        assert f"\n{name} " in table
    assert "minilm       384  present" in table
    assert "biomedclip   512  absent" in table and "hf download microsoft/BiomedCLIP" in table


def test_loading_sets_offline_mode() -> None:
    embed_texts("minilm", [LIVER_A])
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    import huggingface_hub.constants
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True
