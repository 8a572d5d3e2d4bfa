"""The report as one self-contained HTML page: figures as ``data:`` URIs, a little inline CSS, no
script and nothing fetched from anywhere; every string from a run is HTML-escaped.

Whatever a run lacks (no dev set, no temperature, no diagnostics in a run from before they
existed) is said in one sentence in its section.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from datetime import datetime, timezone

from contralign.report.analysis import Neighbours, example_anchors, neighbours
from contralign.report.figures import SMOOTH_FROM, SMOOTHING, colour
from contralign.report.runs import EvalPoint, Run

GENERATOR = "contralign report"  # the <meta name="generator"> that marks a page as ours
CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;
max-width:1180px;padding:16px 24px;color:#222}
h1{font-size:22px;margin:8px 0}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:14px;margin:14px 0 6px}
table{border-collapse:collapse;margin:6px 0;font-size:13px}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;display:block;margin:6px 0}
pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:12px;max-height:420px}
.note{color:#555;font-style:italic}.true{font-weight:600;color:#176317}
.swatch{display:inline-block;width:10px;height:10px;margin-right:5px;border-radius:2px}
.nav a{color:#1f5fa8;text-decoration:none}.hit{display:block}
.cos{color:#666;font-variant-numeric:tabular-nums;margin-right:4px}
"""
SECTIONS = (("summary", "metrics"), ("training", "training"), ("dev-metrics", "dev metrics"),
            ("diagnostics", "diagnostics"), ("alignment-uniformity", "alignment-uniformity"),
            ("similarity", "similarities"), ("embedding-map", "map"),
            ("neighbours", "neighbours"), ("config", "config"), ("environment", "machine"))
NAV = '<p class="nav">' + " · ".join(f'<a href="#{key}">{name}</a>'
                                     for key, name in SECTIONS) + "</p>"
TEXT_LIMIT = 160  # characters of an item shown in the neighbour tables


def esc(value: object) -> str:
    """``value`` as text, HTML-escaped (quotes too: safe inside attributes)."""
    return html.escape(str(value), quote=True)


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def image(name: str, png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}" title="{esc(name)}.png">'


def fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"


def render_page(runs: Sequence[Run], figures: dict[str, bytes], map_method: str) -> str:
    """The whole page for ``runs`` with the rendered ``figures`` (name -> PNG bytes)."""
    names = ", ".join(run.name for run in runs)
    title = f"contralign report: {names}"
    body = [f"<h1>{esc(title)}</h1>", NAV, _runs_table(runs), _summary(runs),
            _training(runs, figures), _dev_metrics(runs, figures), _diagnostics(runs, figures),
            _plane(runs, figures), _similarities(runs, figures),
            _map(runs, figures, map_method), _neighbours(runs), _configs(runs),
            _environments(runs)]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta name="generator" content="{GENERATOR}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body)
            + f"\n<p class=\"note\">Made by {GENERATOR} on {esc(stamp)}.</p>\n</body></html>\n")


def _swatch(index: int, runs: Sequence[Run]) -> str:
    if len(runs) == 1:
        return ""
    return f'<span class="swatch" style="background:{colour(index)}"></span>'


def _runs_table(runs: Sequence[Run]) -> str:
    rows = []
    for i, run in enumerate(runs):
        config = run.config
        model = (config.get("model") or {}) if isinstance(config.get("model"), dict) else {}
        objective = config.get("objective") if isinstance(config.get("objective"), dict) else {}
        finished = run.manifest.get("finished_step")
        state = ("running or stopped" if run.manifest and finished is None
                 else f"finished at step {finished}" if finished is not None else "unknown")
        rows.append(
            f"<tr><td>{_swatch(i, runs)}{esc(run.name)}</td><td>{esc(run.path)}</td>"
            f"<td>{esc(model.get('name') or ', '.join(model.get('towers') or []) or '?')}</td>"
            f"<td>{esc((objective or {}).get('name', '?'))}</td>"
            f"<td>{esc(run.manifest.get('records', '?'))}</td><td>{esc(state)}</td></tr>")
    return ("<table><tr><th>run</th><th>folder</th><th>model</th><th>objective</th>"
            "<th>training records</th><th>state</th></tr>" + "".join(rows) + "</table>")


