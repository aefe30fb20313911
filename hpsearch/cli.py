"""The command line: each command parses flags, makes one library call and renders the result.

Heavy imports (torch, optuna, pandas) happen inside the commands, so ``--help`` is instant.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

import click

from hpsearch.errors import HpsearchError, Interrupted
from hpsearch.space import OPTIMIZERS, Param
from hpsearch.space import params as space_params
from hpsearch.spec import (DEFAULT_EPOCHS, DEFAULT_RETRIES, DEFAULT_SEED, DEFAULT_TRIALS, INT_BOUNDS, KINDS, MAX_POINTS,
                           METRICS, PRUNERS, RANKINGS, SCHEDULES)

TOP_ROWS = 10  # rows of the ranked table printed after a search; `report` prints them all
REPORT_FORMATS = ("table", "csv", "markdown", "json", "html", "toml")  # each but table is a key of report.FORMATS


class Cli(click.Group):
    """Turns every error into one line on stderr and an exit status: 2 usage, 1 runtime, 130 Ctrl-C.

    The line never shows a password: of a URL given on the command line or in $HPSEARCH_STORAGE, or of
    any storage the command opened (a study file's), whatever echoed it (hpsearch, a driver, click).
    """

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> Any:  # type: ignore[override]
        urls = [str(a) for a in (sys.argv[1:] if args is None else args)] + [os.environ.get("HPSEARCH_STORAGE", "")]
        try:
            code = super().main(args, prog_name, standalone_mode=False, **extra)
        except click.UsageError as error:
            where = error.ctx.command_path if error.ctx else "hpsearch"
            _fail(f"{error.format_message()} (see '{where} --help')", 2, urls)
        except click.ClickException as error:
            _fail(error.format_message(), error.exit_code, urls)
        except click.Abort as error:  # Ctrl-C, or SIGTERM while waiting for a lock (hpsearch.storage.journal)
            terminated = getattr(error.__cause__, "signum", None) == signal.SIGTERM
            _fail("interrupted", 143 if terminated else 130, urls)
        except HpsearchError as error:
            _fail(str(error), error.exit_code, urls)
        except Exception as error:  # a bug, not a user's mistake: one line, the traceback on request
            if os.environ.get("HPSEARCH_DEBUG"):
                raise
            _fail(f"internal error: {type(error).__name__}: {error} (set HPSEARCH_DEBUG=1 for the traceback)", 1, urls)
        sys.exit(code if isinstance(code, int) else 0)


def entry() -> None:
    """The ``hpsearch`` console script and ``python -m hpsearch``: main, ended by hpsearch.shutdown.leave (0.4-0.6 s
    sooner than Python's own exit once torch is loaded)."""
    from hpsearch.shutdown import leave

    try:
        main()
    except SystemExit as stop:
        leave(stop.code)
    leave(0)


def _fail(message: str, code: int, urls: list[str]) -> None:
    """The single exit for errors: one line, scrubbed of the passwords of ``urls`` and of every storage opened."""
    from hpsearch.storage.redact import scrub

    click.echo(f"Error: {scrub(message, urls)}", err=True)
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
      hpsearch refine --from coarse --study fine     # finer around the best, trained longer
      hpsearch report coarse fine --format html --output report.html
      hpsearch test --study fine                     # the chosen configuration, once on the test split
      hpsearch random --trials 20                    # or: random search over wide ranges
      hpsearch tpe --trials 20                       # or: TPE (Bayesian) search

    Studies live in studies/hpsearch.journal (or --storage / $HPSEARCH_STORAGE); re-running a
    command continues its study.
    """


def _read_config(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """--config: the study file's settings become the defaults, so flags given override them."""
    if value is None:
        return
    from hpsearch.studyfile import read_study_file

    # file keys are the flags' names with underscores: --weight-decay is weight_decay, --from is from
    names = {p.opts[0].lstrip("-").replace("-", "_"): p.name for p in ctx.command.get_params(ctx)
             if isinstance(p, (click.Option, click.Argument)) and p.name not in ("config", "dry_run", "show")}
    values = read_study_file(value, ctx.command.name, set(names))
    ctx.default_map = {**(ctx.default_map or {}), **{names[key]: v for key, v in values.items()}}


TASK_OPTIONS = [  # what to tune: shared by the searches and `check`
    click.option("--task", metavar="TASK", help="A built-in task (digits, mnist1d) or your own: FILE.py:FUNCTION "
                 "or package.module:FUNCTION returning an hpsearch.Task. [default: digits]"),
    click.option("--data", metavar="FILE", help="Tune the default MLP on a data file instead of a task: .npz with "
                 "x_train, y_train (optional x_val, y_val, x_test, y_test) or .csv with --target."),
    click.option("--target", metavar="COLUMN", help="The label column of a .csv --data file."),
    click.option("--kind", type=click.Choice(KINDS), help="Of a --data file. [default: integer or text "
                 "targets are classes, floating-point targets regression]"),
]
OWN_CODE_OPTIONS = [  # your own training code instead of a task: the searches only (refine and test carry them over)
    click.option("--objective", metavar="FILE.py:FUNCTION", help="Tune your own training function: hpsearch calls "
                 "FUNCTION(hp) per trial; it reads hp.lr, hp.weight_decay, ... and calls hp.report(epoch, "
                 "val_accuracy=..., val_loss=..., train_loss=...) each epoch. Or give a command after -- instead."),
    click.option("--timeout", type=float, metavar="SECONDS", help="Your own code: a trial running longer is "
                 "stopped and recorded as timed_out; the search goes on."),
    click.option("--metric", type=click.Choice(METRICS), help="Your own code: what to rank by, val_accuracy "
                 "(maximised) or val_loss (minimised, e.g. regression). [default: val_accuracy]"),
    click.argument("run", nargs=-1, type=click.UNPROCESSED, metavar="[-- COMMAND...]"),
]
CONFIG_OPTION = click.option(
    "--config", metavar="FILE", callback=_read_config, is_eager=True, expose_value=False,
    help="A study file (TOML, e.g. studies/digits-coarse.toml) with these settings; flags given override it.")
DRY_RUN_OPTION = click.option(
    "--dry-run", is_flag=True,
    help="Print the configurations (or the sampler and budget) and the estimated time from measured step "
    "times; train nothing, write nothing.")


def _space_options(sampled: bool) -> list[click.Option]:
    """SPACE: a VALUES option per registered parameter, with its scale and this command's default."""
    def default(p: Param) -> str:
        if sampled:
            return p.sampled_default
        others: dict[str, list[str]] = {}
        for optimizer, text in p.grid_default_by_optimizer:
            others.setdefault(text, []).append(optimizer)
        return "; ".join([p.grid_default] + [f"{', '.join(names)}: {text}" for text, names in others.items()])

    return [click.Option([p.flag], metavar="VALUES", help=f"{p.help} ({p.scale_help[sampled]}). "
                         f"[default: {default(p)}]") for p in space_params()]


class _SearchCommand(click.Command):
    """A search command: its SPACE options are read from the parameter registry when it runs, after
    --config and --dry-run (a parameter registered after this module was imported has its flag too)."""

    sampled = False

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        base = super().get_params(ctx)
        return base[:2] + _space_options(self.sampled) + base[2:]


class _SampledCommand(_SearchCommand):
    sampled = True


STORAGE_OPTION = click.option("--storage", metavar="URL", help="Journal file path or Optuna storage URL. "
                              "[default: $HPSEARCH_STORAGE or studies/hpsearch.journal]")
DEVICE_OPTION = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:INDEX.")
SCHEDULE_OPTIONS = [  # the learning rate over training: shared by the searches and `test`
    click.option("--schedule", type=click.Choice(SCHEDULES), default="constant", show_default=True,
                 help="The learning rate over training, stepped every step as torch.optim.lr_scheduler: step "
                 "(x0.1 at each third), cosine (to 0), exponential (to 1/100)."),
    click.option("--warmup", type=int, default=0, show_default=True, metavar="EPOCHS",
                 help="Epochs of linear warm-up (torch's LinearLR) before the schedule."),
]
REPEATS_HELP = ("Train each configuration with K seeds (K members of one population); its trial's value is their "
                "mean, and the report shows mean ± standard error.")
WORKER_OPTIONS = [  # how a search runs: shared by the searches and `refine`
    click.option("--jobs", type=int, default=1, show_default=True,
                 help="Worker processes sharing the study (on several GPUs, one per device in turn). "
                 "Workers started by hand on the same study cooperate the same way."),
    click.option("--retries", type=int, default=DEFAULT_RETRIES, show_default=True,
                 help="Re-runs of a configuration whose training raised an error, before it counts as failed."),
    click.option("--max-points", type=int, default=MAX_POINTS, show_default=True,
                 help="The largest grid (and counted range) to take; a larger one is refused as a likely typo."),
]


def _search_options(sampled: bool) -> Callable[[Callable], Callable]:
    options = [
        CONFIG_OPTION,
        DRY_RUN_OPTION,
        *TASK_OPTIONS,
        *OWN_CODE_OPTIONS,
        click.option("--epochs", type=int, default=DEFAULT_EPOCHS, show_default=True, help="Epochs per trial."),
        click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True,
                     help="Seed; each configuration's seed derives from it and the values."),
        click.option("--study", help="Study name. [default: TASK-COMMAND, e.g. digits-grid; for your own task "
                     "its function name, for --data the file name, e.g. my_task-grid]"),
        STORAGE_OPTION,
        DEVICE_OPTION,
        click.option("--prune", type=click.Choice(PRUNERS), default="none", show_default=True,
                     help="Stop poor trials early (Optuna's pruners); pruned members leave the population."),
        *SCHEDULE_OPTIONS,
        click.option("--repeats", type=int, default=1, show_default=True, metavar="K", help=REPEATS_HELP),
        *WORKER_OPTIONS,
    ]
    if sampled:
        options.append(click.option("--trials", type=int, default=DEFAULT_TRIALS, show_default=True,
                                    help="Trials in the study in all (a re-run tops it up)."))
    return _apply(options)


def _apply(options: list[Callable[[Callable], Callable]]) -> Callable[[Callable], Callable]:
    """Several click options as one decorator, in the order listed."""
    def decorate(f: Callable) -> Callable:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def _run(command: str, spec: Any = None, **flags: Any) -> None:  # noqa: ANN401 - a spec.StudySpec, imported late
    """Run a search (``spec``, else one built from the flags) with a live progress bar, then print the ranked table."""
    import time

    from hpsearch.report.render import outcome_lines, print_ranked, progress_bar
    from hpsearch.report.results import read_results
    from hpsearch.search.run import run_search
    from hpsearch.spec import build_spec

    dry_run = flags.pop("dry_run", False)
    if spec is None:
        spec = build_spec(command, **flags)
    if dry_run:
        _dry_run(spec)
        return
    bar = _console(stderr=True)
    eta = None
    if bar.is_terminal and spec.jobs == 1:  # the bar is shown: its ETA starts from a few measured steps
        from hpsearch.recipe.estimate import training_seconds

        eta = training_seconds(spec)
    interrupted: Interrupted | None = None
    started = time.perf_counter()
    with progress_bar(bar, f"{command} {spec.study}", eta) as update:
        try:
            outcome = run_search(spec, update)
        except Interrupted as error:
            interrupted, outcome = error, None
    seconds = time.perf_counter() - started
    console = _console()
    print_ranked(console, read_results([spec.study], spec.storage), TOP_ROWS, notes=False)
    if outcome is not None:
        for line in outcome_lines(outcome, spec.study, seconds):
            console.print(line)
        for warning in outcome.warnings:
            click.echo(f"Warning: {warning}", err=True)
    if interrupted is not None:
        raise interrupted


def _dry_run(spec: Any, listed: bool = False) -> None:  # noqa: ANN401 - a spec.StudySpec, imported late
    """--dry-run: the plan and its estimated time; nothing is trained or written (``listed``: points shown already)."""
    from hpsearch.recipe.estimate import estimate_search
    from hpsearch.report.render import plan_lines, plan_table

    spec.check_size()  # a refined spec was not built from flags
    plan, estimate = estimate_search(spec)
    console = _console()
    console.print(f"Dry run of hpsearch {'refine' if spec.source else spec.command}: study {spec.study}, task {spec.task}, "
                  f"{spec.epochs} epochs, seed {spec.seed}" + (f", {spec.repeats} seeds a configuration" if spec.repeats > 1 else "")
                  + (f", for one of {spec.jobs} workers" if spec.jobs > 1 else ""))
    if plan.points and not listed:
        console.print(plan_table(plan.points))
    for line in plan_lines(plan, estimate):
        console.print(line)


@main.command(cls=_SearchCommand)
@_search_options(sampled=False)
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
      hpsearch grid --task examples/my_task.py:spirals    # your own model (README: Tune your own model)
      hpsearch grid --data mydata.npz                     # your own data, a default MLP
      hpsearch grid --config studies/digits-coarse.toml   # a study file (flags override it)
      hpsearch grid --dry-run                             # the 24 points and the estimated time
      hpsearch grid --jobs 4                              # 4 worker processes share the grid
      hpsearch grid --repeats 3                           # 3 seeds per point: mean ± error, ties
      hpsearch grid --objective examples/train_cnn.py:objective    # your own training function
      hpsearch grid -- python examples/train_cnn.py --lr {lr} --weight-decay {weight_decay} \\
                       --batch-size {batch_size} --epochs {epochs}  # any command, one JSON line per epoch
    Re-running the same command (after Ctrl-C, kill -9, a crash) trains only the points still missing.
    """
    _run("grid", **flags)


@main.command(cls=_SampledCommand)
@_search_options(sampled=True)
def random(**flags: Any) -> None:
    """Random search: sample configurations from ranges (or lists) of values.

    \b
    Ranges are sampled on each parameter's scale (learning rate and weight decay log-uniform,
    batch size a power of two, momentum uniform). Weight decay "0,1e-6:1e-2" draws 0 half the time.

    \b
    Example:
      hpsearch random --task digits --trials 20 --study r
      hpsearch random --trials 200 --dry-run     # the budget and the estimated time, nothing trained
      hpsearch random --trials 200 --jobs 4      # 4 worker processes share the budget
      hpsearch random --trials 30 --timeout 600 -- python train.py --lr {lr}   # your own script
    """
    _run("random", **flags)


@main.command(cls=_SampledCommand)
@_search_options(sampled=True)
def tpe(**flags: Any) -> None:
    """TPE search (Optuna's Bayesian sampler) over ranges (or lists) of values.

    \b
    Asks several trials at once (constant liar) and trains them as one population.

    \b
    Example:
      hpsearch tpe --task digits --trials 20 --study t --lr 1e-4:1
      hpsearch tpe --config studies/t.toml --trials 40      # a study file, its budget raised
    """
    _run("tpe", **flags)


@main.command()
@click.option("--from", "sources", metavar="STUDY", multiple=True, required=True,
              help="A study to refine from (repeat for several; their trials are ranked together).")
@click.option("--top", type=click.IntRange(*INT_BOUNDS["top"]), default=3, show_default=True,
              help="Refine around the best K completed trials.")
@click.option("--sampler", type=click.Choice(["grid", "random", "tpe"]), default="grid", show_default=True,
              help="grid: every configuration of the neighbourhoods; random / tpe: --trials draws inside their ranges.")
@click.option("--trials", type=int, help=f"Trials for --sampler random or tpe. [default: {DEFAULT_TRIALS}]")
@click.option("--epochs", type=int, help="Epochs per trial. [default: 3x the sources' epochs, 10 to 20]")
@click.option("--study", help="Study name. [default: FIRST-SOURCE-refine]")
@click.option("--seed", type=int, help="Seed. [default: the first source's]")
@click.option("--prune", type=click.Choice(PRUNERS), help="Pruner. [default: the first source's]")
@click.option("--repeats", type=int, metavar="K", help=REPEATS_HELP[:-1] + ". [default: the first source's]")
@STORAGE_OPTION
@DEVICE_OPTION
@_apply(WORKER_OPTIONS)
@click.option("--show", is_flag=True, help="Print the refined space and its configurations; train nothing.")
@DRY_RUN_OPTION
@CONFIG_OPTION
def refine(sources: tuple[str, ...], show: bool, dry_run: bool, **options: Any) -> None:
    """Search again, finer and longer, around the best trials of earlier studies.

    \b
    Per parameter, on its natural scale: the best value and one refined step (half the
    coarse step; batch size: one power of two) either side. A best value on the edge of
    the range searched widens that side by a whole coarse step; weight decay 0 stays a
    candidate. The grid is the union of the top trials' neighbourhoods, trained 3x as
    many epochs as the sources (10 to 20). Task, seed and pruner come from the source.

    \b
    Examples:
      hpsearch grid --study coarse
      hpsearch refine --from coarse --show          # what would run, and why
      hpsearch refine --from coarse --dry-run       # the same, and the estimated time
      hpsearch refine --config studies/fine.toml    # from a study file (report --format toml writes one)
      hpsearch refine --from coarse --study fine
      hpsearch refine --from coarse --sampler tpe --trials 30 --study fine-tpe
      hpsearch refine --from coarse --study fine --jobs 2   # 2 worker processes share it
      hpsearch refine --from coarse --study fine --repeats 3   # 3 seeds each: mean ± error, ties
    """
    from hpsearch.recipe.refine import refine_spec

    refinement = refine_spec(sources, **options)
    spec = refinement.spec
    if show or dry_run:
        for line in refinement.describe():
            click.echo(line)
        if dry_run:
            _dry_run(spec, listed=True)
        return
    size = f"{len(spec.points)} configurations" if spec.points is not None else f"{spec.trials} {spec.command} trials"
    click.echo(f"Refining {', '.join(sources)} around {len(refinement.top)} trials: {size}, {spec.epochs} epochs "
               f"(hpsearch refine --show lists them)", err=True)
    for line in refinement.skipped + refinement.ties:
        click.echo(line, err=True)
    _run("refine", spec)


@main.command("test")
@click.option("--study", "name", required=True, help="The study whose chosen configuration to test.")
@click.option("--trial", type=int, help="Test this trial's configuration. [default: the study's best]")
@click.option("--force", is_flag=True, help="Evaluate again although a test result is recorded (the record says so).")
@click.option("--epochs", type=int, help="Train this many epochs. [default: the study's]")
@click.option("--schedule", type=click.Choice(SCHEDULES), help="The learning rate over training (see grid --help). "
              "[default: the study's, constant unless it set one]")
@click.option("--warmup", type=int, metavar="EPOCHS", help="Epochs of linear warm-up. [default: the study's]")
@STORAGE_OPTION
@DEVICE_OPTION
def test_split(name: str, trial: int | None, force: bool, storage: str | None, device: str, epochs: int | None,
               schedule: str | None, warmup: int | None) -> None:
    """The end of the recipe: evaluate the chosen configuration once on the test split.

    \b
    Trains the study's best configuration (or --trial N) again, with the seed of the
    study, on the training split: as in its trial, or longer and with a learning-rate
    schedule (--epochs, --schedule: the recipe searches at a constant rate, then trains
    its choice longer with decay). Evaluates it on the test split; records the result
    and how it was trained on the study (report shows it). The test set must not steer
    the search, so a second call shows the recorded result and refuses unless --force.

    \b
    Examples:
      hpsearch test --study fine
      hpsearch test --study fine --epochs 40 --schedule cosine --warmup 1
    """
    from hpsearch.recipe.test import AlreadyTested, describe, final_test

    try:
        record = final_test(name, trial, force, storage, device, epochs, schedule, warmup)
    except AlreadyTested as error:
        click.echo(describe(error.recorded))
        raise
    click.echo(describe(record))


@main.command()
@_apply(TASK_OPTIONS)
@DEVICE_OPTION
@click.option("--population", type=click.IntRange(*INT_BOUNDS["population"]), default=64, show_default=True,
              help="Members of the population whose step time (and on CUDA, memory) is measured.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="sgd", show_default=True,
              help="The optimizer the overfit check, the learning-rate probe and the step times train with.")
@click.option("--lr-probe", "probe_only", is_flag=True,
              help="Only the learning-rate probe, in full: its table of loss against learning rate, the range "
              "that made the loss drop and the coarse --lr grid it suggests.")
@click.option("--plots", type=click.Path(path_type=Path), metavar="DIR",
              help="With --lr-probe: also write the probe's plot into DIR (lr_probe.png).")
def check(device: str, population: int, optimizer: str, probe_only: bool, plots: Path | None, **what: Any) -> None:
    """Check the setup before searching: the recipe's sanity checks, one line each.

    \b
    The parameter count; the initial loss against ln(C) (and a softmax before the
    cross-entropy loss); whether one batch of 32 can be overfitted, in how many steps; the
    learning-rate probe (below); the step time per batch size, alone and as a population;
    on CUDA, the largest batch size that fits. Exit status 1 when a finding is a warning.

    \b
    The learning-rate probe, the recipe's first search step: 19 learning rates from 1e-5
    to 10 trained together for 100 steps on the training data (momentum 0.9, weight decay
    1e-4, batch size 64). Where the loss fell to 0.8x its initial value or below is the
    range; the decades covering it are the coarse --lr grid to search.

    \b
    Examples:
      hpsearch check --task digits
      hpsearch check --task examples/my_task.py:spirals --device cuda
      hpsearch check --task mnist1d --optimizer adam
      hpsearch check --lr-probe --task digits --plots plots/   # the probe's table, its grid, lr_probe.png
    """
    if plots is not None and not probe_only:
        raise click.UsageError("--plots draws the learning-rate probe: give it with --lr-probe")
    if probe_only:
        _lr_probe(what, device, optimizer, plots)
        return
    from hpsearch.recipe.check import check_setup

    task, findings = check_setup(**what, device=device, population=population, optimizer=optimizer)
    for finding in findings:
        click.secho(f"{'warning' if finding.warning else 'ok':>7}  {finding.check}: {finding.text}",
                    fg="yellow" if finding.warning else None)
    warnings = sum(f.warning for f in findings)
    if warnings:
        click.echo(f"{warnings} warning(s) for task '{task.name}': look at them before a long search.")
        click.get_current_context().exit(1)


def _lr_probe(what: dict[str, str | None], device: str, optimizer: str, plots: Path | None) -> None:
    """check --lr-probe: the probe's table and suggestion, its plot; exit status 1 when no rate made the loss drop."""
    from hpsearch.recipe.probe import run_probe

    if plots is not None:  # before training: a bad folder is refused at once
        from hpsearch.report.plots import LR_PROBE
        from hpsearch.report.render import check_plot_folder

        check_plot_folder(plots, None, [LR_PROBE])
    probe = run_probe(**what, device=device, optimizer=optimizer)
    task_flags = [item for name, value in what.items() if value is not None for item in (f"--{name}", value)]
    for line in probe.lines(task_flags):
        click.echo(line)
    if plots is not None:
        from hpsearch.report.plots import write_probe_plot

        try:
            path = write_probe_plot(probe, plots)
        except OSError as error:
            raise click.ClickException(f"cannot write the plot into {plots}: {error.strerror}") from None
        click.echo(f"Wrote {path}", err=True)
    if probe.warning:
        click.get_current_context().exit(1)


@main.command()
@click.argument("studies", nargs=-1)
@click.option("--format", "fmt", type=click.Choice(REPORT_FORMATS), default="table", show_default=True,
              help="table: the terminal; csv, markdown (a pipe table for a README or pull request), json (every "
                   "field, curves included), html (one self-contained page with the plots), toml (a study file that re-runs "
                   "the study: hpsearch COMMAND --config FILE).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to this file instead of the terminal. [default for html: STUDY.html]")
@click.option("--plots", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Also write PNG plots into DIR: loss curves, accuracy against learning rate, importances.")
@click.option("--top", type=click.IntRange(*INT_BOUNDS["top"]), help="Only the best N rows.")
@click.option("--rank", "by", type=click.Choice(RANKINGS), default="mean", show_default=True,
              help="mean: by the validation metric (the seeds' mean); lcb: by its pessimistic bound, mean - 2 "
                   "standard errors (a loss: + 2), which prefers a steady configuration over a lucky one.")
@STORAGE_OPTION
def report(studies: tuple[str, ...], fmt: str, output: Path | None, plots: Path | None, top: int | None,
           by: str, storage: str | None) -> None:
    """Show the ranked trials of one or more studies, best first; without a study, list the studies.

    \b
    Each row shows its validation metric with a standard error (±), its distance to the
    best ("vs best", "tie" when within two standard errors) and a diagnosis of its curves
    (healthy, underfitting, overfitting, not learning, diverged, ...); a note follows when the
    best value of a parameter sits on the edge of the range searched. Several studies (a coarse
    grid and its refinement) are ranked together, with their phase. Diverged and failed trials
    come last, with empty metric cells.

    \b
    Examples:
      hpsearch report                         # which studies are there?
      hpsearch report coarse fine
      hpsearch report coarse --format csv --output coarse.csv
      hpsearch report coarse fine --format html --output report.html
      hpsearch report coarse --format markdown --plots plots/
      hpsearch report coarse --format toml --output studies/coarse.toml
      hpsearch report fine --rank lcb             # the steady configurations first
    """
    from hpsearch.report.render import (check_plot_folder, check_report_output, default_output, print_ranked,
                                        report_text, studies_table)
    from hpsearch.report.results import list_studies, read_results

    if not studies:
        _console().print(studies_table(list_studies(storage)))
        return
    results = read_results(studies, storage, by)
    output = output if output is not None else default_output(studies, fmt)
    if output is not None:  # every path checked before anything is written: never over the storage, nor a stranger's file
        check_report_output(output, fmt, storage)
    if plots is not None:
        check_plot_folder(plots, storage)
    if output is None and fmt == "table":
        text = None
    else:
        text = report_text(results, fmt, top)  # may refuse (toml of two studies): before any write
    if plots is not None:
        _write_plots(results, plots)
    if text is None:
        print_ranked(_console(), results, top)
    elif output is None:
        click.echo(text, nl=False)
    else:
        try:
            output.write_text(text)
        except OSError as error:
            raise click.ClickException(f"cannot write {output}: {error.strerror}") from None
        rows = len(results.frame) if top is None else min(top, len(results.frame))
        click.echo(f"Wrote {rows} rows to {output}", err=True)


def _write_plots(results: Any, folder: Path) -> None:  # a results.Results
    """Write the report's PNG files and say where, with the importance sentences (on stderr: stdout may be data)."""
    from hpsearch.report.plots import importances, write_plots

    found = importances(results)
    try:
        paths = write_plots(results, found, folder)
    except OSError as error:
        raise click.ClickException(f"cannot write plots into {folder}: {error.strerror}") from None
    names = ", ".join(p.name for p in paths) or "none (no trial completed)"
    click.echo(f"Wrote plots to {folder}/: {names}", err=True)
    for imp in found:
        click.echo(imp.sentence, err=True)


@main.command()
@click.option("--storage", metavar="PATH", help="The journal file to repair. [default: $HPSEARCH_STORAGE or studies/hpsearch.journal]")
def repair(storage: str | None) -> None:
    """Repair a journal with torn records (a writer killed mid-write, a power cut).

    \b
    Keeps every complete record, before and after a torn one, drops only the torn ones, and
    keeps the original beside it as JOURNAL.torn-DATE. Trials that were running are then
    failed and queued again by the next search. A file that is not an Optuna journal is
    refused and left as it is; when a step fails (a full disk), nothing is changed.

    \b
    Example:
      hpsearch repair --storage studies/hpsearch.journal
    """
    from hpsearch.storage.store import repair_journal

    done = repair_journal(storage)
    if done.backup is None:
        click.echo(f"Nothing to repair: all {done.kept} records are complete.")
    else:
        lines = ", ".join(map(str, done.torn))
        click.echo(f"Kept {done.kept} complete records, dropped {done.dropped} torn (line{'s' * (done.dropped > 1)} "
                   f"{lines}); the original is {done.backup}.")
