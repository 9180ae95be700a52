"""``python -m benchmarks tak``: validate the textual anatomical knowledge, generate it with an LLM, list encoders.

The commands read datasets (splits, label NIfTIs) through the harness, so they live here and not in
``tak`` (which never imports the harness).

``validate DATASET`` measures every claim of the knowledge on (a) all label maps of the synthetic
cohort of ``--profile`` (generated once if missing) and (b) real label maps (``--real``; by default
the real CT label of ``../shared/realdata``, skipped with a reason when absent), then writes
``reports/out/tak_validate/<dataset>.md`` and ``.csv`` and lists every claim the real data contradicts.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.config import PROJECT_ROOT, load_profile

if TYPE_CHECKING:  # imported where used: the harness CLI registers these commands on every start
    import numpy as np
    import pandas as pd

REALDATA_DIR = PROJECT_ROOT.parent / "shared" / "realdata"
DEFAULT_REAL = {"amos": "ts_example_ct_label_amos15.nii.gz", "synapse": "ts_example_ct_label_btcv13.nii.gz"}
DEFAULT_LABELED_RATIO = {"amos": 0.05, "synapse": 0.2}


def _dataset_labels(args: argparse.Namespace, all_cases: bool) -> tuple[str, list[np.ndarray], list, dict[str, int]]:
    """``(name, label maps, spacings, label index)`` of the synthetic cohort of ``--profile`` or of
    ``--data DIR``: all its cases, or (``all_cases=False``) its labeled split."""
    from benchmarks.data import read_split, split_name
    from benchmarks.data.prepare import read_label_map_lps
    from benchmarks.data.sources import resolve_dataset
    info = resolve_dataset(args.dataset, load_profile(args.profile), getattr(args, "data", None))
    if all_cases:
        ids = list(dict.fromkeys(i for part in ("train", "eval", "test") for i in read_split(info, part)))
    else:
        ratio = args.labeled_ratio or DEFAULT_LABELED_RATIO.get(args.dataset, 0.05)
        ids = read_split(info, split_name(ratio, "labeled"))
    if getattr(args, "max_cases", None):
        ids = ids[:args.max_cases]
    maps = [read_label_map_lps(info.label_path(i)) for i in ids]
    kind = "SYNTHETIC" if info.synthetic else "real"
    return f"{info.name} ({kind}, {len(ids)} label maps)", [m for m, _ in maps], [s for _, s in maps], \
        {name: i for i, name in enumerate(info.class_names)}


def _share(value: object) -> str:
    import pandas as pd
    return "n/a" if value is None or pd.isna(value) else f"{100 * float(value):.0f}%"


def _verdict(synthetic: object, real: object) -> str:
    if real is False:
        return "CONTRADICTED by real CT"
    if real is True:
        return "supported" if synthetic is True else "supported on real CT; synthetic cohort disagrees"
    if synthetic is True:
        return "supported on synthetic (real: not measured)"
    if synthetic is False:
        return "contradicted on synthetic (real: not measured)"
    return "not measurable"


def cmd_validate(args: argparse.Namespace) -> int:
    import pandas as pd

    from benchmarks.data.prepare import read_label_map_lps
    from tak.knowledge import knowledge_sha256, load_knowledge
    from tak.validator import validate_knowledge
    kb = load_knowledge(args.knowledge or args.dataset)
    name, maps, spacings, index = _dataset_labels(args, all_cases=True)
    print(f"knowledge {kb.version} ({kb.path}), {len(kb.claims)} claims; sha256 {knowledge_sha256(kb)[:16]}")
    print(f"measuring on {name} ...", flush=True)
    table = validate_knowledge(kb, maps, spacings, index)
    table = table.rename(columns={"n_volumes": "synthetic_n", "support_share": "synthetic_support",
                                  "measured": "synthetic_measured", "supported": "synthetic_supported",
                                  "detail": "synthetic_detail"})
    reals = args.real if args.real else ([str(REALDATA_DIR / DEFAULT_REAL[args.dataset])]
                                         if args.dataset in DEFAULT_REAL else [])
    present = [p for p in reals if Path(p).is_file()]
    for path in sorted(set(reals) - set(present)):
        print(f"real data skipped: {path} not found (the shared real CT folder is absent on this machine)")
    real_name = "none"
    if present:
        real_maps = [read_label_map_lps(p) for p in present]
        real_name = ", ".join(Path(p).name for p in present)
        print(f"measuring on real label map(s): {real_name} ...", flush=True)
        real = validate_knowledge(kb, [m for m, _ in real_maps], [s for _, s in real_maps], index)
        table["real_n"], table["real_support"] = real["n_volumes"], real["support_share"]
        table["real_measured"], table["real_supported"] = real["measured"], real["supported"]
        table["real_detail"] = real["detail"]
    else:
        for col in ("real_n", "real_support", "real_measured", "real_supported", "real_detail"):
            table[col] = None
    table["verdict"] = [_verdict(s, r) for s, r in zip(table["synthetic_supported"], table["real_supported"])]
    out = Path(args.out) if args.out else PROJECT_ROOT / "reports" / "out" / "tak_validate"
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / f"{args.dataset}.csv", out / f"{args.dataset}.md"
    table.to_csv(csv_path, index=False)
    lines = _summary(table, name, real_name)
    contradicted = table[table["real_supported"] == False]  # noqa: E712 (object column with None)
    md = [f"# TAK knowledge validation: {args.dataset}", "",
          f"Knowledge `{kb.version}` from `{kb.path}` (sha256 `{knowledge_sha256(kb)}`), source: {kb.source}.", "",
          "Label maps in LPS order, distances in mm; support = share of the volumes (with both organs present) "
          "in which the claim holds; supported when >= 50%.", "", *[f"- {line}" for line in lines], "",
          "| claim | synthetic support | real support | unit | synthetic measured | real measured | verdict |",
          "|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        real_n = "" if r.real_n is None or pd.isna(r.real_n) else f" (n={int(r.real_n)})"
        md.append(f"| {r.claim} | {_share(r.synthetic_support)} (n={r.synthetic_n}) | {_share(r.real_support)}{real_n} | "
                  f"{r.unit} | {_fmt(r.synthetic_measured)} | {_fmt(r.real_measured)} | {r.verdict} |")
    md += ["", "## Claims the real CT contradicts", ""]
    md += [f"- {r.claim}: {r.real_detail}" for r in contradicted.itertuples()] or ["- none"]
    md_path.write_text("\n".join(md) + "\n")
    for line in lines:
        print(line)
    if present:
        print(f"claims the real CT contradicts: {len(contradicted)}")
        for r in contradicted.itertuples():
            print(f"  CONTRADICTED {r.claim}: {r.real_detail}")
    print(f"wrote {md_path}\nwrote {csv_path}")
    return 0


def _fmt(value: object) -> str:
    import pandas as pd
    return "" if value is None or pd.isna(value) else f"{float(value):.3g}"


def _summary(table: pd.DataFrame, synthetic_name: str, real_name: str) -> list[str]:
    lines = []
    for col, label in (("synthetic_supported", f"synthetic: {synthetic_name}"), ("real_supported", f"real: {real_name}")):
        measurable = table[col].dropna()
        if len(measurable):
            n_ok = int((measurable == True).sum())  # noqa: E712
            lines.append(f"{label}: {n_ok}/{len(measurable)} measurable claims supported "
                         f"({100 * n_ok / len(measurable):.0f}%), {len(table) - len(measurable)} not measurable")
        else:
            lines.append(f"{label}: no claim measured")
    return lines


def cmd_generate(args: argparse.Namespace) -> int:
    from tak.generator import generate_knowledge
    from tak.llm import ChatClient
    client = ChatClient(base_url=args.base_url, model=args.model, timeout_s=args.timeout)
    if Path(args.out).exists():  # fail before any LLM call
        from benchmarks.errors import ConfigError
        raise ConfigError(f"{args.out}: refusing to overwrite an existing file; choose a new --out path")
    name, maps, spacings, index = _dataset_labels(args, all_cases=False)
    class_names = sorted(index, key=index.__getitem__)
    print(f"generating knowledge for {args.dataset} with {client.model} at {client.public_base_url}; "
          f"claims checked on {name}", flush=True)
    kb = generate_knowledge(client, args.dataset, class_names, maps, spacings, args.out)
    generated = kb.extra["generated"]
    print(f"kept {generated['claims_kept']} of {generated['claims_proposed']} proposed claims; "
          f"{len(kb.extra['dropped_claims'])} dropped (listed in the file)")
    print(f"wrote {args.out}")
    return 0


def cmd_encoders(args: argparse.Namespace) -> int:
    from tak.encoders import describe_encoders  # another module; imported only for this subcommand
    print(describe_encoders())
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``tak validate|generate|encoders`` under the harness CLI's subcommands."""
    tak = sub.add_parser("tak", help="TAK's knowledge: validate claims, generate them with an LLM, list encoders",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tak_sub = tak.add_subparsers(dest="tak_command", required=True)
    val = tak_sub.add_parser("validate", help="measure the knowledge's claims on synthetic and real label maps")
    val.add_argument("dataset", choices=["amos", "synapse"])
    val.add_argument("--knowledge", help="knowledge YAML (default: the shipped tak/knowledge/DATASET.yaml)")
    val.add_argument("--profile", default="cpu", help="profile whose synthetic cohort is used (default cpu)")
    val.add_argument("--real", action="append", help="real label NIfTI in the dataset's ids (repeatable; "
                     "default ../shared/realdata/ts_example_ct_label_{amos15,btcv13}.nii.gz)")
    val.add_argument("--data", help="a prepared dataset folder (all its cases) instead of the synthetic cohort")
    val.add_argument("--max-cases", type=int, help="use only the first N synthetic cases (default all)")
    val.add_argument("--out", help="output folder (default reports/out/tak_validate)")
    val.set_defaults(func=cmd_validate)
    gen = tak_sub.add_parser("generate", help="two-agent LLM knowledge generation (OpenAI-compatible endpoint)",
                             description="Endpoint from --base-url/--model or ORGANBENCH_LLM_BASE_URL, "
                             "ORGANBENCH_LLM_MODEL; key only from ORGANBENCH_LLM_API_KEY (or OPENAI_API_KEY).")
    gen.add_argument("dataset", choices=["amos", "synapse"])
    gen.add_argument("--out", required=True, help="new knowledge YAML to write (never overwritten)")
    gen.add_argument("--profile", default="cpu")
    gen.add_argument("--data", help="a prepared real dataset folder instead of the synthetic cohort")
    gen.add_argument("--labeled-ratio", type=float, help="labeled split used to check claims "
                     "(default 0.05 amos, 0.2 synapse)")
    gen.add_argument("--base-url")
    gen.add_argument("--model")
    gen.add_argument("--timeout", type=float, default=120.0, help="seconds per LLM request")
    gen.set_defaults(func=cmd_generate)
    tak_sub.add_parser("encoders", help="describe the available text encoders").set_defaults(func=cmd_encoders)
