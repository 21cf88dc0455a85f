"""``filmweaver benchmark SCRIPTS_DIR --methods ...``: every story with every method, scored, reported.

Layout of ``OUT``::

    runs/<method>/<story>/      one generated project per (method, story) (resumable: finished shots
                                are kept, a finished project's metrics.json is reused)
    report.json                 per story and method: metrics; per method: means over stories
    report.md                   methods x metrics, best in bold
    report.html                 the table, plots, and per story each method's storyboard and memory
                                sheet with every shot's retrieved keyframes and their similarities
    plots/*.png
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from filmweaver.engine.records import ShotRecord
from filmweaver.eval import metrics as M
from filmweaver.eval.run import LOWER_IS_BETTER, Judges, evaluate_run, evaluation_inputs, judge_notes
from filmweaver.io import PAGE_CHECK_SCRIPT, atomic_path, write_json
from filmweaver.methods import METHODS, method_config
from filmweaver.parallel import barrier
from filmweaver.progress import progress_bar
from filmweaver.settings import merge_settings

# the columns of the summary table, in order (others stay in report.json)
TABLE = ["consistency_overall", "consistency_shots_all", "consistency_shots_top10", "prompt_following_global",
         "prompt_following_shot", "clipscore", "character_consistency", "aesthetic", "inception_score",
         "entity_consistency", "smoothness", "seam_ratio", "probe/consistency_overall", "probe/gt_identity",
         "probe/gt_adherence", "probe/gt_character_identity", "probe/gt_character_identity_all_attributes",
         "probe/gt_swap_rate", "probe/gt_presence", "seconds_per_shot"]


def story_scripts(scripts_dir: str | Path, limit: int | None = None) -> list[Path]:
    paths = sorted(Path(scripts_dir).glob("*.json"))
    if not paths:
        raise FileNotFoundError(f"{scripts_dir}: no story scripts (*.json)")
    return paths[:limit] if limit else paths


def _fresh(project: Path, judges: Judges) -> bool:
    """metrics.json exists and was computed from these very shots with these judges."""
    r = project / "metrics.json"
    return r.is_file() and json.loads(r.read_text()).get("inputs") == evaluation_inputs(project, judges)


@dataclass
class Arm:
    """One column of a benchmark: a method (:data:`~filmweaver.methods.METHODS`), engine settings over
    it, and the model that generates it (``None``: the benchmark's ``models``; a callable is called
    once, when the arm first runs, so arms on other models load only where they run)."""

    name: str
    method: str = "filmweaver"
    settings: dict = field(default_factory=dict)
    models: object | None = None

    @classmethod
    def of(cls, arm: str | Arm) -> Arm:
        return arm if isinstance(arm, Arm) else cls(arm, arm)


def run_benchmark(scripts: list[Path], out_dir: str | Path, methods: list[str | Arm], models, judges: Judges,
                  engine_settings: dict | None = None, max_shots: int | None = None, progress: bool = True,
                  shard: tuple[int, int] = (0, 1), wait=barrier, report: bool = True) -> dict | None:
    """Generate (or resume) and evaluate every (story, arm); write the reports. Returns report.json.

    ``methods``: method names, or :class:`Arm` s (a method with settings and a model of its own);
    ``engine_settings`` apply to every arm, under an arm's own settings.

    ``shard=(rank, world)``: this process takes every ``world``-th (story, arm) pair, as one process
    per GPU under ``torchrun``; after ``wait()`` (a barrier), rank 0 gathers every pair's metrics.json
    and writes the report (other ranks return None). ``report=False``: only this share is generated
    and evaluated (independent processes; a client gathers the metrics.json files)."""
    from filmweaver.engine import StoryEngine
    from filmweaver.script import load_story

    arms = [Arm.of(m) for m in methods]
    for arm in arms:
        if arm.method not in METHODS:
            raise ValueError(f"unknown method {arm.method!r}: choose from {', '.join(METHODS)}")
    rank, world = shard
    out = Path(out_dir)
    stories = [(p.stem, load_story(p)) for p in scripts]  # every script is validated before any work
    pairs = [(stem, story, arm) for stem, story in stories for arm in arms]
    mine = pairs[rank::world]
    bar = progress_bar(total=len(mine), desc="benchmark" if world == 1 else f"benchmark [{rank}/{world}]",
                       enabled=progress)
    loaded: dict[str, object] = {}
    for stem, story, arm in mine:
        bar.set_postfix_str(f"{stem} / {arm.name}")
        project = out / "runs" / arm.name / stem
        if arm.name not in loaded:
            loaded[arm.name] = arm.models() if callable(arm.models) else (arm.models or models)
        config = method_config(arm.method, merge_settings(engine_settings or {}, arm.settings))
        engine = StoryEngine(loaded[arm.name], project, story=story, config=config, progress=False)
        generated = engine.generate(max_shots=max_shots)
        if generated or not _fresh(project, judges):
            evaluate_run(project, judges)
        bar.update(1)
    bar.close()
    if not report:
        return None
    if world > 1:
        wait()
        if rank != 0:
            return None
    names = [arm.name for arm in arms]
    results: dict[str, dict[str, dict]] = {}
    for stem, _, arm in pairs:
        results.setdefault(stem, {})[arm.name] = read_metrics(out / "runs" / arm.name / stem)
    summary = summarize_benchmark(results, names)
    prompts = [shot.prompt for _, story in stories for shot in story.shots()]
    # what a reader must know: the generator or the judge could not read the prompts, the judge is synthetic
    generator = models if models is not None else next(iter(loaded.values()))
    unseen = generator.prompt_encoder.coverage(prompts).warning(f"the generator {generator.model_id}'s text encoder")
    summary["notes"] = ([unseen] if unseen else []) + _generator_notes(generator) + judge_notes(judges, prompts)
    summary["settings"] = {"engine": engine_settings or {}, "max_shots": max_shots, "model": generator.model_id,
                           "scripts": [str(p) for p in scripts],
                           "arms": {a.name: {"method": a.method, "settings": a.settings} for a in arms}}
    write_reports(summary, out)
    return summary


def read_metrics(project: Path) -> dict:
    """A finished run's metrics.json, or an error saying the run is not done."""
    path = project / "metrics.json"
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: a shard did not finish (rerun to resume)")
    return json.loads(path.read_text())


