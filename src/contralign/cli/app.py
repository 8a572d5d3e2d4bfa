"""The ``contralign`` command: one Typer app, one module per command group."""

from __future__ import annotations

import typer

from contralign.cli import (
    align,
    catalog,
    check,
    common,
    demo,
    encode,
    evaluate,
    export,
    mine,
    report,
    search,
    serve,
    train,
)

app = typer.Typer(
    cls=common.OneLineUsageErrors,
    name="contralign",
    help="Contrastive representation alignment: train, evaluate, encode and search.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _options(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks on errors."),
) -> None:
    common.VERBOSE["on"] = verbose
    common.quiet_libraries()


app.command("demo")(demo.demo_command)
app.command("train")(train.train_command)
app.command("check")(check.check_command)
app.command("encode")(encode.encode_command)
app.command("export")(export.export_command)
app.command("eval")(evaluate.eval_command)
app.command("index")(search.index_command)
app.command("search")(search.search_command)
app.command("mine")(mine.mine_command)
app.command("report")(report.report_command)
app.command("align-words")(align.align_words_command)
app.command("serve")(serve.serve_command)
app.command("objectives")(catalog.objectives_command)
app.command("recipes")(catalog.recipes_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