def _summary(runs: Sequence[Run]) -> str:
    out = ['<h2 id="summary">Final metrics</h2>']
    finals = [run.final for run in runs]
    if not any(finals):
        return out[0] + note("No evaluation was logged: the config sets no dev set (eval.sts, "
                             "eval.retrieval or eval.bitext).")
    keys = list(dict.fromkeys(k for p in finals if p for k in p.metrics))
    if len(runs) == 1:
        out.append(_single_summary(runs[0], keys))
    else:
        head = "".join(f"<th>{_swatch(i, runs)}{esc(r.name)} (step "
                       f"{esc(r.final.step if r.final else '-')})</th>"
                       for i, r in enumerate(runs))
        rows = "".join(f"<tr><td>{esc(k)}</td>" + "".join(
            f'<td class="num">{_cell(p, k)}</td>' for p in finals) + "</tr>" for k in keys)
        out.append(f"<table><tr><th>metric</th>{head}</tr>{rows}</table>")
    levels = {p.confidence for p in finals if p and p.ci and p.confidence is not None}
    if levels:
        out.append(note(f"Brackets: {', '.join(f'{c:.0%}' for c in sorted(levels))} bootstrap "
                        "confidence intervals (fixed seed; pairs resampled for STS, queries for "
                        "retrieval)."))
    else:
        out.append(note("No confidence intervals: the run did not set eval.ci."))
    return "\n".join(out)


def _single_summary(run: Run, keys: list[str]) -> str:
    final = run.final
    assert final is not None
    start = run.evals[0] if run.evals and run.evals[0].step == 0 and len(run.evals) > 1 else None
    head = "<th>metric</th>" + ("<th>untrained (step 0)</th>" if start else "") + \
        f"<th>final (step {final.step})</th>"
    rows = []
    for key in keys:
        before = (f'<td class="num">{fmt(start.metrics[key])}</td>' if start and key in
                  start.metrics else "<td></td>" if start else "")
        rows.append(f"<tr><td>{esc(key)}</td>{before}<td class=\"num\">{_cell(final, key)}"
                    "</td></tr>")
    table = f"<table><tr>{head}</tr>{''.join(rows)}</table>"
    if start is None:
        table += note("No step-0 evaluation: a run from before the untrained model was "
                      "evaluated, so there is no 'before' column.")
    return table


def _cell(point: EvalPoint | None, key: str) -> str:
    if point is None or key not in point.metrics:
        return ""
    text = fmt(point.metrics[key])
    if key in point.ci:
        lo, hi = point.ci[key]
        text += f" [{fmt(lo)}, {fmt(hi)}]"
    return esc(text)


def _section(title: str, figure: str, figures: dict[str, bytes], missing: str,
             notes: Sequence[str] = ()) -> str:
    out = [f'<h2 id="{esc(figure)}">{esc(title)}</h2>']
    if figure in figures:
        out.append(image(figure, figures[figure], title))
    else:
        out.append(note(missing))
    out += [note(text) for text in notes]
    return "\n".join(out)


def _lacking(runs: Sequence[Run], has: list[bool], what: str) -> list[str]:
    """One sentence naming the runs that lack ``what`` (when some have it)."""
    names = [run.name for run, ok in zip(runs, has, strict=True) if not ok]
    if not names or len(names) == len(runs) and len(runs) > 1:
        return [] if not names else [f"No run logged {what}."]
    return [f"{'This run' if len(runs) == 1 else ', '.join(names)} logged no {what}."]


