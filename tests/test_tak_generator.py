"""The two-agent generator and ``python -m benchmarks tak`` against a real local HTTP server speaking the
OpenAI chat-completions protocol with canned answers (no network, seconds)."""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from benchmarks.config import PROJECT_ROOT
from benchmarks.data.synthetic import write_cohort
from benchmarks.errors import ConfigError
from benchmarks.cli import main
from tak.generator import POSITION_TEMPLATE, SHAPE_TEMPLATE, generate_knowledge, parse_claims
from tak.knowledge import KNOWLEDGE_DIR, Claim, load_knowledge
from tak.llm import ChatClient, LLMError

SECRET = "sk-test-SECRET-0123456789abcdef"
MODEL = "fake-gpt"
CLASSES = ("background", "liver", "spleen", "aorta")

# agent 2's canned answers per (organ, description kind); everything else gets "[]"
CLAIM_ANSWERS = {
    ("spleen", "position"): json.dumps([
        {"subject": "spleen", "relation": "left_of", "object": "liver"},      # true -> kept
        {"subject": "Spleen", "relation": "right of", "object": "Liver"},     # false -> dropped (validation)
        {"subject": "spleen", "relation": "next_to", "object": "liver"},      # unknown relation -> dropped
        {"subject": "spleen", "relation": "left_of", "object": "kidney"}]),   # unknown organ -> dropped
    ("aorta", "shape"): '```json\n[{"subject": "aorta", "relation": "tubular", "object": null}]\n```',
    ("liver", "shape"): "Sorry, I cannot express that as claims.",
    ("liver", "position"): 'Here you go: [{"subject": "liver", "relation": "larger_than", "object": "aorta"}] Hope it helps.',
}


def _answer(messages: list[dict[str, str]]) -> str:
    last = messages[-1]["content"]
    if m := re.fullmatch(r"Describe the relative positional relationship of (.+) with other organs\.", last):
        return f"The {m.group(1)} has its neighbours around it. It is in the abdomen."
    if m := re.fullmatch(r"Describe the shape and structure of (.+)", last):
        return f"The {m.group(1)} has a characteristic shape."
    if m := re.search(r"Description of the (position|shape) of (.+?):\n", last):
        return CLAIM_ANSWERS.get((m.group(2).replace(" ", "_"), m.group(1)), "[]")
    return "unexpected request"


