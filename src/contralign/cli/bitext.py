"""What ``contralign eval --bitext FILE`` adds to the eval command: the files (a file, a folder
of ``*.tsv`` or a glob), one Tatoeba evaluator per file, and the per-file table."""

from __future__ import annotations

import glob
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

if TYPE_CHECKING:
    from contralign.evaluation.bitext import Scoring

BITEXT_HELP = ("Translation pairs, two columns (source, target: Tatoeba's deu<TAB>eng) or columns "
               "named anchor and positive: accuracy both ways. A file, a folder of *.tsv or a "
               "quoted glob; repeat for more.")
SCORING_HELP = ("Bitext scoring: cosine (nearest neighbour), margin (ratio margin over k=4 "
                "neighbours, Artetxe & Schwenk 2019) or distance (difference margin).")
NAME_PREFIX = "bitext/"


def bitext_files(specs: Sequence[str]) -> list[Path]:
    """The files named by ``--bitext`` values: a file as is, a folder's ``*.tsv`` files, a
    glob's matches (sorted), each once, in order.

    Raises:
        ContralignError: a folder without ``.tsv`` files, or a glob that matches nothing.
    """
    from contralign.core.errors import ContralignError

    files: dict[Path, None] = {}
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            found = sorted(path.glob("*.tsv"))
            if not found:
                raise ContralignError(f"--bitext: {spec} is a folder without .tsv files")
        elif glob.has_magic(spec) and not path.exists():
            found = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
            if not found:
                raise ContralignError(f"--bitext: {spec} matches no file")
        else:
            found = [path]  # a missing file is reported by the reader, with its name
        files.update(dict.fromkeys(found))
    return list(files)


def bitext_evaluators(specs: Sequence[str], scoring: Scoring, modalities: Mapping[str, str],
                      batch_size: int) -> list[Any]:
    """One ``BitextEvaluator`` per file, named ``bitext/<file stem>`` (the path when two stems
    are equal), its directions labelled by the file's columns (``deu→eng``, ``eng→deu``).

    Raises:
        ContralignError: the model does not embed texts on both sides, or as ``bitext_files``.
        DataError: a bad file (as ``evaluation.bitext.read_bitext``).
    """
    from contralign.core.errors import ContralignError
    from contralign.data import DataConfig
    from contralign.evaluation.bitext import bitext_columns, bitext_from_records, read_bitext

    if any(modalities.get(role, "text") != "text" for role in ("anchor", "positive")):
        raise ContralignError("--bitext: translation pairs need a text tower on both sides; "
                              f"the model embeds {dict(modalities)}")
    files = bitext_files(specs)
    stems = [path.stem for path in files]
    evaluators = []
    for path, stem in zip(files, stems, strict=True):
        columns = bitext_columns(path) or {"anchor": "anchor", "positive": "positive"}
        records = read_bitext(DataConfig(path=str(path), columns=columns))
        name = NAME_PREFIX + (stem if stems.count(stem) == 1 else str(path))
        directions = (f"{columns['anchor']}→{columns['positive']}",
                      f"{columns['positive']}→{columns['anchor']}")
        evaluators.append(bitext_from_records(records, name=name, scoring=scoring,
                                              batch_size=batch_size, directions=directions))
    return evaluators


def bitext_table(evaluators: Sequence[Any], metrics: Mapping[str, float],
                 intervals: Mapping[str, tuple[float, float]] | None = None) -> Table:
    """Accuracy per file in both directions and their mean, with the average over files; with
    ``intervals`` (``eval --ci``), each file's mean accuracy carries its interval."""
    table = Table(title=f"Bitext accuracy ({evaluators[0].scoring} scoring)")
    for column in ("file", "pairs", "source→target", "target→source", "mean"):
        table.add_column(column, justify="left" if column == "file" else "right")
    rows = []
    for evaluator in evaluators:
        values = [metrics[f"{evaluator.name}/{key}"]
                  for key in ("forward_accuracy", "backward_accuracy", "accuracy")]
        rows.append(values)
        forward, backward = evaluator.directions
        bounds = (intervals or {}).get(f"{evaluator.name}/accuracy")
        mean = f"{values[2]:.4f}" + (f" [{bounds[0]:.4f}, {bounds[1]:.4f}]" if bounds else "")
        table.add_row(evaluator.name.removeprefix(NAME_PREFIX), str(len(evaluator.sources)),
                      f"{values[0]:.4f} ({forward})", f"{values[1]:.4f} ({backward})", mean)
    if len(rows) > 1:
        means = [sum(row[c] for row in rows) / len(rows) for c in range(3)]
        table.add_section()
        table.add_row(f"average of {len(rows)}", "", *(f"{m:.4f}" for m in means))
    return table
