"""``reports/out/index.html``: one page linking every rendered table and figure."""
from __future__ import annotations

import html
from pathlib import Path


def render_index(out_root: Path) -> Path:
    """List every artifact under ``out_root`` (one section per folder, PNGs shown inline)."""
    sections = []
    for folder in sorted(p for p in out_root.iterdir() if p.is_dir()):
        files = sorted(f for f in folder.iterdir() if f.suffix in (".md", ".csv", ".tex", ".png"))
        if not files:
            continue
        links = " · ".join(f'<a href="{html.escape(f"{folder.name}/{f.name}")}">{html.escape(f.name)}</a>'
                           for f in files)
        images = "".join(f'<p><a href="{folder.name}/{f.name}"><img src="{folder.name}/{f.name}" '
                         f'alt="{html.escape(f.name)}" style="max-width:100%"></a></p>' for f in files if f.suffix == ".png")
        sections.append(f"<section><h2>{html.escape(folder.name)}</h2><p>{links}</p>{images}</section>")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>organbench reports</title>
<style>body{{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em}}
section{{border-top:1px solid #ccc;margin-top:1.5em}} .note{{color:#8b0000}}</style></head>
<body><h1>organbench reports</h1>
<p class="note">Numbers from the synthetic cohort are labelled SYNTHETIC and are not comparable with the
published numbers (real AMOS/Synapse), which are shown as separate panels.</p>
{''.join(sections) or '<p>No report rendered yet.</p>'}
</body></html>
"""
    path = out_root / "index.html"
    path.write_text(page)
    return path
