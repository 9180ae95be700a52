"""Textual anatomical knowledge (TAK paper, section 3.2): per-class position and shape texts plus
checkable claims, loaded from a YAML knowledge base.

The shipped, hand-written bases live in ``tak/knowledge/<dataset>.yaml``. File layout::

    version: amos-knowledge-1
    source: hand-written ...
    dataset: amos
    organs:
      background: {position: ..., shape: ...}          # text only, never claims
      duodenum:
        position: ...                                 # relation to the neighbouring organs
        shape: ...
        claims:
          - {subject: duodenum, relation: inferior_to, object: stomach}
          - {subject: duodenum, relation: curved}

Directions in claims are the *patient's* (left_of = towards the patient's left side). Generated
files may also carry ``generated`` (provenance) and ``dropped_claims`` (claims the validator
rejected, with their measured support); both are kept as plain data.

>>> str(Claim("duodenum", "inferior_to", "stomach"))
'duodenum inferior_to stomach'
>>> str(Claim("aorta", "tubular"))
'aorta tubular'
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence


from methods.common.errors import ConfigError
from methods.common.strict_yaml import load_yaml

KNOWLEDGE_DIR = Path(__file__).resolve().parent / "knowledge"

# Claim vocabulary. Spatial relations compare two organs in the patient's frame; unary shape
# relations describe one organ; size relations compare two organs' volumes.
SPATIAL_RELATIONS = ("left_of", "right_of", "anterior_to", "posterior_to", "superior_to", "inferior_to",
                     "adjacent_to", "surrounds")
UNARY_SHAPE_RELATIONS = ("elongated", "tubular", "compact", "curved")
SIZE_RELATIONS = ("larger_than", "smaller_than")
BINARY_RELATIONS = SPATIAL_RELATIONS + SIZE_RELATIONS
RELATIONS = SPATIAL_RELATIONS + UNARY_SHAPE_RELATIONS + SIZE_RELATIONS

PROMPT_MODES = ("name", "position", "shape", "position+shape")
NAME_TEMPLATE = "A computerized tomography scan of the human abdomen includes the {organ}."

_TOP_KEYS = {"version", "source", "dataset", "organs", "generated", "dropped_claims", "notes"}
_ORGAN_KEYS = {"position", "shape", "claims"}
_CLAIM_KEYS = {"subject", "relation", "object"}


@dataclass(frozen=True)
class Claim:
    """One checkable statement: ``subject relation [object]`` (organ class names)."""

    subject: str
    relation: str
    object: str | None = None

    def __str__(self) -> str:
        return " ".join(p for p in (self.subject, self.relation, self.object) if p)

    def as_dict(self) -> dict[str, str]:
        """The YAML form (``object`` left out for unary relations)."""
        out = {"subject": self.subject, "relation": self.relation}
        if self.object is not None:
            out["object"] = self.object
        return out


@dataclass(frozen=True)
class OrganKnowledge:
    """Position text, shape text and claims of one class."""

    name: str
    position: str
    shape: str
    claims: tuple[Claim, ...] = ()


@dataclass
class KnowledgeBase:
    """A dataset's knowledge: one :class:`OrganKnowledge` per class (background included)."""

    dataset: str
    version: str
    source: str
    organs: dict[str, OrganKnowledge]
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def claims(self) -> list[Claim]:
        """Every claim, in organ order."""
        return [c for organ in self.organs.values() for c in organ.claims]


def display_name(class_name: str) -> str:
    """``"right_adrenal_gland"`` -> ``"right adrenal gland"``."""
    return class_name.replace("_", " ")


def check_claim(claim: Claim, organs: Sequence[str], where: str) -> None:
    """Raise :class:`ConfigError` (naming ``where`` and the claim) unless ``claim`` uses the
    vocabulary correctly and names organs in ``organs``."""
    if claim.relation not in RELATIONS:
        raise ConfigError(f"{where}: claim '{claim}' has unknown relation {claim.relation!r}; "
                          f"known: {', '.join(RELATIONS)}")
    if claim.relation in BINARY_RELATIONS and not claim.object:
        raise ConfigError(f"{where}: claim '{claim}': relation {claim.relation!r} needs an object organ")
    if claim.relation in UNARY_SHAPE_RELATIONS and claim.object:
        raise ConfigError(f"{where}: claim '{claim}': relation {claim.relation!r} takes no object")
    for role, name in (("subject", claim.subject), ("object", claim.object)):
        if name is not None and (name not in organs or name == "background"):
            raise ConfigError(f"{where}: claim '{claim}': unknown {role} organ {name!r}")
    if claim.object == claim.subject:
        raise ConfigError(f"{where}: claim '{claim}' relates an organ to itself")


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: must be a non-empty string, got {value!r}")
    return " ".join(value.split())


