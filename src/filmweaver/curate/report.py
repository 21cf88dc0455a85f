"""The curation report: ``DATASET/report.html`` and ``index.json``, from the videos' records and the
contact sheets written while each video was curated (``report/STEM.png``: a row per scene, each shot's
middle frame labelled with its number and caption; a last row for the dropped shots with the reason)."""

from __future__ import annotations

import html
from collections import Counter
from pathlib import Path

import torch

from filmweaver.curate.dataset import FORMAT
from filmweaver.io import PAGE_CHECK_SCRIPT, atomic_path, contact_sheet, save_png, write_json


def write_contact_sheet(path: Path, title: str, shots: list, samples: dict[int, torch.Tensor],
                        scenes: list[list[int]]) -> None:
    """``shots``: the video's shot records; ``samples``: sampled frames of the shots that had a clip."""
    def thumb(k):
        frames = samples[k]
        s = shots[k]
        label = f"#{s.number}" + (f" {s.dropped}" if s.dropped else "")
        return frames[len(frames) // 2], label[:60]

    rows = []
    for j, members in enumerate(scenes):
        caption = next((shots[k].caption for k in members if shots[k].caption), "") or ""
        rows.append((f"scene {j + 1} ({len(members)} shots): {caption}", [thumb(k) for k in members]))
    in_scene = {k for m in scenes for k in m}
    dropped = [k for k in sorted(samples) if k not in in_scene]
    if dropped:
        rows.append(("dropped", [thumb(k) for k in dropped[:24]]))
    if rows:
        save_png(contact_sheet(rows, title=title, thumb=128), path)


def write_report(records: list[dict], out: Path) -> None:
    index = [{**s, "video": r["stem"]} for r in records for s in r.get("samples", [])]
    write_json(out / "index.json", {"format": FORMAT, "samples": index,
                                    "videos": [{"stem": r["stem"], "status": r["status"], "error": r.get("error")}
                                               for r in records]})
    drops = Counter((s.get("dropped") or "").split(" (")[0] for r in records for s in r.get("shots", [])
                    if s.get("dropped"))
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>filmweaver curate</title><style>",
             "body{font-family:system-ui,sans-serif;margin:24px}table{border-collapse:collapse}td,th{border:1px solid "
             "#cbd5e0;padding:3px 6px;font-size:12px;text-align:left}img{max-width:100%}.err{color:#c53030}</style>"
             "</head><body><h1>filmweaver curate</h1>",
             f"<p>{len(records)} videos, {sum(len(r.get('shots', [])) for r in records)} shots detected, "
             f"{len(index)} samples.</p>"]
    if drops:
        parts.append("<h2>Why shots were dropped</h2><ul>" + "".join(
            f"<li>{html.escape(k)}: {n}</li>" for k, n in drops.most_common()) + "</ul>")
    for r in records:
        parts.append(f"<h2>{html.escape(r['stem'])}</h2><p>{html.escape(r['video'])}: <b>{r['status']}</b>"
                     + (f" <span class='err'>{html.escape(r['error'])}</span>" if r.get("error") else "")
                     + (f" <span class='err'>{html.escape(r['decode_error'])}</span>" if r.get("decode_error") else "")
                     + "</p>")
        sheet = out / "report" / f"{r['stem']}.png"
        if sheet.is_file():
            parts.append(f"<img src='report/{html.escape(sheet.name)}' alt='shots of {html.escape(r['stem'])}'>")
        rows = "".join(f"<tr><td>{s['number']}</td><td>{s['seconds'][0]}-{s['seconds'][1]} s</td>"
                       f"<td>{s.get('scene') or '-'}</td><td>{html.escape(s.get('dropped') or 'kept')}</td>"
                       f"<td>{html.escape(s.get('caption') or '')}</td><td>{html.escape(s.get('validation') or '')}</td></tr>"
                       for s in r.get("shots", []))
        if rows:
            parts.append("<details><summary>shots</summary><table><tr><th>shot</th><th>time</th><th>scene</th>"
                         f"<th>kept / dropped</th><th>caption</th><th>validation</th></tr>{rows}</table></details>")
    parts.append(PAGE_CHECK_SCRIPT)  # the browser test reads whether every picture loaded
    parts.append("</body></html>")
    with atomic_path(out / "report.html") as tmp:
        Path(tmp).write_text("\n".join(parts))

