"""``contralign align-words MODEL SRC [TGT] -o OUT.txt`` and the word-alignment evaluation that
``contralign eval --word-alignment DATA --gold GOLD`` runs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import typer

from contralign.cli.common import command, console, err_console, print_json

METHOD_HELP = ("Extraction: argmax (SimAlign: forward ∩ backward argmax), itermax (SimAlign's "
               "iterative argmax), match (Hungarian matching), softmax (awesome-align: both "
               "softmaxes > 1e-3). Default: argmax.")
LAYER_HELP = ("Hidden state to align with (0: embeddings); default: layer 7 of a 12-layer model, "
              "the same relative depth in others.")
LEVEL_HELP = ("subword: align subwords, words are aligned when any of their subwords are "
              "(SimAlign's default); word: align words, each the mean of its subwords. "
              "Default: subword.")
# Above this many sentence pairs, align-words shows a progress bar (on stderr).
PROGRESS_THRESHOLD = 1000
CENTER_HELP = ("Subtract the pair's mean vector before comparing (removes what every token "
               "shares; default: on).")
GOLD_HELP = ("Gold links, one line per pair: 1-indexed i-j (sure) and ipj (possible), as in the "
             "standard test sets.")


@command
def align_words_command(
    model: str = typer.Argument(..., help="A transformer text model: folder, run directory, "
                                "installed model package or hub id."),
    source: Path = typer.Argument(..., help="'source ||| target' lines, or the source sentences "
                                  "(one per line, words separated by spaces) when TARGET is "
                                  "given."),
    target: Path | None = typer.Argument(None, help="The target sentences, line-parallel with "
                                         "SOURCE."),
    output: Path = typer.Option(..., "--output", "-o", help="The Pharaoh file to write (.txt, "
                                "0-indexed i-j per pair)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUTPUT if it exists."),
    method: Literal["argmax", "itermax", "match", "softmax"] | None = typer.Option(
        None, "--method", help=METHOD_HELP),
    layer: int | None = typer.Option(None, "--layer", min=0, help=LAYER_HELP),
    level: Literal["subword", "word"] | None = typer.Option(None, "--level", help=LEVEL_HELP),
    center: bool | None = typer.Option(None, "--center/--no-center", help=CENTER_HELP),
    gold: Path | None = typer.Option(None, "--gold", help=GOLD_HELP + " Prints precision, "
                                     "recall, F1 and AER."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Sentence pairs per "
                                   "forward pass."),
    as_json: bool = typer.Option(False, "--json", help="Print a summary as JSON."),
) -> None:
    """Align the words of each sentence pair with MODEL's contextual subword vectors
    (SimAlign / awesome-align) and write Pharaoh links: line k holds the 0-indexed
    'source-target' word pairs of pair k."""
    from contralign.alignment import align_corpus, alignment_scores, write_links
    from contralign.core.outputs import check_output_file
    from contralign.encoders.loading import load_tower

    inputs: list[Any] = [model, source] + [p for p in (target, gold) if p is not None]
    check_output_file(output, "--output", inputs=inputs, suffix=".txt", overwrite=overwrite)
    corpus, gold_links = read_task(source, target, gold)
    tower = load_tower(model)
    setting = choose_setting(tower, method, layer, level, center, method_key="--method")
    with _progress(len(corpus), show=len(corpus) > PROGRESS_THRESHOLD and not as_json) as advance:
        links = align_corpus(tower, corpus, setting, batch_size=batch_size, progress=advance)
    write_links(output, links)
    summary: dict[str, Any] = {
        "model": model, "method": setting.method, "layer": setting.layer,
        "level": setting.level, "center": setting.center, "pairs": len(corpus),
        "links": sum(len(x) for x in links), "output": str(output)}
    if gold_links is not None:
        summary["metrics"] = alignment_scores(links, gold_links).metrics()
    if as_json:
        print_json(summary)
        return
    console.print(f"{summary['pairs']} sentence pairs, {summary['links']} links ({setting}) → "
                  f"{output}", markup=False, highlight=False)
    if "metrics" in summary:
        console.print(_table(f"Word alignment against {gold}", summary["metrics"]))


def read_task(source: Path, target: Path | None, gold: Path | None) -> tuple[Any, Any]:
    """The sentence pairs (from a ``src ||| tgt`` file or two parallel files) and, when
    ``gold`` is given, their gold links checked against them.

    Raises:
        DataError: a bad file, line or link (file and line named).
    """
    from contralign.alignment import read_bitext, read_links, read_parallel

    corpus = read_bitext(source) if target is None else read_parallel(source, target)
    return corpus, None if gold is None else read_links(gold, corpus=corpus)


def choose_setting(tower: Any, method: str | None, layer: int | None, level: str | None,
                   center: bool | None, *, method_key: str) -> Any:
    """The alignment setting: the options given, the defaults for the rest (the layer at
    ``tower``'s depth).

    Raises:
        ConfigError: naming the option: an unknown method or level, a layer the model lacks,
            or a tower that is not a transformer text tower.
    """
    from contralign.alignment import (
        DEFAULT_CENTER,
        DEFAULT_LEVEL,
        DEFAULT_METHOD,
        AlignSetting,
        check_setting,
        default_layer,
    )

    setting = AlignSetting(
        method or DEFAULT_METHOD,  # type: ignore[arg-type]
        default_layer(tower) if layer is None else layer,
        level or DEFAULT_LEVEL,  # type: ignore[arg-type]
        DEFAULT_CENTER if center is None else center)
    return check_setting(tower, setting, layer_key="--layer", method_key=method_key,
                         level_key="--level")


class WordAlignmentEvaluator:
    """``contralign eval --word-alignment DATA --gold GOLD``: precision, recall, F1 and AER of
    the text tower's alignments (``primary``: AER, lower is better)."""

    name = "word_alignment"
    primary = "aer"

    def __init__(self, corpus: Any, gold: Any, method: str | None, layer: int | None,
                 batch_size: int) -> None:
        from contralign.alignment import METHODS
        from contralign.core.errors import ConfigError

        if method is not None and method not in METHODS:  # refused before the model loads
            raise ConfigError(f"--align-method: {method!r} is not an alignment method; choose "
                              f"one of {', '.join(METHODS)}")
        self.corpus, self.gold = corpus, gold
        self.method, self.layer, self.batch_size = method, layer, batch_size

    def __call__(self, sides: Any) -> dict[str, float]:
        from contralign.alignment import align_corpus, alignment_scores
        from contralign.evaluation import Sides

        tower = Sides.of(sides).text
        setting = choose_setting(tower, self.method, self.layer, None, None,
                                 method_key="--align-method")
        links = align_corpus(tower, self.corpus, setting, batch_size=self.batch_size)
        return alignment_scores(links, self.gold).metrics()


def word_alignment_evaluators(data: Path | None, gold: Path | None, method: str | None,
                              layer: int | None, batch_size: int) -> list[Any]:
    """The word-alignment evaluator of ``eval`` (none without ``--word-alignment``); reads and
    checks both files now, before the model is loaded.

    Raises:
        ContralignError: ``--gold`` without ``--word-alignment`` or the reverse; alignment
            options without ``--word-alignment``.
        DataError: a bad line in either file.
    """
    from contralign.core.errors import ContralignError

    if data is None:
        if gold is not None or method is not None or layer is not None:
            raise ContralignError("eval: --gold, --align-method and --layer go with "
                                  "--word-alignment FILE")
        return []
    if gold is None:
        raise ContralignError("eval: --word-alignment needs --gold FILE (the gold links)")
    corpus, gold_links = read_task(data, None, gold)
    return [WordAlignmentEvaluator(corpus, gold_links, method, layer, batch_size)]


def _table(title: str, metrics: dict[str, float]) -> Any:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}")
    return table


@contextmanager
def _progress(total: int, *, show: bool) -> Iterator[Callable[[int], None] | None]:
    """A callback that moves a progress bar to ``done`` pairs (None when not shown)."""
    if not show:
        yield None
        return
    from rich.progress import Progress

    with Progress(console=err_console, transient=True) as bar:
        task = bar.add_task("Aligning", total=total)
        yield lambda done: bar.update(task, completed=done)
