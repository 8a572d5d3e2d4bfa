"""``contralign mine MODEL SRC TGT -o pairs.tsv``: parallel sentences from two unpaired lists."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import typer

from contralign.cli.common import command, console, print_json

if TYPE_CHECKING:
    from contralign.evaluation.mining import MinedPairs

# F1-best ratio-margin threshold of multilingual-e5-small on a French-English task built from
# Tatoeba (benchmarks/mining.py: 1.0101 for intersect); its cosines are high and close together,
# so its margins sit nearer 1 than LASER's (whose BUCC thresholds are 1.04-1.10).
DEFAULT_MARGIN_THRESHOLD = 1.01
OUTPUT_COLUMNS = ("score", "src", "tgt", "src_line", "tgt_line")
THRESHOLD_HELP = (f"Keep pairs scoring above it. Default: {DEFAULT_MARGIN_THRESHOLD} for the "
                  "margin (F1-best for multilingual-e5-small on a Tatoeba task; other models "
                  "differ: pick yours on a dev set with --gold); every candidate for cosine and "
                  "distance.")
MODE_HELP = ("intersect: mutual best matches; union: the best match of every sentence on both "
             "sides, taken by descending score, each sentence once (LASER's 'max').")


@command
def mine_command(
    model: str = typer.Argument(..., help="Model folder, run directory, installed model package "
                                "or hub id (a multilingual text model)."),
    source: Path = typer.Argument(..., help="Source sentences, one per line (.txt; or a column "
                                  "of .tsv/.csv/.jsonl with --column)."),
    target: Path = typer.Argument(..., help="Target sentences, as SOURCE."),
    output: Path = typer.Option(..., "--output", "-o", help="The .tsv to write: score, src, "
                                "tgt, src_line, tgt_line, best first (CSV quoting)."),
    threshold: float | None = typer.Option(None, "--threshold", help=THRESHOLD_HELP),
    k: int = typer.Option(4, "--k", "-k", min=1, help="Neighbourhood of the margin and "
                          "candidates per sentence."),
    mode: Literal["intersect", "union"] = typer.Option("intersect", "--mode", help=MODE_HELP),
    scoring: Literal["margin", "distance", "cosine"] = typer.Option(
        "margin", "--scoring", help="margin (ratio margin, Artetxe & Schwenk 2019), distance "
        "(difference margin) or cosine."),
    gold: Path | None = typer.Option(None, "--gold", help="Gold pairs, one per line: SRC_LINE "
                                     "TAB TGT_LINE (line numbers of the two files); prints "
                                     "precision, recall, F1 and the F1-best threshold."),
    column: str | None = typer.Option(None, "--column", help="Column holding the sentences "
                                      "in tabular inputs."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUTPUT if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print a summary as JSON."),
) -> None:
    """Mine translation pairs from two unpaired lists of sentences with margin scoring over
    MODEL's embeddings (BUCC protocol); candidates come from the index layer (FAISS when
    installed). Line numbers count every line of the file, blank ones included."""
    from contralign.core.errors import ContralignError
    from contralign.core.outputs import check_output_file
    from contralign.encoders.loading import load_tower, tower_modality
    from contralign.evaluation.mining import best_threshold, mine_pairs, mining_scores, read_gold

    check_output_file(output, "--output", inputs=[model, source, target, *([gold] if gold else [])],
                      suffix=".tsv", overwrite=overwrite)
    src_lines, src_texts = _sentences(source, column)
    tgt_lines, tgt_texts = _sentences(target, column)
    gold_pairs = read_gold(gold, set(src_lines), set(tgt_lines)) if gold else None
    if threshold is None and scoring == "margin":
        threshold = DEFAULT_MARGIN_THRESHOLD
    if (modality := tower_modality(model)) != "text":
        raise ContralignError(f"mine: {model} embeds {modality}s; mining needs a text model")
    tower = load_tower(model)
    show = len(src_texts) + len(tgt_texts) > 512
    src = tower.encode(src_texts, batch_size=batch_size, show_progress=show)
    tgt = tower.encode(tgt_texts, batch_size=batch_size, show_progress=show)
    candidates = mine_pairs(src, tgt, k=k, mode=mode, scoring=scoring)
    mined = candidates.above(threshold)
    _write(output, mined, src_lines, tgt_lines, src_texts, tgt_texts)
    summary: dict[str, Any] = {"model": model, "output": str(output), "pairs": len(mined),
                               "sources": len(src_texts), "targets": len(tgt_texts),
                               "threshold": threshold, "mode": mode, "scoring": scoring, "k": k}
    if gold_pairs is not None:
        src_row = {line: row for row, line in enumerate(src_lines)}
        tgt_row = {line: row for row, line in enumerate(tgt_lines)}
        rows = [(src_row[i], tgt_row[j]) for i, j in gold_pairs]
        summary["metrics"] = mining_scores(mined, rows)
        best = best_threshold(candidates, rows)
        summary["best_threshold"] = {"threshold": best.threshold, "precision": best.precision,
                                     "recall": best.recall, "f1": best.f1}
    _report(summary, as_json)


def _sentences(path: Path, column: str | None) -> tuple[list[int], list[str]]:
    """The line numbers and texts of a sentence file (blank lines skipped).

    Raises:
        DataError: as ``load_records`` (a missing, empty or unreadable file, a bad line).
    """
    from contralign.cli.common import read_items

    records = read_items(path, column, "text")
    return [r.line for r in records], [r.anchor for r in records]


def _write(output: Path, mined: MinedPairs, src_lines: list[int], tgt_lines: list[int],
           src_texts: list[str], tgt_texts: list[str]) -> None:
    """Write the pairs as TSV with a header, best first, atomically."""
    from contralign.core.io import atomic_write_text

    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(OUTPUT_COLUMNS)
    for i, j, score in zip(mined.src.tolist(), mined.tgt.tolist(), mined.scores.tolist(),
                           strict=True):
        writer.writerow([f"{score:.6f}", src_texts[i], tgt_texts[j], src_lines[i], tgt_lines[j]])
    atomic_write_text(output, buffer.getvalue())


def _report(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(summary)
        return
    threshold = "none" if summary["threshold"] is None else f"{summary['threshold']:g}"
    console.print(f"{summary['pairs']} pairs mined from {summary['sources']} × "
                  f"{summary['targets']} sentences ({summary['scoring']}, k={summary['k']}, "
                  f"{summary['mode']}, threshold {threshold}) → {summary['output']}",
                  markup=False, highlight=False)
    if "metrics" in summary:
        m, best = summary["metrics"], summary["best_threshold"]
        console.print(f"against the gold pairs: precision {m['precision']:.4f}, recall "
                      f"{m['recall']:.4f}, F1 {m['f1']:.4f} ({m['correct']:.0f} of "
                      f"{m['gold']:.0f} found); the best threshold on these gold pairs would be "
                      f"{best['threshold']:.4f} (F1 {best['f1']:.4f})", markup=False,
                      highlight=False)