def _generator_notes(models) -> list[str]:
    builtin = getattr(models.setup, "preset", None) in (None, "synth") and models.model_id.startswith("filmweaver-synth")
    return ["the generator is filmweaver's built-in model: the films are synthetic-world renderings of the scripts' "
            "prompts, so the numbers exercise the benchmark, not a film model (pass --model with Wan weights)"] if builtin else []


def entity_gap_curves(results: dict[str, dict[str, dict]], methods: list[str]) -> dict[str, list[dict]]:
    """Per method, entity consistency by recurrence gap over every story (bucket means weighted by
    their number of appearances)."""
    curves = {}
    for method in methods:
        sums: dict[str, list[float]] = {}
        for per_method in results.values():
            entry = per_method.get(method, {}).get("metrics", {}).get("entity_consistency", {})
            for b in entry.get("by_gap", []):
                acc = sums.setdefault(b["gap"], [0.0, 0])
                acc[0] += b["mean"] * b["n"]
                acc[1] += b["n"]
        order = [g for g in (M.gap_label(lo, hi) for lo, hi in M.GAP_BUCKETS) if g in sums]
        curves[method] = [{"gap": g, "mean": sums[g][0] / sums[g][1], "n": sums[g][1]} for g in order]
    return curves


def summarize_benchmark(results: dict[str, dict[str, dict]], methods: list[str]) -> dict:
    """Per method, the mean of every metric over the stories where it has a value."""
    means: dict[str, dict[str, float | None]] = {}
    meta: dict[str, dict] = {}
    for method in methods:
        vals: dict[str, list[float]] = {}
        for per_method in results.values():
            r = per_method.get(method)
            if r is None:
                continue
            for k, m in r["metrics"].items():
                meta.setdefault(k, {"model": m["model"], "protocol": m["protocol"]})
                if m["value"] is not None:
                    vals.setdefault(k, []).append(m["value"])
            if r.get("seconds_per_shot") is not None:
                vals.setdefault("seconds_per_shot", []).append(r["seconds_per_shot"])
        means[method] = {k: float(np.mean(v)) for k, v in vals.items()}
    meta["seconds_per_shot"] = {"model": "-", "protocol": "generation wall time per shot (manifest timings)"}
    return {"methods": methods, "means": means, "metrics": meta, "stories": results,
            "entity_gap": entity_gap_curves(results, methods)}


