"""Text-embedding speed (``make bench``; in ``make test`` each runs once): MiniLM on the 32 AMOS prompts
(16 classes x position + shape), with the model already loaded but an empty cache, and from the cache.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from tak.encoders import embed_texts
from tak.knowledge import load_knowledge, prompt_pairs


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    kb = load_knowledge("amos")
    first, second = prompt_pairs(kb, list(kb.organs), "position+shape")
    return first + second


def test_embed_minilm_uncached(benchmark, prompts: list[str], tmp_path: Path) -> None:
    embed_texts("minilm", prompts[:1], cache_dir=tmp_path / "warm")          # load the model outside the timing
    fresh = (tmp_path / f"round{i}" for i in itertools.count())
    vectors, _ = benchmark.pedantic(lambda: embed_texts("minilm", prompts, cache_dir=next(fresh)),
                                    rounds=3, warmup_rounds=0, iterations=1)
    assert vectors.shape == (len(prompts), 384)


def test_embed_minilm_cached(benchmark, prompts: list[str], tmp_path: Path) -> None:
    embed_texts("minilm", prompts, cache_dir=tmp_path)
    vectors, _ = benchmark.pedantic(embed_texts, args=("minilm", prompts), kwargs={"cache_dir": tmp_path},
                                    rounds=20, warmup_rounds=1, iterations=1)
    assert vectors.shape == (len(prompts), 384)
