"""The TAK knowledge base: shipped files, loader errors that name the culprit, prompt texts."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from benchmarks.config import PROJECT_ROOT
from benchmarks.errors import ConfigError
from tak.knowledge import (KNOWLEDGE_DIR, PROMPT_MODES, RELATIONS, Claim, OrganKnowledge, knowledge_sha256,
                           load_knowledge, prompt_pairs)

DATASETS = ("amos", "synapse")


def _classes(dataset: str) -> list[str]:
    labels = json.loads((PROJECT_ROOT / "datasets" / dataset / "dataset.json").read_text())["labels"]
    return sorted(labels, key=labels.__getitem__)


def _sentences(text: str) -> int:
    return len([s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s])


@pytest.mark.parametrize("dataset", DATASETS)
def test_shipped_knowledge_covers_every_class_in_order(dataset: str) -> None:
    kb = load_knowledge(dataset)
    assert kb.dataset == dataset and kb.version.startswith(dataset) and kb.source.startswith("hand-written")
    assert list(kb.organs) == _classes(dataset)
    assert kb.path == KNOWLEDGE_DIR / f"{dataset}.yaml"
    for name, organ in kb.organs.items():
        assert isinstance(organ, OrganKnowledge) and organ.name == name
        assert 2 <= _sentences(organ.position) <= 4, (name, organ.position)
        assert 1 <= _sentences(organ.shape) <= 3, (name, organ.shape)
        if name == "background":
            assert organ.claims == ()
        else:
            assert organ.claims, f"{name} has no claims"
            assert all(c.relation in RELATIONS for c in organ.claims)
    assert len(set(kb.claims)) == len(kb.claims), "duplicate claims"


def test_claim_str_and_frozen() -> None:
    claim = Claim("duodenum", "inferior_to", "stomach")
    assert str(claim) == "duodenum inferior_to stomach" and str(Claim("aorta", "tubular")) == "aorta tubular"
    with pytest.raises(AttributeError):
        claim.subject = "liver"  # type: ignore[misc]


def test_load_by_path_and_sha256(tmp_path: Path) -> None:
    copy = tmp_path / "copy.yaml"
    copy.write_text((KNOWLEDGE_DIR / "amos.yaml").read_text())
    a, b = load_knowledge("amos"), load_knowledge(copy)
    assert b.path == copy and knowledge_sha256(a) == knowledge_sha256(b)
    assert re.fullmatch(r"[0-9a-f]{64}", knowledge_sha256(a))
    edited = tmp_path / "edited.yaml"
    edited.write_text(copy.read_text().replace("version: amos-knowledge-1", "version: amos-knowledge-2"))
    assert knowledge_sha256(load_knowledge(edited)) != knowledge_sha256(a)


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "kb.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def _minimal(claims: list[dict] | None = None, **organ_extra: object) -> dict:
    return {"version": "t-1", "source": "hand-written test", "organs": {
        "background": {"position": "Everything else.", "shape": "None."},
        "liver": {"position": "Right upper.", "shape": "Wedge.", "claims": claims or [], **organ_extra},
        "spleen": {"position": "Left upper.", "shape": "Bean."}}}


@pytest.mark.parametrize("data, fragments", [
    (_minimal([{"subject": "liver", "relation": "next_to", "object": "spleen"}]),
     ["organs.liver.claims[0]", "liver next_to spleen", "unknown relation 'next_to'"]),
    (_minimal([{"subject": "liver", "relation": "left_of", "object": "kidney"}]), ["unknown object organ 'kidney'"]),
    (_minimal([{"subject": "liver", "relation": "left_of"}]), ["needs an object organ"]),
    (_minimal([{"subject": "liver", "relation": "tubular", "object": "spleen"}]), ["takes no object"]),
    (_minimal([{"subject": "liver", "relation": "larger_than", "object": "liver"}]), ["itself"]),
    (_minimal([{"subject": "liver", "relation": "left_of", "object": "spleen", "why": "x"}]), ["claims[0]"]),
    (_minimal(colour="red"), ["organs.liver", "colour"]),
    ({"version": "t", "organs": {"liver": {"position": "a.", "shape": "b."}}}, ["missing top-level key 'source'"]),
    ({**_minimal(), "extra": 1}, ["unknown top-level key", "extra"]),
    ({"version": "t", "source": "s", "organs": {"liver": {"position": "a."}}}, ["organs.liver", "'shape'"]),
    ({"version": "t", "source": "s", "organs": {"liver": {"position": "", "shape": "b."}}}, ["organs.liver.position"]),
    ({"version": "t", "source": "s", "organs": {"background": {"position": "a.", "shape": "b.", "claims": [
        {"subject": "background", "relation": "compact"}]}}}, ["background takes text only"]),
    ("version: [unclosed", ["invalid YAML"]),
    ("- a list", ["mapping at the top level"]),
])
def test_bad_files_raise_named_errors(tmp_path: Path, data: object, fragments: list[str]) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_knowledge(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_missing_file_and_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_knowledge(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="no shipped knowledge for dataset 'brats'.*amos"):
        load_knowledge("brats")


@pytest.mark.parametrize("dataset", DATASETS)
def test_prompt_pairs_every_mode(dataset: str) -> None:
    kb, classes = load_knowledge(dataset), _classes(dataset)
    assert PROMPT_MODES == ("name", "position", "shape", "position+shape")
    first, second = prompt_pairs(kb, classes, "name")
    assert first == second and len(first) == len(classes)
    assert first[0] == "A computerized tomography scan of the human abdomen includes the background."
    assert first[classes.index("right_adrenal_gland")] == \
        "A computerized tomography scan of the human abdomen includes the right adrenal gland."
    positions, same = prompt_pairs(kb, classes, "position")
    assert positions == same == [kb.organs[c].position for c in classes]
    shapes, same = prompt_pairs(kb, classes, "shape")
    assert shapes == same == [kb.organs[c].shape for c in classes]
    assert prompt_pairs(kb, classes, "position+shape") == (positions, shapes)
    reordered = list(reversed(classes))
    assert prompt_pairs(kb, reordered, "shape")[0] == list(reversed(shapes))


def test_prompt_pairs_errors() -> None:
    kb = load_knowledge("synapse")
    with pytest.raises(ConfigError, match="unknown TAK prompt mode 'colour'"):
        prompt_pairs(kb, ["liver"], "colour")
    with pytest.raises(ConfigError, match="duodenum"):
        prompt_pairs(kb, ["liver", "duodenum"], "position")


def test_shipped_files_are_package_data() -> None:
    text = (PROJECT_ROOT / "pyproject.toml").read_text()
    assert 'tak = ["knowledge/*.yaml"]' in text
