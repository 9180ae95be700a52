"""The TAK paper's two-agent knowledge generator (section 3.2), against any OpenAI-compatible LLM.

Agent 1 (the LLM) receives the names of all classes, then, per organ, the paper's two templates
(:data:`POSITION_TEMPLATE`, :data:`SHAPE_TEMPLATE`, ``[CLS]`` = the organ name) and writes the
position and shape descriptions. Agent 2 asks the LLM to turn every description into claims in the
vocabulary of :mod:`tak.knowledge` (a JSON list), drops what it cannot parse, then measures each
claim on the *labeled* label maps with :func:`tak.validator.validate_claims` and keeps only the
supported ones. The result is written as a new knowledge YAML with provenance (model, endpoint
without credentials, date) and a record of every dropped claim with its measured support. An
existing file is never overwritten, and the shipped files in ``tak/knowledge/`` are never written.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from methods.common.errors import ConfigError
from tak.knowledge import (BINARY_RELATIONS, KNOWLEDGE_DIR, RELATIONS, SIZE_RELATIONS, SPATIAL_RELATIONS,
                           UNARY_SHAPE_RELATIONS, Claim, KnowledgeBase, display_name, parse_knowledge)
from tak.llm import ChatClient, LLMError
from tak.validator import validate_claims

log = logging.getLogger(__name__)

POSITION_TEMPLATE = "Describe the relative positional relationship of [CLS] with other organs."
SHAPE_TEMPLATE = "Describe the shape and structure of [CLS]"
SYSTEM_PROMPT = ("You are an expert in human abdominal anatomy and radiology. Answer in plain text, "
                 "2 to 4 sentences, precise and factual, using the patient's left and right.")
BACKGROUND_TEXT = ("Everything in the abdominal CT scan that is not one of the segmented organs: air, skin, fat, "
                   "muscle, bone and bowel, surrounding all organs.")
BACKGROUND_SHAPE = "No single shape; an irregular region around and between all organs."


def class_list_message(class_names: Sequence[str]) -> str:
    """The first user message of agent 1: the names of all classes to be segmented."""
    organs = [display_name(c) for c in class_names if c != "background"]
    return "The classes to be segmented in abdominal CT scans are: " + ", ".join(organs) + "."


def agent1_describe(client: ChatClient, class_names: Sequence[str]) -> dict[str, dict[str, str]]:
    """Agent 1: ``{organ: {"position": text, "shape": text}}`` for every non-background class."""
    intro = class_list_message(class_names)
    answers: dict[str, dict[str, str]] = {}
    for organ in class_names:
        if organ == "background":
            continue
        answers[organ] = {}
        for kind, template in (("position", POSITION_TEMPLATE), ("shape", SHAPE_TEMPLATE)):
            prompt = template.replace("[CLS]", display_name(organ))
            text = client.chat([{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": intro},
                                {"role": "user", "content": prompt}]).strip()
            if not text:
                raise LLMError(f"LLM at {client.public_url} returned an empty {kind} description of {organ}")
            answers[organ][kind] = text
            log.info("agent 1: %s description of %s (%d characters)", kind, organ, len(text))
    return answers


def claims_prompt(organ: str, kind: str, text: str, class_names: Sequence[str]) -> str:
    """Agent 2's request to turn one description into claims (JSON list in the claim vocabulary)."""
    organs = ", ".join(c for c in class_names if c != "background")
    return (
        "Convert the description below into checkable claims. Answer with a JSON list only, no other text. "
        'Each element is {"subject": ORGAN, "relation": RELATION, "object": ORGAN or null}.\n'
        f"ORGAN names (use exactly these): {organs}.\n"
        f"Spatial relations, in the patient's directions, object = another organ: {', '.join(SPATIAL_RELATIONS)} "
        "(adjacent_to: surfaces within about 1 cm; surrounds: the object lies inside the subject's outline).\n"
        f"Shape relations about the subject alone, object null: {', '.join(UNARY_SHAPE_RELATIONS)}.\n"
        f"Size relations by volume, object = another organ: {', '.join(SIZE_RELATIONS)}.\n"
        "Only include claims the description states or directly implies.\n\n"
        f"Description of the {kind} of {display_name(organ)}:\n{text}")


def _norm(name: Any) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")


@dataclass
class ParsedClaims:
    """Claims parsed from one agent-2 answer and the items dropped (``(item, reason)``)."""

    claims: list[Claim] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)


def parse_claims(answer: str, class_names: Sequence[str]) -> ParsedClaims:
    """Parse an LLM answer into claims, robustly: code fences and prose around the JSON list are
    ignored, names are normalised (``"Right Kidney"`` -> ``right_kidney``); items with unknown
    relations or organs, or a wrong object, are dropped with a reason."""
    out = ParsedClaims()
    organs = {_norm(c): c for c in class_names if c != "background"}
    start, end = answer.find("["), answer.rfind("]")
    items: Any = None
    if start >= 0 and end > start:
        try:
            items = json.loads(answer[start:end + 1])
        except ValueError:
            items = None
    if items is None:
        try:
            items = json.loads(answer.strip().strip("`").removeprefix("json"))
        except ValueError:
            out.dropped.append((answer[:200], "unparseable: no JSON list of claims in the answer"))
            return out
    if isinstance(items, dict):
        items = items.get("claims", [items])
    if not isinstance(items, list):
        out.dropped.append((answer[:200], "unparseable: the JSON is not a list of claims"))
        return out
    for item in items:
        raw = json.dumps(item, ensure_ascii=False)
        if not isinstance(item, dict) or "subject" not in item or "relation" not in item:
            out.dropped.append((raw, "not an object with subject and relation"))
            continue
        relation, subject = _norm(item["relation"]), _norm(item["subject"])
        obj = item.get("object")
        obj = None if obj in (None, "", "null", "none") else _norm(obj)
        if relation not in RELATIONS:
            out.dropped.append((raw, f"unknown relation {item['relation']!r}"))
        elif subject not in organs:
            out.dropped.append((raw, f"unknown subject organ {item['subject']!r}"))
        elif relation in BINARY_RELATIONS and (obj is None or obj not in organs):
            out.dropped.append((raw, f"relation {relation} needs a known object organ, got {item.get('object')!r}"))
        elif relation in UNARY_SHAPE_RELATIONS and obj is not None:
            out.dropped.append((raw, f"relation {relation} takes no object, got {item.get('object')!r}"))
        elif obj is not None and organs[obj] == organs[subject]:
            out.dropped.append((raw, "relates an organ to itself"))
        else:
            claim = Claim(organs[subject], relation, organs[obj] if obj else None)
            if claim not in out.claims:
                out.claims.append(claim)
    return out