class FakeLLM(ThreadingHTTPServer):
    """Records every request; ``mode`` = "ok", "http_error" (echoes the auth header!) or "slow"."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, Any]] = []
        self.mode = "ok"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: FakeLLM

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        if self.server.mode == "http_error":
            payload = json.dumps({"error": f"bad key {self.headers.get('Authorization')}"}).encode()
            self.send_response(401)
        else:
            if self.server.mode == "slow":
                time.sleep(1.5)
            payload = json.dumps({"id": "x", "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": _answer(body["messages"])},
                 "finish_reason": "stop"}]}).encode()
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        try:
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    server = FakeLLM()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _label(shift: int = 0) -> np.ndarray:
    """24^3 LPS map: liver at low x (patient right), spleen at high x (left), vertical aorta between."""
    label = np.zeros((24, 24, 24), np.uint8)
    label[2:10, 6:18, 8 + shift:20 + shift] = 1
    label[16:21, 10:18, 12:20] = 2
    label[12:14, 12:14, 1:23] = 3
    return label


class TinyGenerator:
    """A 6-case cohort of :func:`_label` maps in the harness layout (for the CLI's ``--data``)."""

    name = "tiny"
    version = "1"
    class_names = CLASSES
    large_organs = ("liver",)
    split_sizes = {"train": 4, "eval": 1, "test": 1}
    labeled_counts = {5: 2}

    def generate(self, shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
        label = _label(seed % 2)
        return np.zeros(label.shape, np.int16), label, (2.0, 2.0, 2.0)


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    return write_cohort(TinyGenerator(), tmp_path / "tiny", (24, 24, 24))


def _client(llm: FakeLLM, **kw: Any) -> ChatClient:
    return ChatClient(base_url=llm.base_url, model=MODEL, api_key=SECRET, env={}, **kw)


def test_generator_two_agents_end_to_end(llm: FakeLLM, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "gen" / "amos_llm.yaml"
    kb = generate_knowledge(_client(llm), "tiny", CLASSES, [_label(0), _label(1)], [(2.0, 2.0, 2.0)] * 2, out,
                            date="2025-01-02")
    # protocol: path, body, model, key
    assert llm.requests and all(r["path"] == "/v1/chat/completions" for r in llm.requests)
    for r in llm.requests:
        assert r["body"]["model"] == MODEL and r["body"]["temperature"] == 0.0
        assert r["headers"]["Authorization"] == f"Bearer {SECRET}"
        assert r["headers"]["Content-Type"] == "application/json"
    # agent 1: class list first, then the paper's two templates, for every organ
    agent1 = [r["body"]["messages"] for r in llm.requests if r["body"]["messages"][-1]["content"].startswith("Describe")]
    asked = [m[-1]["content"] for m in agent1]
    for organ in ("liver", "spleen", "aorta"):
        assert POSITION_TEMPLATE.replace("[CLS]", organ) in asked
        assert SHAPE_TEMPLATE.replace("[CLS]", organ) in asked
    assert len(asked) == 6 and not any("background" in a for a in asked)
    assert POSITION_TEMPLATE == "Describe the relative positional relationship of [CLS] with other organs."
    assert SHAPE_TEMPLATE == "Describe the shape and structure of [CLS]"
    for messages in agent1:
        intro = messages[-2]
        assert intro["role"] == "user" and all(o in intro["content"] for o in ("liver", "spleen", "aorta"))
    # agent 2: supported claims kept, the rest dropped with reasons and measured support
    assert kb.organs["spleen"].claims == (Claim("spleen", "left_of", "liver"),)
    assert kb.organs["aorta"].claims == (Claim("aorta", "tubular"),)
    assert kb.organs["liver"].claims == (Claim("liver", "larger_than", "aorta"),)
    dropped = {d["claim"]: d for d in kb.extra["dropped_claims"]}
    assert dropped["spleen right_of liver"]["stage"] == "validation"
    assert dropped["spleen right_of liver"]["support_share"] == 0.0
    assert dropped["spleen right_of liver"]["measured"] < 0
    reasons = " | ".join(d["reason"] for d in kb.extra["dropped_claims"])
    assert "unknown relation 'next_to'" in reasons and "kidney" in reasons and "unparseable" in reasons
    # the written file loads, records provenance, and never contains the key
    text = out.read_text()
    again = load_knowledge(out)
    assert again.organs["spleen"].claims == kb.organs["spleen"].claims
    assert again.source == f"generated by {MODEL} at {llm.base_url} on 2025-01-02"
    assert again.organs["spleen"].position.startswith("The spleen has its neighbours")
    assert SECRET not in text and SECRET not in caplog.text
    # never overwrite
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        generate_knowledge(_client(llm), "tiny", CLASSES, [_label()], [(2.0, 2.0, 2.0)], out)
    assert out.read_text() == text


def test_generator_refuses_shipped_folder(llm: FakeLLM) -> None:
    with pytest.raises(ConfigError, match="shipped knowledge folder"):
        generate_knowledge(_client(llm), "tiny", CLASSES, [_label()], [(2.0, 2.0, 2.0)], KNOWLEDGE_DIR / "new.yaml")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        generate_knowledge(_client(llm), "amos", CLASSES, [_label()], [(2.0, 2.0, 2.0)], KNOWLEDGE_DIR / "amos.yaml")
    assert not llm.requests


def test_parse_claims_is_robust() -> None:
    parsed = parse_claims('```json\n{"claims": [{"subject": "Right Kidney", "relation": "Inferior To", '
                          '"object": "liver"}, {"subject": "aorta", "relation": "curved", "object": "liver"}]}\n```',
                          ["background", "liver", "right_kidney", "aorta"])
    assert parsed.claims == [Claim("right_kidney", "inferior_to", "liver")]
    assert "takes no object" in parsed.dropped[0][1]
    assert parse_claims("[1, 2", ["liver"]).dropped[0][1].startswith("unparseable")


def test_http_error_timeout_and_config_errors_never_show_the_key(llm: FakeLLM) -> None:
    llm.mode = "http_error"  # the server even echoes the Authorization header in its error body
    with pytest.raises(LLMError) as info:
        _client(llm).chat([{"role": "user", "content": "hi"}])
    message = str(info.value)
    assert "HTTP 401" in message and f"{llm.base_url}/chat/completions" in message and SECRET not in message
    shown = "".join(traceback.format_exception(info.value))  # what a crash would print
    assert "HTTP 401" in shown and SECRET not in shown
    llm.mode = "slow"
    with pytest.raises(LLMError, match="timed out after 0.3 s"):
        _client(llm, timeout_s=0.3).chat([{"role": "user", "content": "hi"}])
    client = _client(llm)
    assert SECRET not in repr(client) and SECRET not in str(client) and "<set>" in repr(client)
    with pytest.raises(ConfigError, match="no LLM base URL"):
        ChatClient(env={})
    with pytest.raises(ConfigError, match="no LLM model"):
        ChatClient(env={"ORGANBENCH_LLM_BASE_URL": "http://x/v1"})
    fallback = ChatClient(env={"OPENAI_BASE_URL": "http://y/v1", "ORGANBENCH_LLM_MODEL": "m", "OPENAI_API_KEY": SECRET})
    assert fallback.base_url == "http://y/v1" and fallback.has_key


def _env(llm: FakeLLM) -> dict[str, str]:
    return {"ORGANBENCH_LLM_BASE_URL": llm.base_url, "ORGANBENCH_LLM_MODEL": MODEL, "ORGANBENCH_LLM_API_KEY": SECRET}


def test_cli_generate_end_to_end(llm: FakeLLM, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    for key, value in _env(llm).items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "generated.yaml"
    assert main(["tak", "generate", "amos", "--data", str(tiny_data), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert f"wrote {out}" in printed.out and SECRET not in printed.out + printed.err
    kb = load_knowledge(out)
    assert kb.extra["generated"]["labeled_volumes"] == 2  # the labeled_5p split of the tiny cohort
    assert Claim("spleen", "left_of", "liver") in kb.claims and SECRET not in out.read_text()
    before, n_requests = out.read_text(), len(llm.requests)
    assert main(["tak", "generate", "amos", "--data", str(tiny_data), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "refusing to overwrite" in err and out.read_text() == before and len(llm.requests) == n_requests
    # the real entry point, in a subprocess, with the environment pointing at the server
    out2 = tmp_path / "generated2.yaml"
    env = {**os.environ, **_env(llm)}
    command = [sys.executable, "-m", "benchmarks", "tak", "generate", "amos", "--data", str(tiny_data), "--out"]
    proc = subprocess.run([*command, str(out2)], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out2.is_file() and SECRET not in proc.stdout + proc.stderr + out2.read_text()
    env.pop("ORGANBENCH_LLM_MODEL")
    proc = subprocess.run([*command, str(tmp_path / "x.yaml")], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "no LLM model" in proc.stderr and SECRET not in proc.stderr


def test_cli_validate_with_real_map_and_skip(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import nibabel as nib
    kb = tmp_path / "kb.yaml"
    kb.write_text("version: tiny-1\nsource: hand-written test\norgans:\n"
                  "  background: {position: Else., shape: None.}\n"
                  "  liver: {position: Right., shape: Wedge., claims: [{subject: liver, relation: right_of, object: spleen}]}\n"
                  "  spleen: {position: Left., shape: Bean., claims: [{subject: spleen, relation: anterior_to, object: liver}]}\n"
                  "  aorta: {position: Middle., shape: Tube., claims: [{subject: aorta, relation: tubular}]}\n")
    out = tmp_path / "report"
    missing = tmp_path / "absent.nii.gz"
    assert main(["tak", "validate", "amos", "--data", str(tiny_data), "--knowledge", str(kb), "--real", str(missing),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"real data skipped: {missing} not found" in printed
    assert (out / "amos.csv").is_file() and (out / "amos.md").is_file()
    # a real map stored in RAS order: the CLI reorients it to LPS before measuring
    ras = _label()[::-1, ::-1, :].copy()
    nib.save(nib.Nifti1Image(ras, np.diag([2.0, 2.0, 2.0, 1.0])), str(tmp_path / "real.nii.gz"))
    assert main(["tak", "validate", "amos", "--data", str(tiny_data), "--knowledge", str(kb), "--real",
                 str(tmp_path / "real.nii.gz"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "claims the real CT contradicts: 1" in printed and "CONTRADICTED spleen anterior_to liver" in printed
    assert "2/3 measurable claims supported (67%)" in printed
    md = (out / "amos.md").read_text()
    assert "## Claims the real CT contradicts" in md and "- spleen anterior_to liver" in md
    assert main(["tak", "validate", "amos", "--data", str(tiny_data), "--knowledge", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: knowledge file not found" in capsys.readouterr().err
