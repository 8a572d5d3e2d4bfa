"""``contralign eval MODEL --sts FILE --retrieval FILE --zero-shot FILE``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import typer
from rich.table import Table

from contralign.cli.align import GOLD_HELP, word_alignment_evaluators
from contralign.cli.bitext import BITEXT_HELP, SCORING_HELP, bitext_evaluators, bitext_table
from contralign.cli.common import command, console, parse_columns, print_json
from contralign.cli.export import Backend, backend_option

STS_COLUMNS = {"anchor": "sentence1", "positive": "sentence2", "score": "score"}


@command
def eval_command(
    model: str = typer.Argument(..., help="Model folder (one tower or several), run directory, "
                                "installed model package, static vectors or hub id."),
    sts: Path | None = typer.Option(None, "--sts", help="STS pairs: sentence1, sentence2, score."),
    retrieval: Path | None = typer.Option(
        None, "--retrieval", help="(query, relevant) pairs; (image, caption) pairs give "
        "image->text and text->image retrieval."),
    columns: str | None = typer.Option(
        None, "--columns", help="Roles of the retrieval file's columns: anchor=q,positive=doc."),
    zero_shot: Path | None = typer.Option(
        None, "--zero-shot", help="Images with class labels (.npz: images, labels, classes)."),
    classes: str | None = typer.Option(
        None, "--classes", help="Zero-shot class names, comma-separated (default: the .npz "
        "file's classes array, else the labels)."),
    template: list[str] = typer.Option(
        [], "--template", help="A zero-shot prompt with {label}; repeat for an ensemble "
        "(default: a built-in ensemble)."),
    bitext: list[str] = typer.Option([], "--bitext", help=BITEXT_HELP),
    scoring: Literal["cosine", "margin", "distance"] = typer.Option(
        "cosine", "--scoring", help=SCORING_HELP),
    word_alignment: Path | None = typer.Option(
        None, "--word-alignment", help="Sentence pairs to align ('source ||| target' lines), "
        "scored against --gold: precision, recall, F1, AER."),
    gold: Path | None = typer.Option(None, "--gold", help=GOLD_HELP),
    align_method: str | None = typer.Option(
        None, "--align-method", help="argmax, itermax, match or softmax (default: argmax)."),
    layer: int | None = typer.Option(None, "--layer", min=0, help="Word alignment: the hidden "
                                     "state to align with (default: the aligner's)."),
    knn: bool = typer.Option(False, "--knn", help="Weighted k-NN accuracy of --test images "
                             "against --train images (InstDisc: cosine, exp(s/T) votes)."),
    linear_probe: bool = typer.Option(
        False, "--linear-probe", help="Accuracy of a logistic-regression probe fit on --train "
        "features (standardised, L-BFGS, C chosen on a held-out 20%), on --test."),
    train: Path | None = typer.Option(
        None, "--train", help="--knn/--linear-probe: labelled training images (.npz: images, "
        "labels; or an IDX file such as train-images-idx3-ubyte.gz, its labels file beside it)."),
    test: Path | None = typer.Option(None, "--test", help="--knn/--linear-probe: labelled test "
                                     "images, as --train."),
    train_limit: int | None = typer.Option(
        None, "--train-limit", min=1, help="Use a fixed random sample (seed 0) of this many "
        "--train images."),
    test_limit: int | None = typer.Option(None, "--test-limit", min=1,
                                          help="The same for --test."),
    k: int = typer.Option(200, "--k", min=1, help="--knn: neighbours."),
    knn_temperature: float = typer.Option(0.1, "--knn-temperature", min=1e-6,
                                          help="--knn: T of the exp(similarity / T) weights."),
    probe_c: list[float] = typer.Option(
        [], "--probe-c", help="--linear-probe: inverse L2 strength; repeat for a grid chosen on "
        "held-out training images (default 0.001, 0.01, 0.1, 1)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    ci: float | None = typer.Option(
        None, "--ci", help="Add bootstrap confidence intervals at this level (e.g. 0.95): "
        "percentile intervals, fixed seed, resampling STS and geometry pairs, retrieval queries, "
        "bitext pairs and zero-shot images."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=1,
                                  help="Bootstrap resamples for --ci."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
    backend: Backend = backend_option(),
) -> None:
    """Evaluate MODEL, each side by its tower: STS (Spearman, Pearson ×100), retrieval
    (Recall@k, MRR@10, nDCG@10, MAP; image<->text when the pairs hold images), the geometry of
    the pairs (alignment, uniformity, modality gap), and zero-shot classification (top-1,
    top-5, mean per class; the confusion matrix with --json), and word alignment (precision,
    recall, F1, AER against gold links). With --ci, each metric gets a bootstrap interval
    (word alignment's excepted). --knn and --linear-probe classify --test images by their
    frozen embeddings and labelled --train images (top-1, and top-5 with more than 5 classes)."""
    from contralign.core.errors import ContralignError
    from contralign.encoders.loading import load_model, role_modalities
    from contralign.evaluation import (
        Sides,
        ZeroShotEvaluator,
        evaluate_all,
        evaluate_with_intervals,
    )

    if ci is not None and not 0.0 < ci < 1.0:
        raise ContralignError(f"--ci: the confidence level must be between 0 and 1 "
                              f"(exclusive), e.g. 0.95; got {ci}")
    classify = knn or linear_probe
    if (sts is None and retrieval is None and zero_shot is None and not bitext
            and word_alignment is None and not classify):
        raise ContralignError("eval: give --sts FILE, --retrieval FILE, --zero-shot FILE, "
                              "--bitext FILE, --word-alignment FILE --gold FILE and/or "
                              "--knn/--linear-probe --train FILE --test FILE")
    if classify != (train is not None and test is not None) or (train is None) != (test is None):
        raise ContralignError("--knn/--linear-probe: give both --train FILE and --test FILE "
                              "(labelled images), and --knn and/or --linear-probe with them")
    modalities = role_modalities(model)  # the files are read before the model is loaded
    if zero_shot is not None and "image" not in modalities.values():
        raise ContralignError(f"--zero-shot: {model} has no image tower (it embeds "
                              f"{', '.join(sorted(set(modalities.values())))})")
    evaluators: list[Any] = []
    if sts is not None:
        evaluators.append(_sts(sts, batch_size))
    if retrieval is not None:
        evaluators += _retrieval(retrieval, parse_columns(columns), modalities, batch_size)
    if zero_shot is not None:
        evaluators.append(_zero_shot(zero_shot, classes, template, batch_size))
    if classify and "image" not in modalities.values():
        raise ContralignError(f"--knn/--linear-probe: {model} has no image tower (it embeds "
                              f"{', '.join(sorted(set(modalities.values())))})")
    if train is not None and test is not None:
        evaluators += _classifiers(train, test, (train_limit, test_limit), knn, linear_probe,
                                   k, knn_temperature, probe_c, batch_size)
    bitexts = bitext_evaluators(bitext, scoring, modalities, batch_size) if bitext else []
    evaluators += bitexts
    evaluators += word_alignment_evaluators(word_alignment, gold, align_method, layer, batch_size)
    loaded = load_model(model, backend=backend)
    sides = Sides(loaded.side("anchor"), loaded.side("positive"))
    intervals: dict[str, tuple[float, float]] = {}
    if ci is None:
        metrics = evaluate_all(sides, evaluators)
    else:
        metrics, intervals = evaluate_with_intervals(sides, evaluators, ci, resamples=bootstrap)
    if as_json:
        details = {e.name: e.details for e in evaluators if isinstance(e, ZeroShotEvaluator)}
        details |= {e.name: e.settings() for e in evaluators if hasattr(e, "settings")}
        bounds = {"ci": {k: list(v) for k, v in intervals.items()}, "confidence": ci,
                  "bootstrap": bootstrap} if ci is not None else {}
        print_json({"model": model, "metrics": metrics, **bounds,
                    **({"details": details} if details else {})})
        return
    if bitexts:
        console.print(bitext_table(bitexts, metrics, intervals))
        metrics = {n: v for n, v in metrics.items() if not n.startswith("bitext/")}
    table = Table(title=f"Evaluation of {model}")
    table.add_column("metric")
    table.add_column("value" if ci is None else f"value [{ci:.0%} CI]", justify="right")
    for name, value in metrics.items():
        table.add_row(name, with_interval(value, intervals.get(name)))
    if metrics:
        console.print(table)


def with_interval(value: float, interval: tuple[float, float] | None) -> str:
    """``0.8123`` or, with an interval, ``0.8123 [0.7990, 0.8251]``."""
    if interval is None:
        return f"{value:.4f}"
    return f"{value:.4f} [{interval[0]:.4f}, {interval[1]:.4f}]"


def _sts(path: Path, batch_size: int) -> Any:
    from contralign.data import DataConfig
    from contralign.evaluation import read_pairs, sts_from_records

    records = read_pairs(DataConfig(path=str(path), columns=STS_COLUMNS), scored=True,
                         key="--sts")
    return sts_from_records(records, batch_size=batch_size)


def _retrieval(path: Path, columns: dict[str, str], modalities: dict[str, str],
               batch_size: int) -> list[Any]:
    """Retrieval and geometry of (query, document) pairs; image<->text retrieval when the two
    sides' towers embed different modalities."""
    from contralign.data import DataConfig
    from contralign.evaluation import (
        cross_modal_from_records,
        geometry_from_records,
        read_pairs,
        retrieval_from_records,
    )

    query, document = modalities["anchor"], modalities["positive"]
    images: dict[str, Any] = {role: m for role, m in modalities.items() if m == "image"}
    config = DataConfig(path=str(path), columns=columns, modalities=images)
    records = read_pairs(config, key="--retrieval")
    geometry = geometry_from_records(records, batch_size=batch_size)
    if query != document:
        return [cross_modal_from_records(records, batch_size=batch_size), geometry]
    return [retrieval_from_records(records, batch_size=batch_size), geometry]


def _zero_shot(path: Path, classes: str | None, templates: list[str], batch_size: int) -> Any:
    from contralign.data import DataConfig, load_records
    from contralign.data.arrays import npz_names
    from contralign.evaluation import zero_shot_from_records

    names = [c.strip() for c in classes.split(",") if c.strip()] if classes \
        else npz_names(path, "classes")
    records = load_records(DataConfig(path=str(path), modalities={"anchor": "image"}),
                           key="--zero-shot").records
    return zero_shot_from_records(records, names, templates or None, batch_size=batch_size)


def _classifiers(train: Path, test: Path, limits: tuple[int | None, int | None], knn: bool,
                 linear_probe: bool, k: int, temperature: float, c: list[float],
                 batch_size: int) -> list[Any]:
    """The k-NN and linear-probe evaluators over the labelled images of ``train`` and ``test``
    (each file read once, both evaluators on the same images)."""
    from contralign.data.labelled import read_labelled_images
    from contralign.evaluation import KNNEvaluator, LinearProbeEvaluator
    from contralign.evaluation.linear_probe import DEFAULT_C_GRID

    train_set = read_labelled_images(train, key="--train", limit=limits[0])
    test_set = read_labelled_images(test, key="--test", limit=limits[1])
    sets = (train_set.items, train_set.labels, test_set.items, test_set.labels)
    evaluators: list[Any] = []
    if knn:
        evaluators.append(KNNEvaluator(*sets, k=k, temperature=temperature,
                                       batch_size=batch_size))
    if linear_probe:
        evaluators.append(LinearProbeEvaluator(*sets, c=c or DEFAULT_C_GRID,
                                               batch_size=batch_size))
    return evaluators