def agent2_claims(client: ChatClient, descriptions: dict[str, dict[str, str]],
                  class_names: Sequence[str]) -> tuple[dict[str, list[Claim]], list[dict[str, Any]]]:
    """Agent 2, first half: claims per organ (deduplicated) and the parse-stage drop records."""
    per_organ: dict[str, list[Claim]] = {}
    dropped: list[dict[str, Any]] = []
    for organ, texts in descriptions.items():
        per_organ[organ] = []
        for kind in ("position", "shape"):
            answer = client.chat([{"role": "system", "content": "You convert anatomy text into JSON claims."},
                                  {"role": "user", "content": claims_prompt(organ, kind, texts[kind], class_names)}])
            parsed = parse_claims(answer, class_names)
            for raw, reason in parsed.dropped:
                log.warning("agent 2: dropped from the %s description of %s: %s (%s)", kind, organ, raw, reason)
                dropped.append({"organ": organ, "description": kind, "claim": raw, "stage": "parse", "reason": reason})
            per_organ[organ] += [c for c in parsed.claims if c not in per_organ[organ]]
    return per_organ, dropped


def _num(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), 3)


def generate_knowledge(client: ChatClient, dataset: str, class_names: Sequence[str],
                       label_maps: Sequence[np.ndarray], spacings: Sequence[Sequence[float]], out: str | Path,
                       date: str | None = None) -> KnowledgeBase:
    """Run both agents and write the knowledge YAML to ``out`` (which must not exist yet).

    ``label_maps`` (LPS arrays, spacings in mm) are the labeled cases agent 2 checks claims on;
    ``class_names`` are the dataset's classes in label order (background first).
    """
    out = Path(out)
    if out.exists():
        raise ConfigError(f"{out}: refusing to overwrite an existing file; choose a new --out path")
    if out.resolve().parent == KNOWLEDGE_DIR.resolve():
        raise ConfigError(f"{out}: refusing to write into the shipped knowledge folder {KNOWLEDGE_DIR}")
    if not label_maps:
        raise ConfigError("the generator needs at least one labeled label map to check claims on")
    date = date or dt.date.today().isoformat()
    label_index = {name: i for i, name in enumerate(class_names)}
    descriptions = agent1_describe(client, class_names)
    candidates, dropped = agent2_claims(client, descriptions, class_names)
    flat = [(organ, c) for organ, claims in candidates.items() for c in claims]
    results = validate_claims([c for _, c in flat], label_maps, spacings, label_index)
    kept: dict[str, list[dict[str, str]]] = {organ: [] for organ in candidates}
    for (organ, claim), result in zip(flat, results):
        if result.supported:
            kept[organ].append(claim.as_dict())
            continue
        reason = "not measurable on the labeled data" if result.supported is None else "contradicted by the labeled data"
        log.info("agent 2: dropped '%s' (%s; %s)", claim, reason, result.detail)
        dropped.append({"organ": organ, "claim": str(claim), "stage": "validation", "reason": reason,
                        "support_share": _num(result.support_share), "measured": _num(result.measured),
                        "n_volumes": result.n_volumes, "detail": result.detail})
    organs: dict[str, Any] = {"background": {"position": BACKGROUND_TEXT, "shape": BACKGROUND_SHAPE}}
    for organ, texts in descriptions.items():
        organs[organ] = {"position": texts["position"], "shape": texts["shape"], "claims": kept[organ]}
    data = {"version": f"{dataset}-generated-{date}",
            "source": f"generated by {client.model} at {client.public_base_url} on {date}",
            "dataset": dataset,
            "generated": {"model": client.model, "base_url": client.public_base_url, "date": date,
                          "labeled_volumes": len(label_maps), "position_template": POSITION_TEMPLATE,
                          "shape_template": SHAPE_TEMPLATE, "claims_proposed": len(flat),
                          "claims_kept": sum(len(v) for v in kept.values())},
            "organs": organs, "dropped_claims": dropped}
    kb = parse_knowledge(data, str(out), out)  # the file we write must load back
    text = client.redact(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100))
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(out, "x", encoding="utf-8") as handle:  # exclusive create: never overwrite
            handle.write(text)
    except FileExistsError:
        raise ConfigError(f"{out}: refusing to overwrite an existing file; choose a new --out path") from None
    log.info("wrote %s: %d claim(s) kept, %d dropped", out, data["generated"]["claims_kept"], len(dropped))
    return kb