def _training(runs: Sequence[Run], figures: dict[str, bytes]) -> str:
    keys = [{k for _, v in run.train for k in v} for run in runs]
    notes = []
    if "training" in figures:
        notes = [f"A loss of {SMOOTH_FROM} or more points is drawn smoothed as TensorBoard "
                 f"smooths it (exponential moving average, weight {SMOOTHING}, debiased), over "
                 "the raw values drawn faint."]
        notes += _lacking(runs, ["temperature" in k for k in keys],
                         "temperature (its objective has none, or it predates temperature "
                         "logging)")
    return _section("Training: loss, learning rate, temperature", "training", figures,
                    "No training steps were logged (metrics.jsonl is absent or holds only "
                    "evaluations).", notes)


def _dev_metrics(runs: Sequence[Run], figures: dict[str, bytes]) -> str:
    return _section("Dev metrics over steps", "dev-metrics", figures,
                    "No dev metrics besides geometry were logged: the config sets no eval.sts, "
                    "eval.retrieval or eval.bitext.",
                    ["Hollow markers: the untrained model (step 0); error bars: confidence "
                     "intervals, where the evaluation computed them."]
                    if "dev-metrics" in figures else [])


def _diagnostics(runs: Sequence[Run], figures: dict[str, bytes]) -> str:
    keys = [{k for p in run.evals for k in p.metrics} for run in runs]
    notes = []
    if "diagnostics" in figures:
        notes = ["Effective rank: exp of the entropy of the L1-normalised singular values of "
                 "the embedding matrix (Roy & Vetterli 2007; RankMe, arXiv:2210.02885); "
                 "hubness: skewness of the k-occurrence distribution, k = 10 (Radovanović et "
                 "al. 2010); modality gap: the distance between the centroids of the anchors' "
                 "and the positives' embeddings (Liang et al. 2022, arXiv:2203.02053)."]
        notes += _lacking(runs, ["geometry/modality_gap" in k for k in keys],
                          "modality gap (a run from before it was measured)")
    return _section("Geometry diagnostics over steps", "diagnostics", figures,
                    "No geometry diagnostics were logged (a run from before they existed, or "
                    "one without a dev set).", notes)


def _plane(runs: Sequence[Run], figures: dict[str, bytes]) -> str:
    notes = []
    if "alignment-uniformity" in figures:
        notes.append("Wang & Isola 2020 (arXiv:2005.10242): alignment is the mean squared "
                     "distance between positive pairs, uniformity the log of the mean Gaussian "
                     "potential between all items; lower is better for both.")
        notes += _lacking(runs, [bool(r.evals) and r.evals[0].step == 0 for r in runs],
                          "step-0 evaluation (a run from before the untrained model was "
                          "evaluated): its first point is after training began")
    return _section("Alignment and uniformity", "alignment-uniformity", figures,
                    "No alignment and uniformity were logged (no dev set of pairs).", notes)


def _snapshot_notes(runs: Sequence[Run]) -> list[str]:
    return [f"{run.name}: one snapshot only (step {run.snapshots[0].step}), so before and after "
            "are the same." for run in runs if len(run.snapshots) == 1]


NO_SNAPSHOTS = ("No embedding snapshots (diagnostics/): a run from before they existed, or one "
                "without a dev set.")


def _similarities(runs: Sequence[Run], figures: dict[str, bytes]) -> str:
    notes = _snapshot_notes(runs) if "similarity" in figures else []
    return _section("Cosine similarity of positive and negative pairs", "similarity", figures,
                    NO_SNAPSHOTS, notes)


def _map(runs: Sequence[Run], figures: dict[str, bytes], method: str) -> str:
    notes = []
    if "embedding-map" in figures:
        how = ("UMAP (cosine)" if method == "umap" else "PCA (the top two principal "
               "components of anchors and positives together; UMAP is used when umap-learn "
               "is installed)")
        notes = [f"Projection: {how}. Lines join the two sides of each pair."]
    return _section("Map of the dev sample", "embedding-map", figures, NO_SNAPSHOTS, notes)


