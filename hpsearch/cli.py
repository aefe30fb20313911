"""The command line: each command parses flags, makes one library call and renders the result.

Heavy imports (torch, optuna, pandas) happen inside the commands, so ``--help`` is instant.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

import click

from hpsearch.errors import HpsearchError, Interrupted
from hpsearch.spec import DEFAULT_EPOCHS, DEFAULT_SEED, DEFAULT_TRIALS, GRID_DEFAULTS, PRUNERS, SAMPLED_DEFAULTS

TOP_ROWS = 10  # rows of the ranked table printed after a search; `report` prints them all


class Cli(click.Group):
    """Turns every error into one line on stderr and an exit status: 2 usage, 1 runtime, 130 Ctrl-C."""

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> Any:  # type: ignore[override]
        try:
            code = super().main(args, prog_name, standalone_mode=False, **extra)
        except click.UsageError as error:
            where = error.ctx.command_path if error.ctx else "hpsearch"
            _fail(f"{error.format_message()} (see '{where} --help')", 2)
        except click.ClickException as error:
            _fail(error.format_message(), error.exit_code)
        except click.Abort:
            _fail("interrupted", 130)
        except HpsearchError as error:
            _fail(str(error), error.exit_code)
        except Exception as error:  # a bug, not a user's mistake: one line, the traceback on request
            if os.environ.get("HPSEARCH_DEBUG"):
                raise
            _fail(f"internal error: {type(error).__name__}: {error} (set HPSEARCH_DEBUG=1 for the traceback)", 1)
        sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def _console(stderr: bool = False):  # noqa: ANN202
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Not a terminal (a file, a pipe, CliRunner): wide enough that the table is never squeezed,
    # unless COLUMNS says otherwise (rich reads it).
    wide = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(file=stream, width=200 if wide else None)


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="hpsearch")
def main() -> None:
    """hpsearch: tune the learning rate, weight decay, batch size and momentum of a PyTorch model.

    \b
    The recipe, on the built-in digits task:
      hpsearch grid --task digits --study coarse     # the coarse grid every course recommends
      hpsearch random --trials 20                    # random search over wide ranges
      hpsearch tpe --trials 20                       # TPE (Bayesian) search
      hpsearch report coarse --format csv --output coarse.csv

    Studies live in studies/hpsearch.journal (or --storage / $HPSEARCH_STORAGE); re-running a
    command continues its study.
    """


def _search_options(defaults: dict[str, str], sampled: bool) -> Callable[[Callable], Callable]:
    scale = {
        "lr": "log scale",
        "weight_decay": "log scale; 0 may stand beside a range",
        "batch_size": "powers of two",
        "momentum": "ranges on 1 - momentum" if not sampled else "counted ranges on 1 - momentum",
    }
    options = [
        click.option("--lr", metavar="VALUES", help=f"Learning rates ({scale['lr']}). [default: {defaults['lr']}]"),
        click.option("--weight-decay", metavar="VALUES",
                     help=f"Weight decays ({scale['weight_decay']}). [default: {defaults['weight_decay']}]"),
        click.option("--batch-size", metavar="VALUES",
                     help=f"Batch sizes ({scale['batch_size']}). [default: {defaults['batch_size']}]"),
        click.option("--momentum", metavar="VALUES",
                     help=f"SGD momentum ({scale['momentum']}). [default: {defaults['momentum']}]"),
        click.option("--task", default="digits", show_default=True, help="Built-in task to tune (digits)."),
        click.option("--epochs", type=int, default=DEFAULT_EPOCHS, show_default=True, help="Epochs per trial."),
        click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True,
                     help="Seed; each configuration's seed derives from it and the values."),
        click.option("--study", help="Study name. [default: TASK-COMMAND, e.g. digits-grid]"),
        click.option("--storage", metavar="URL", help="Journal file path or Optuna storage URL. "
                     "[default: $HPSEARCH_STORAGE or studies/hpsearch.journal]"),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:INDEX."),
        click.option("--prune", type=click.Choice(PRUNERS), default="none", show_default=True,
                     help="Stop poor trials early (Optuna's pruners); pruned members leave the population."),
    ]
    if sampled:
        options.append(click.option("--trials", type=int, default=DEFAULT_TRIALS, show_default=True,
                                    help="Trials in the study in all (a re-run tops it up)."))

    def decorate(f: Callable) -> Callable:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def _run(command: str, **flags: Any) -> None:
    """Run a search with a live progress bar, then print the ranked table."""
    import time

    from hpsearch.report import best_line, failure_lines, progress_bar, table
    from hpsearch.results import load_results
    from hpsearch.search import run_search
    from hpsearch.spec import build_spec

    spec = build_spec(command, **flags)
    interrupted: Interrupted | None = None
    started = time.perf_counter()
    with progress_bar(_console(stderr=True), f"{command} {spec.study}") as update:
        try:
            outcome = run_search(spec, update)
        except Interrupted as error:
            interrupted, outcome = error, None
    seconds = time.perf_counter() - started
    frame = load_results([spec.study], spec.storage)
    console = _console()
    console.print(table(frame, TOP_ROWS, title=f"Study {spec.study}: best first", width=console.width))
    for line in failure_lines(frame):
        console.print(line, style="red")
    console.print(best_line(frame))
    if outcome is not None:
        if outcome.trained == 0:
            console.print(f"Nothing to train: study '{spec.study}' already has its {outcome.already} trials.")
        else:
            failed = f", {outcome.failed} failed" if outcome.failed else ""
            console.print(f"Trained {outcome.trained} trials{failed} in {seconds:.1f} s; "
                          f"{outcome.already + outcome.trained} in study '{spec.study}' ({outcome.storage}).")
        console.print(f"All rows: hpsearch report {spec.study}")
    if interrupted is not None:
        raise interrupted


@main.command()
@_search_options(GRID_DEFAULTS, sampled=False)
def grid(**flags: Any) -> None:
    """Run a grid: every combination of the values, each point trained once.

    \b
    Default: the recipe's coarse grid (24 points: 4 learning rates x 3 weight decays
    x 2 batch sizes, momentum 0.9, 5 epochs). VALUES is a comma list or a range:
      --lr 1e-1,1e-2,1e-3       listed values
      --lr 1e-4:1e-1:4          4 points on a log scale (1e-4, 1e-3, 1e-2, 1e-1)
      --batch-size 16:256       every power of two from 16 to 256
      --momentum 0.5:0.99:3     3 points on a log scale of 1 - momentum
      --weight-decay 0,1e-5:1e-3:3

    \b
    Example:
      hpsearch grid --task digits --study coarse
    Re-running the same command trains only the points still missing.
    """
    _run("grid", **flags)


@main.command()
@_search_options(SAMPLED_DEFAULTS, sampled=True)
def random(**flags: Any) -> None:
    """Random search: sample configurations from ranges (or lists) of values.

    \b
    Ranges are sampled on each parameter's scale (learning rate and weight decay log-uniform,
    batch size a power of two, momentum uniform). Weight decay "0,1e-6:1e-2" draws 0 half the time.

    \b
    Example:
      hpsearch random --task digits --trials 20 --study r
    """
    _run("random", **flags)


@main.command()
@_search_options(SAMPLED_DEFAULTS, sampled=True)
def tpe(**flags: Any) -> None:
    """TPE search (Optuna's Bayesian sampler) over ranges (or lists) of values.

    \b
    Asks several trials at once (constant liar) and trains them as one population.

    \b
    Example:
      hpsearch tpe --task digits --trials 20 --study t --lr 1e-4:1
    """
    _run("tpe", **flags)


@main.command()
@click.argument("studies", nargs=-1)
@click.option("--format", "fmt", type=click.Choice(["table", "csv"]), default="table", show_default=True,
              help="Output format.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file instead of the terminal.")
@click.option("--top", type=click.IntRange(min=1), help="Only the best N rows.")
@click.option("--storage", metavar="URL", help="Journal file path or Optuna storage URL.")
def report(studies: tuple[str, ...], fmt: str, output: Path | None, top: int | None, storage: str | None) -> None:
    """Show the ranked trials of one or more studies, best first; without a study, list the studies.

    \b
    Diverged and failed trials come last, marked so, with empty metric cells.

    \b
    Examples:
      hpsearch report                         # which studies are there?
      hpsearch report coarse
      hpsearch report coarse --format csv --output coarse.csv
    """
    from hpsearch.report import best_line, failure_lines, studies_table, table, to_csv
    from hpsearch.results import list_studies, load_results

    if not studies:
        _console().print(studies_table(list_studies(storage)))
        return
    frame = load_results(studies, storage)
    if top is not None:
        frame = frame.head(top)
    if fmt == "csv":
        text = to_csv(frame)
        if output is None:
            click.echo(text, nl=False)
            return
    else:
        import io

        from rich.console import Console

        console = _console() if output is None else Console(record=True, width=200, file=io.StringIO())
        console.print(table(frame, title=f"Study {', '.join(studies)}: best first", width=console.width))
        for line in failure_lines(frame):
            console.print(line, style="red")
        console.print(best_line(frame))
        if output is None:
            return
        text = console.export_text()
    try:
        output.write_text(text)
    except OSError as error:
        raise click.ClickException(f"cannot write {output}: {error.strerror}") from None
    click.echo(f"Wrote {len(frame)} rows to {output}", err=True)