def parse_knowledge(data: Any, where: str, path: Path | None = None) -> KnowledgeBase:
    """Build a :class:`KnowledgeBase` from parsed YAML; ``where`` names the source in errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level, got {type(data).__name__}")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key(s) {unknown}; allowed: {sorted(_TOP_KEYS)}")
    for key in ("version", "source", "organs"):
        if key not in data:
            raise ConfigError(f"{where}: missing top-level key {key!r}")
    version, source = _text(data["version"], f"{where}: version"), _text(data["source"], f"{where}: source")
    raw_organs = data["organs"]
    if not isinstance(raw_organs, dict) or not raw_organs:
        raise ConfigError(f"{where}: 'organs' must be a non-empty mapping of class name -> entry")
    names = [str(n) for n in raw_organs]
    organs: dict[str, OrganKnowledge] = {}
    for name, entry in raw_organs.items():
        here = f"{where}: organs.{name}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{here}: expected a mapping with position/shape/claims")
        bad = sorted(set(entry) - _ORGAN_KEYS)
        if bad:
            raise ConfigError(f"{here}: unknown key(s) {bad}; allowed: {sorted(_ORGAN_KEYS)}")
        for key in ("position", "shape"):
            if key not in entry:
                raise ConfigError(f"{here}: missing key {key!r}")
        raw_claims = entry.get("claims") or []
        if not isinstance(raw_claims, list):
            raise ConfigError(f"{here}.claims: expected a list")
        if name == "background" and raw_claims:
            raise ConfigError(f"{here}.claims: background takes text only, no claims")
        claims = []
        for i, raw in enumerate(raw_claims):
            at = f"{here}.claims[{i}]"
            if not isinstance(raw, dict) or not {"subject", "relation"} <= set(raw) or set(raw) - _CLAIM_KEYS:
                raise ConfigError(f"{at}: expected {{subject, relation[, object]}}, got {raw!r}")
            obj = raw.get("object")
            claim = Claim(str(raw["subject"]), str(raw["relation"]), None if obj is None else str(obj))
            check_claim(claim, names, at)
            claims.append(claim)
        organs[str(name)] = OrganKnowledge(str(name), _text(entry["position"], f"{here}.position"),
                                           _text(entry["shape"], f"{here}.shape"), tuple(claims))
    extra = {k: data[k] for k in ("generated", "dropped_claims", "notes") if k in data}
    return KnowledgeBase(str(data.get("dataset", "")), version, source, organs, path, extra)


def shipped_knowledge_path(dataset: str) -> Path:
    """``tak/knowledge/<dataset>.yaml`` (error lists the shipped datasets)."""
    path = KNOWLEDGE_DIR / f"{dataset}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in KNOWLEDGE_DIR.glob("*.yaml"))
        raise ConfigError(f"no shipped knowledge for dataset {dataset!r} ({path}); shipped: {known}")
    return path


def load_knowledge(dataset_or_path: str | Path) -> KnowledgeBase:
    """Load a knowledge base: a dataset name (``"amos"``) -> the shipped file; otherwise a YAML path.

    Errors (:class:`ConfigError`) name the file and the offending key or claim.
    """
    text = str(dataset_or_path)
    is_path = (isinstance(dataset_or_path, Path) or text.endswith((".yaml", ".yml")) or "/" in text
               or Path(text).is_file())
    path = Path(dataset_or_path) if is_path else shipped_knowledge_path(text)
    if not path.is_file():
        raise ConfigError(f"{path}: knowledge file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({type(exc).__name__})") from None
    data = load_yaml(text, str(path))
    kb = parse_knowledge(data, str(path), path)
    if not kb.dataset:
        kb.dataset = path.stem
    return kb


def knowledge_sha256(kb: KnowledgeBase) -> str:
    """SHA-256 of the knowledge's content (dataset, version, source, texts, claims), independent of
    YAML formatting and of the file's location: the id to record with a run that used it."""
    content = {"dataset": kb.dataset, "version": kb.version, "source": kb.source,
               "organs": [[o.name, o.position, o.shape, [c.as_dict() for c in o.claims]] for o in kb.organs.values()]}
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def prompt_pairs(kb: KnowledgeBase, class_names: Sequence[str], mode: str) -> tuple[list[str], list[str]]:
    """Two text lists, one entry per class of ``class_names`` (in that order), for the TAK head.

    ``name``: both lists "A computerized tomography scan of the human abdomen includes the <class>.";
    ``position`` / ``shape``: both lists the position / shape texts; ``position+shape``: (positions, shapes).
    """
    if mode not in PROMPT_MODES:
        raise ConfigError(f"unknown TAK prompt mode {mode!r}; known: {', '.join(PROMPT_MODES)}")
    missing = [c for c in class_names if c not in kb.organs]
    if missing:
        raise ConfigError(f"knowledge {kb.path or kb.version} has no entry for class(es) {missing}")
    if mode == "name":
        names = [NAME_TEMPLATE.format(organ=display_name(c)) for c in class_names]
        return names, list(names)
    positions = [kb.organs[c].position for c in class_names]
    shapes = [kb.organs[c].shape for c in class_names]
    if mode == "position":
        return positions, list(positions)
    if mode == "shape":
        return shapes, list(shapes)
    return positions, shapes