def _best(report: dict, key: str) -> str | None:
    vals = {m: report["means"][m].get(key) for m in report["methods"]}
    vals = {m: v for m, v in vals.items() if v is not None}
    if len(vals) < 2:
        return None
    pick = min if key in LOWER_IS_BETTER else max
    return pick(vals, key=vals.get)


def _columns(report: dict) -> list[str]:
    present = {k for m in report["methods"] for k in report["means"][m]}
    return [k for k in TABLE if k in present]


def markdown_table(report: dict) -> str:
    cols = _columns(report)
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for m in report["methods"]:
        cells = []
        for k in cols:
            v = report["means"][m].get(k)
            cell = "-" if v is None else f"{v:.4g}"
            cells.append(f"**{cell}**" if v is not None and _best(report, k) == m else cell)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Means over stories; best per column in bold (lower is better for "
              + ", ".join(sorted(LOWER_IS_BETTER)) + "). Each column's model and protocol:", ""]
    lines += [f"- `{k}`: {report['metrics'][k]['model']}; {report['metrics'][k]['protocol']}" for k in cols]
    lines += _gap_table(report)
    if report.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def _gap_table(report: dict) -> list[str]:
    curves = {m: c for m, c in report.get("entity_gap", {}).items() if c}
    if not curves:
        return []
    gaps = list(dict.fromkeys(b["gap"] for c in curves.values() for b in c))
    lines = ["", "Entity consistency by recurrence gap (shots since the entity was last seen; cosine to its first "
             "appearance, appearances in brackets):", "", "| method | " + " | ".join(gaps) + " |",
             "|---" * (len(gaps) + 1) + "|"]
    for m, c in curves.items():
        by = {b["gap"]: b for b in c}
        lines.append(f"| {m} | " + " | ".join(f"{by[g]['mean']:.3f} ({by[g]['n']})" if g in by else "-" for g in gaps) + " |")
    return lines


def _plots(report: dict, out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    names = []
    cols = _columns(report)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    n = len(cols)
    if n:
        fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 3.0), dpi=110, squeeze=False)
        for ax, k in zip(axes[0], cols, strict=True):
            vals = [report["means"][m].get(k) or 0.0 for m in report["methods"]]
            best = _best(report, k)
            ax.bar(range(len(vals)), vals, color=["#2b6cb0" if m == best else "#a0aec0" for m in report["methods"]])
            ax.set_xticks(range(len(vals)), report["methods"], rotation=40, ha="right", fontsize=7)
            ax.set_title(k, fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "plots" / "metrics.png")
        plt.close(fig)
        names.append("plots/metrics.png")
    curves = {m: c for m, c in report.get("entity_gap", {}).items() if c}
    if curves:
        fig, ax = plt.subplots(figsize=(4.8, 3.2), dpi=110)
        gaps = list(dict.fromkeys(b["gap"] for c in curves.values() for b in c))
        for m, c in curves.items():
            by = {b["gap"]: b["mean"] for b in c}
            xs = [i for i, g in enumerate(gaps) if g in by]
            ax.plot(xs, [by[gaps[i]] for i in xs], marker="o", label=m)
        ax.set_xticks(range(len(gaps)), gaps)
        ax.set_xlabel("recurrence gap (shots)")
        ax.set_ylabel("cosine to first appearance")
        ax.set_title("entity consistency by recurrence gap", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "plots" / "entity_gap.png")
        plt.close(fig)
        names.append("plots/entity_gap.png")
    return names