def _neighbours(runs: Sequence[Run]) -> str:
    out = ['<h2 id="neighbours">Nearest neighbours before and after</h2>']
    shown = False
    for run in runs:
        if not run.snapshots or run.sample is None:
            continue
        shown = True
        anchors = example_anchors(len(run.sample.anchors))
        before = neighbours(run.snapshots[0], anchors)
        after = neighbours(run.snapshots[-1], anchors)
        if len(runs) > 1:
            out.append(f"<h3>{esc(run.name)}</h3>")
        out.append(f"<table><tr><th>anchor</th><th>before (step {run.snapshots[0].step})</th>"
                   f"<th>after (step {run.snapshots[-1].step})</th></tr>")
        for b, a in zip(before, after, strict=True):
            out.append(f"<tr><td>{esc(_clip(run.sample.anchors[b.anchor]))}</td>"
                       f"<td>{_hits(run, b)}</td><td>{_hits(run, a)}</td></tr>")
        out.append("</table>")
    if not shown:
        out.append(note(NO_SNAPSHOTS))
    else:
        out.append(note("The top 3 positives of the dev sample by cosine for 5 anchors spread "
                        "evenly over it; ✓ marks the anchor's true pair (its rank is given "
                        "when it is not among them)."))
    return "\n".join(out)


def _hits(run: Run, found: Neighbours) -> str:
    assert run.sample is not None
    parts = []
    for j, cos in found.hits:
        mark = "✓ " if j == found.anchor else ""
        cls = ' class="hit true"' if j == found.anchor else ' class="hit"'
        parts.append(f'<span{cls}><span class="cos">{cos:.3f}</span>{mark}'
                     f"{esc(_clip(run.sample.positives[j]))}</span>")
    if found.true_rank > len(found.hits):
        parts.append(f'<span class="hit note">✓ true pair at rank {found.true_rank} '
                     f"({found.true_cosine:.3f})</span>")
    return "".join(parts)


def _clip(text: str) -> str:
    return text if len(text) <= TEXT_LIMIT else text[: TEXT_LIMIT - 1] + "…"


def _configs(runs: Sequence[Run]) -> str:
    out = ['<h2 id="config">Resolved config</h2>']
    for run in runs:
        if len(runs) > 1:
            out.append(f"<h3>{esc(run.name)}</h3>")
        out.append(f"<pre>{esc(run.config_text)}</pre>" if run.config_text is not None
                   else note(f"{run.name}: no config.yaml (the run had not started)."))
    return "\n".join(out)


ENVIRONMENT_ORDER = ("contralign", "python", "torch", "transformers", "numpy", "platform",
                     "processor", "cpu_count", "device", "gpu", "world_size", "started")


def _environments(runs: Sequence[Run]) -> str:
    out = ['<h2 id="environment">Machine and versions</h2>']
    envs = [run.environment for run in runs]
    if not any(envs):
        return out[0] + note("No environment.json: a run from before it was recorded.")
    keys = [k for k in ENVIRONMENT_ORDER if any(e and k in e for e in envs)]
    keys += sorted({k for e in envs if e for k in e} - set(keys) - {"format"})
    head = "".join(f"<th>{_swatch(i, runs)}{esc(r.name)}</th>" for i, r in enumerate(runs))
    rows = "".join(f"<tr><td>{esc(k)}</td>" + "".join(
        f"<td>{esc(_plain(e.get(k)) if e else '')}</td>" for e in envs) + "</tr>" for k in keys)
    table = f"<table><tr><th></th>{head}</tr>{rows}</table>"
    missing = [r.name for r, e in zip(runs, envs, strict=True) if not e]
    if missing:
        table += note(f"{', '.join(missing)}: no environment.json (a run from before it was "
                      "recorded).")
    return out[0] + table


def _plain(value: object) -> str:
    return "—" if value is None else str(value)