def write_reports(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", report)
    with atomic_path(out / "report.md") as tmp:
        Path(tmp).write_text(markdown_table(report))
    plots = _plots(report, out)
    with atomic_path(out / "report.html") as tmp:
        Path(tmp).write_text(render_html(report, out, plots))


def _shot_memory_rows(project: Path) -> list[str]:
    m = json.loads((project / "manifest.json").read_text())
    rows = []
    for s in map(ShotRecord.from_manifest, m.get("shots", [])):
        mem = ", ".join(
            f"{html.escape(str(r.keyframe))} ({r.role}" + (f", sim {r.similarity:.3f}" if r.similarity is not None else "")
            + ")" for r in s.shot_cache) or "none"
        rows.append(f"<tr><td>{s.number}</td><td>{html.escape(s.prompt[:140])}</td>"
                    f"<td>{', '.join(sorted(set(map(str, s.modes))))}</td><td>{mem}</td></tr>")
    return rows


def render_html(report: dict, out: Path, plots: list[str]) -> str:
    """A self-contained page (images by relative path) that checks, in the browser, that every image
    loaded: ``<body data-images-ok>`` is set to the count of loaded images or to the failures."""
    cols = _columns(report)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in cols)
    rows = []
    for m in report["methods"]:
        cells = []
        for k in cols:
            v = report["means"][m].get(k)
            txt = "-" if v is None else f"{v:.4g}"
            cells.append(f"<td class='{'best' if _best(report, k) == m else ''}'>{txt}</td>")
        rows.append(f"<tr><th>{html.escape(m)}</th>{''.join(cells)}</tr>")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>filmweaver benchmark</title><style>",
        "body{font-family:system-ui,sans-serif;margin:24px;color:#1a202c}table{border-collapse:collapse;margin:8px 0}",
        "td,th{border:1px solid #cbd5e0;padding:4px 8px;font-size:13px;text-align:left}td.best{font-weight:700;background:#ebf8ff}",
        "img{max-width:100%;border:1px solid #e2e8f0}.pair{display:grid;grid-template-columns:1fr 1fr;gap:12px}",
        "details{margin:10px 0}summary{cursor:pointer;font-weight:600}.scroll{overflow-x:auto}</style></head><body>",
        f"<h1>filmweaver benchmark</h1><p>Model: <code>{html.escape(str(report.get('settings', {}).get('model')))}</code>; "
        f"{len(report['stories'])} stories; methods: {', '.join(map(html.escape, report['methods']))}.</p>",
        f"<h2>Summary</h2><div class='scroll'><table><tr><th>method</th>{head}</tr>{''.join(rows)}</table></div>",
        "<ul>" + "".join(f"<li><code>{html.escape(k)}</code>: {html.escape(report['metrics'][k]['model'])}; "
                         f"{html.escape(report['metrics'][k]['protocol'])}</li>" for k in cols) + "</ul>",
    ]
    if report.get("notes"):
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report["notes"]) + "</ul>")
    parts += [f"<h2>Plots</h2><img src='{p}' alt='{p}'>" for p in plots]
    parts.append("<h2>Stories</h2>")
    for stem, per_method in report["stories"].items():
        parts.append(f"<details open><summary>{html.escape(stem)}</summary>")
        for method in report["methods"]:
            if method not in per_method:
                continue
            project = Path(per_method[method]["run"])
            rel = _rel(project, out)
            parts.append(f"<h3>{html.escape(stem)}: {html.escape(method)}</h3><div class='pair'>"
                         f"<div><p>Storyboard</p><img class='storyboard' src='{rel}/storyboard.png' alt='storyboard {stem} {method}'></div>"
                         f"<div><p>Memory retrieved per shot</p><img src='{rel}/memory.png' alt='memory {stem} {method}'></div></div>")
            parts.append("<table><tr><th>shot</th><th>prompt</th><th>modes</th><th>shot cache (role, similarity)</th></tr>"
                         + "".join(_shot_memory_rows(project)) + "</table>")
        parts.append("</details>")
    parts.append(PAGE_CHECK_SCRIPT)
    parts.append("</body></html>")
    return "\n".join(parts)


def _rel(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return path.resolve().as_uri()

