"""Report: the ranked results as a rich table in the terminal or a CSV file; the live progress bar."""
from __future__ import annotations

import contextlib
import datetime
import io
import math
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import pandas as pd
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, Task, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table
from rich.text import Text

from hpsearch.errors import BadInput
from hpsearch.report.results import DIAGNOSIS_RULES, NOISE_RULES, Results, phase, repeated
from hpsearch.search.records import SEED_STD
from hpsearch.space import names as param_names, param
from hpsearch.space import params as space_params
from hpsearch.studyfile import study_file_text

if TYPE_CHECKING:
    from hpsearch.recipe.estimate import Estimate, Plan
    from hpsearch.search.run import Progress as SearchProgress
    from hpsearch.search.run import SearchOutcome

_OTHER_HEADERS = {  # two-line headers keep the table inside an 80-column terminal
    "epochs": "\nepochs", "repeats": "\nseeds", "val_accuracy": "val\nacc", "val_accuracy_se": "\n±",
    "delta": "vs\nbest", "val_loss": "val\nloss", "val_loss_se": "\n±", "train_loss": "train\nloss",
    "outcome": "\noutcome", "diagnosis": "\ndiagnosis", "seconds": "\nsecs",
}


def _headers() -> dict[str, str]:
    """Every column's header, in the table's order: rank, the registered parameters, then the rest."""
    return {"rank": "\n#", **{p.name: p.header for p in space_params()}, **_OTHER_HEADERS}


def _cell(column: str, value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if column in param_names():
        return param(column).cell(value)
    if column in ("val_accuracy", "val_loss", "train_loss", "val_accuracy_se", "val_loss_se"):
        return f"{value:.4f}"
    if column == "seconds":
        return f"{value:.2f}"
    if column == "delta":
        return f"{value:+.4f}"
    return str(value)


def _delta_cell(record: dict) -> str:
    """'-0.0028 tie' when the row is within noise of the best (results.TIE_Z)."""
    cell = _cell("delta", record["delta"])
    return f"{cell} tie" if cell and record.get("tie") is True else cell


def _metric_cell(column: str, record: dict) -> str:
    """'0.9889 ± 0.0055': a validation metric with its standard error, where known."""
    cell = _cell(column, record[column])
    se = _cell(column, record.get(f"{column}_se"))
    return f"{cell} ± {se}" if cell and se else cell


def _shown_extras(frame: pd.DataFrame) -> set[str]:
    """The optional columns this frame needs: the ranked metric's ± (accuracy's, or a regression's loss's), and
    the seeds when any configuration trained with more than one."""
    classifying = pd.to_numeric(frame["val_accuracy"], errors="coerce").notna().any()
    se = "val_accuracy_se" if classifying else "val_loss_se"
    shown = {se} if pd.to_numeric(frame[se], errors="coerce").notna().any() else set()
    if repeated(frame):
        shown.add("repeats")
    return shown


_EXTRAS = ("val_accuracy_se", "val_loss_se", "repeats")  # shown when the frame needs them (_shown_extras)


def _outcome(record: dict) -> str:
    """Short enough for a table cell: 'diverged (epoch 2)'; the full reason is in CSV and below failures."""
    epoch = record.get("stopped_epoch")
    if record["outcome"] in ("diverged", "pruned") and epoch is not None and epoch is not pd.NA:
        return f"{record['outcome']} (ep {epoch})"
    return str(record["outcome"])


_TEXT = ("outcome", "study", "phase", "diagnosis")  # left-aligned columns
# Columns a narrow terminal drops, first to last, until the table fits (the CSV always has every column).
_OPTIONAL = ["seconds", "epochs", "optimizer", "train_loss", "momentum", "delta", "val_loss", "diagnosis", "phase"]


def table(frame: pd.DataFrame, top: int | None = None, title: str | None = None, width: int = 200) -> Table:
    """The ranked rows as a rich Table for a terminal ``width`` wide; rows without a result dimmed, last.

    Optional columns are left out, in _OPTIONAL's order, until the table fits: a cell is never cut short.
    """
    several = frame["study"].nunique() > 1
    extras = _shown_extras(frame)
    columns = ["rank"] + (["study", "phase"] if several else []) + ["trial"] + list(_headers())[1:]
    columns = [c for c in columns if c not in _EXTRAS or c in extras]
    shown = frame if top is None else frame.head(top)
    records = shown.to_dict("records")
    console = Console(width=width, file=io.StringIO())
    unbounded = console.options.update_width(10**6)  # measured as wide as it wants: a fit is then a real one
    for drop in [None, *_OPTIONAL]:
        if drop in columns:
            columns.remove(drop)
        out = _table(columns, records, title)
        if Measurement.get(console, unbounded, out).maximum <= width:
            break
    if top is not None and len(frame) > top:
        out.caption = f"top {top} of {len(frame)} trials"
    return out


def _table(columns: list[str], records: list[dict], title: str | None) -> Table:
    out = Table(title=title, header_style="bold", title_justify="left", box=box.SIMPLE_HEAD,
                collapse_padding=True, pad_edge=False)
    for c in columns:
        out.add_column(_headers().get(c, "\n" + c), justify="left" if c in _TEXT else "right",
                       no_wrap=True)
    for record in records:
        cells = [_outcome(record) if c == "outcome" else _delta_cell(record) if c == "delta" else _cell(c, record[c])
                 for c in columns]
        if record["outcome"] != "completed" and "diagnosis" in columns:  # the outcome cell says it already
            cells[columns.index("diagnosis")] = ""
        out.add_row(*cells, style=None if record["outcome"] == "completed" else "dim")
    return out


def failure_lines(frame: pd.DataFrame, most: int = 5) -> list[str]:
    """One line per failed trial with its reason (diverged and pruned ones explain themselves, and died or
    interrupted ones were queued again)."""
    failed = frame[frame["outcome"].isin(["failed", "out_of_memory", "timed_out"])]
    lines = [f"trial {r.trial} {'failed' if r.outcome != 'timed_out' else 'timed out'}: {r.reason}"
             for r in failed.head(most).itertuples()]
    if len(failed) > most:
        lines.append(f"... and {len(failed) - most} more failed trials (hpsearch report --format csv has every reason)")
    return lines


def best_line(frame: pd.DataFrame) -> str:
    ok = frame[frame["outcome"] == "completed"]
    if ok.empty:
        return "No trial completed."
    b = ok.iloc[0].to_dict()
    column = "val_accuracy" if pd.notna(b["val_accuracy"]) else "val_loss"  # regression: loss
    metric = f"{'val acc' if column == 'val_accuracy' else 'val loss'} {_metric_cell(column, b)}"
    seeds = f" (mean of {b['repeats']} seeds)" if pd.notna(b['repeats']) and b['repeats'] > 1 else ""
    values = ", ".join(f"{p.name}={p.cell(b[p.name])}" for p in space_params())
    return f"Best: {metric}{seeds} with {values} (study {b['study']}, trial {b['trial']})"


def noise_lines(results: Results) -> list[str]:
    """What noise does to the ranking: which rows tie the best, and when the best's seeds spread more than its lead."""
    from hpsearch.report.results import TIE_Z, ties_with_best, trial_names

    frame = results.frame
    ok = frame[frame["outcome"] == "completed"]
    lines = []
    tied = ties_with_best(frame)
    if len(tied):
        named = trial_names(tied, with_study=frame["study"].nunique() > 1)
        lines.append(f"{len(tied)} other configuration{'s' * (len(tied) > 1)} tie{'s' * (len(tied) == 1)} with the best "
                     f"within noise (|difference| <= {TIE_Z:g} standard errors): trial{'s' * (len(tied) > 1)} "
                     f"{named}; more seeds (--repeats) or a larger validation split would tell them apart")
    if len(ok) > 1:
        best, second = ok.iloc[0], ok.iloc[1]
        column = "val_accuracy" if pd.notna(best["val_accuracy"]) else "val_loss"
        std = results.trial(best["study"], int(best["trial"])).user_attrs.get(SEED_STD, {})
        spread = std.get(column) if isinstance(std, dict) else None
        lead = abs(float(best[column]) - float(second[column]))
        if isinstance(spread, (int, float)) and spread > lead:
            lines.append(f"the best configuration's seeds spread more ({column.replace('_', ' ')} sd {spread:.4f}) "
                         f"than its lead over the next (trial {second['trial']}, {lead:.4f}): the order of the top "
                         "rows is noise")
    return lines


def to_csv(frame: pd.DataFrame) -> str:
    """Every column at full precision, best first; empty cells where a trial has no metric."""
    return frame.to_csv(index=False, lineterminator="\n")


def studies_table(frame: pd.DataFrame) -> Table:
    out = Table(title="Studies", header_style="bold", title_justify="left")
    for c in frame.columns:
        out.add_column(c.replace("_", " "), justify="left" if c in ("study", "command", "task") else "right")
    for record in frame.to_dict("records"):
        best = record["best_val_accuracy"]
        out.add_row(record["study"], record["command"], record["task"], str(record["completed"]),
                    "" if best is None or best != best else f"{best:.4f}")
    return out


@contextlib.contextmanager
def progress_bar(console: Console, description: str,
                 estimate: float | None = None) -> Iterator[Callable[[SearchProgress], None]]:
    """A live bar: trials done of total, best so far, elapsed time and ETA. Yields the update callback.

    ``estimate``: the search's seconds as estimated before it started (hpsearch/recipe/estimate.py); the
    ETA counts it down until the trials' own pace is known.
    """
    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("trials"),
        TextColumn("best {task.fields[best]}"), TimeElapsedColumn(), TextColumn("ETA"), _Eta(estimate),
    )
    bar = Progress(*columns, console=console, transient=False)
    task = bar.add_task(description, total=None, best="-")

    def update(p: SearchProgress) -> None:
        if not bar.live.is_started:  # started on the first news, so an early error shows no bar
            bar.start()
        bar.update(task, completed=p.done, total=p.total or None, best="-" if p.best is None else f"{p.best:.4f}")

    try:
        yield update
    finally:
        if bar.live.is_started:
            bar.stop()


class _Eta(TimeRemainingColumn):
    """Rich's time remaining, or the estimate made before the search while rich has no pace yet."""

    def __init__(self, estimate: float | None) -> None:
        super().__init__()
        self.estimate = estimate

    def render(self, task: Task) -> Text:
        if self.estimate is None or math.isnan(self.estimate) or task.time_remaining is not None or task.finished:
            return super().render(task)
        left = max(0, round(self.estimate - (task.elapsed or 0.0)))
        return Text(str(datetime.timedelta(seconds=left)), style="progress.remaining")


# --- a dry run: the plan and its estimated time ---


PLAN_ROWS = 100  # a dry run lists a grid up to this size; a larger one is summarised (a screenful, not a million rows)
PLAN_ENDS = 10  # rows shown from each end of a summarised grid


def plan_table(points: list[dict[str, float]]) -> Table:
    """The grid points a dry run would train, in the order they would train; the first and last few of a large grid."""
    out = Table(header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    columns = list(param_names())
    out.add_column(_headers()["rank"], justify="right")
    for c in columns:
        out.add_column(_headers()[c], justify="right")
    shown = range(len(points)) if len(points) <= PLAN_ROWS else [*range(PLAN_ENDS), *range(len(points) - PLAN_ENDS, len(points))]
    for i in shown:
        if i == len(points) - PLAN_ENDS and len(points) > PLAN_ROWS:
            out.add_row("...", *["..."] * len(columns))
        out.add_row(str(i + 1), *(_cell(c, points[i][c]) for c in columns))
    if len(points) > PLAN_ROWS:
        out.caption = f"the first and last {PLAN_ENDS} of {len(points):,} configurations"
    return out


def plan_lines(plan: Plan, estimate: Estimate) -> list[str]:
    """What a dry run says: the budget, the measured step times and the estimated time."""
    spec = plan.spec
    lines = []
    if spec.command != "grid":
        space = ", ".join(f"{name} {text}" for name, text in spec.space.texts().items())
        lines.append(f"Sampler: {spec.command} (seed {spec.seed}), {spec.trials} trials in all; space: {space}")
    populations = "one at a time" if spec.own_code else f"in {len(plan.populations)} populations"
    lines.append(f"{plan.to_train} configurations to train ({plan.already} already in study '{spec.study}'), "
                 f"{spec.epochs} epochs each, {populations}.")
    for (size, members), step in sorted(estimate.step_ms.items()):
        seconds = estimate.epoch_seconds[(size, members)]
        lines.append(f"Measured: batch size {size}, {members} members: {step:.2f} ms a step, {seconds:.2f} s an epoch")
    if math.isnan(estimate.seconds):
        lines.append("Estimated time: unknown: your own code's trials cannot be timed without running one; the "
                     "progress bar's ETA follows the trials as they end. Nothing was trained or written.")
    else:
        lines.append(f"Estimated time: {_duration(estimate.seconds)} (start-up {_duration(estimate.startup)}). "
                     "Nothing was trained or written.")
    return lines


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    return str(datetime.timedelta(seconds=round(seconds)))


# --- what a full report adds to the table: edge flags, the test result, Markdown / JSON / HTML ---

_SIDE = {"high": ("largest", "upward"), "low": ("smallest", "downward")}


def edge_lines(frame: pd.DataFrame) -> list[str]:
    """One line per parameter whose best value sits on an edge of the range searched (the "edges" cell
    of the best row, computed on every row before --top cut the frame)."""
    ok = frame[frame["outcome"] == "completed"]
    if ok.empty or not ok.iloc[0]["edges"]:
        return []
    best = ok.iloc[0]
    lines = []
    for flag in best["edges"].split(", "):
        name, side = flag.split(" ")
        extreme, direction = _SIDE[side]
        lines.append(f"best {name} {_cell(name, best[name])} is the {extreme} value searched: "
                     f"widen {direction} (refine does)")
    return lines


def test_lines(results: Results) -> list[str]:
    """The recorded test-set result of each study that has one (hpsearch test)."""
    lines = []
    for name in results.studies:
        test = results.test_result(name)
        if not test:
            continue
        metrics = ", ".join(f"{key.replace('_', ' ')} {test[key]:.4f}" for key in ("test_accuracy", "test_loss")
                            if isinstance(test.get(key), (int, float)))
        if isinstance(test.get("test_accuracy"), (int, float)) and isinstance(test.get("test_accuracy_se"), float):
            seeds = f" (mean of {len(test['seeds'])} seeds)" if test.get("seeds") else ""
            metrics = metrics.replace(f"{test['test_accuracy']:.4f}", f"{test['test_accuracy']:.4f} ± "
                                      f"{test['test_accuracy_se']:.4f}{seeds}", 1)
        if isinstance(test.get("val_accuracy"), (int, float)):
            metrics += f" (the trial's validation accuracy {test['val_accuracy']:.4f})"
        config = ", ".join(f"{k}={_cell(k, v)}" for k, v in (test.get("config") or {}).items() if k in param_names())
        trained = training_text(test) if isinstance(test.get("epochs"), int) else ""
        if isinstance(test.get("searched"), dict):
            trained += f"; the trial: {training_text(test['searched'])}"
        lines.append(f"Test (study {name}, trial {test.get('trial')}, {config}{'; ' + trained if trained else ''}): "
                     f"{metrics}; evaluated once {test.get('when', '')}".rstrip())
    return lines


def training_text(record: Mapping[str, Any]) -> str:
    """"20 epochs, cosine, warm-up 1 epoch": how a configuration was trained (a constant rate is not named)."""
    parts = [f"{record.get('epochs')} epochs"]
    if record.get("schedule", "constant") != "constant":
        parts.append(str(record["schedule"]))
    if record.get("warmup"):
        parts.append(f"warm-up {record['warmup']} epoch{'s' if record['warmup'] != 1 else ''}")
    return ", ".join(parts)


_MARKDOWN_AFTER = ["epochs", "repeats", "val_accuracy", "delta", "val_loss", "train_loss", "outcome", "diagnosis"]


def _report_columns(results: Results) -> list[str]:
    """The columns of a Markdown or HTML table: study and phase only when several studies are shown, seeds only
    when some configuration trained with several (the ± is inside the metric's cell)."""
    several = len(results.studies) > 1
    markdown = ["rank", "study", "phase", "trial", *param_names(), *_MARKDOWN_AFTER]
    extras = _shown_extras(results.frame)
    return [c for c in markdown if (several or c not in ("study", "phase")) and (c != "repeats" or c in extras)]


def _text_cell(column: str, record: dict) -> str:
    if column == "outcome":
        return _outcome(record)
    if column == "delta":
        return _delta_cell(record)
    if column in ("val_accuracy", "val_loss"):
        return _metric_cell(column, record)
    return _cell(column, record[column])


def to_markdown(results: Results, frame: pd.DataFrame) -> str:
    """A pipe table to paste into a README or a pull request, then the best line, edge flags, test result."""
    columns = _report_columns(results)
    right = [c not in _TEXT for c in columns]
    head = "| " + " | ".join(_headers().get(c, c).replace("\n", " ").strip() for c in columns) + " |"
    rule = "|" + "|".join("---:" if r else ":---" for r in right) + "|"
    rows = ["| " + " | ".join(_text_cell(c, r).replace("|", "\\|") for c in columns) + " |"
            for r in frame.to_dict("records")]
    notes = [best_line(frame)] + noise_lines(results) + edge_lines(frame) + test_lines(results) + failure_lines(frame)
    return "\n".join([head, rule, *rows, "", *(f"- {line}" for line in notes)]) + "\n"


def to_json(results: Results, frame: pd.DataFrame) -> str:
    """Every field of every trial shown (per-epoch curves and the trainer's extra attributes included),
    each study's settings and recorded test result: for scripts."""
    import json

    trials = [{k: _plain(v) for k, v in row.items()} for row in frame.to_dict("records")]
    for row in trials:
        trial = results.trial(row["study"], row["trial"])
        row["curves"] = results.curves(row["study"], row["trial"])
        row["attrs"] = {k: v for k, v in trial.user_attrs.items() if k not in row and k not in row["curves"]}
        row["state"] = trial.state.name
    studies = [{"study": name, "phase": phase(results.settings(name)), "settings": results.settings(name),
                "direction": study.direction.name.lower(), "test_result": results.test_result(name)}
               for name, study in results.studies.items()]
    document = {"studies": studies, "best": best_line(frame), "noise": noise_lines(results), "edges": edge_lines(frame),
                "trials": trials}
    return json.dumps(document, indent=2, default=str) + "\n"


def _plain(value: object) -> object:
    """A JSON value at full precision: numpy numbers as Python ones, NaN and <NA> as null."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 80em;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { padding: 0.25em 0.6em; border-bottom: 1px solid #eee; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; position: sticky; top: 0; }
td.text, th.text { text-align: left; }
tr.other { color: #888; }
.scroll { overflow-x: auto; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.4em 0.8em; margin: 0.3em 0; }
.best { font-weight: bold; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
dt { font-weight: bold; } dd { margin: 0 0 0.5em 1.5em; }
"""


def to_html(results: Results, frame: pd.DataFrame) -> str:
    """One self-contained page (inline CSS, plots as PNG data URIs, no script, no external URL) that a
    person can open offline or attach to a message."""
    import base64
    import html

    from hpsearch.report.plots import figures, importances, png

    esc = html.escape
    names = ", ".join(results.studies)
    columns = _report_columns(results)
    head = "".join(f'<th class="{"text" if c in _TEXT else "num"}">{esc(_headers().get(c, c).strip())}</th>'
                   for c in columns).replace("\n", " ")
    body = "\n".join(
        f'<tr class="{"ok" if r["outcome"] == "completed" else "other"}">'
        + "".join(f'<td class="{"text" if c in _TEXT else "num"}">{esc(_text_cell(c, r))}</td>' for c in columns)
        + "</tr>" for r in frame.to_dict("records"))
    notes = "".join(f'<p class="note">{esc(line)}</p>'
                    for line in noise_lines(results) + edge_lines(frame) + test_lines(results))
    failures = "".join(f"<p>{esc(line)}</p>" for line in failure_lines(frame))
    found = importances(results)
    images = "".join(
        f'<figure><img alt="{esc(name)}" src="data:image/png;base64,{base64.b64encode(png(figure)).decode()}">'
        f"</figure>" for name, figure in figures(results, found).items())
    sentences = "".join(f"<p>{esc(imp.sentence)}</p>" for imp in found)
    settings = "".join(f"<li><b>{esc(name)}</b> ({esc(phase(results.settings(name)))}): "
                       f"{esc(', '.join(f'{k}={v}' for k, v in results.settings(name).items()))}</li>"
                       for name in results.studies)
    rules = "".join(f"<dt>{esc(term)}</dt><dd>{esc(text)}</dd>" for term, text in (*NOISE_RULES, *DIAGNOSIS_RULES))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>hpsearch report: {esc(names)}</title>
<style>{_STYLE}</style></head><body>
<h1>hpsearch report: {esc(names)}</h1>
<p class="best">{esc(best_line(frame))}</p>
{notes}
<h2>Plots</h2>
{sentences}
{images or "<p>No trial completed: nothing to plot.</p>"}
<h2>Ranked trials</h2>
<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>
{body}
</tbody></table></div>
{failures}
<h2>Studies</h2><ul>{settings}</ul>
<h2>How to read ±, ties and the diagnosis</h2><dl>{rules}</dl>
</body></html>
"""


def _csv(results: Results, frame: pd.DataFrame) -> str:
    return to_csv(frame)


def to_toml(results: Results, frame: pd.DataFrame) -> str:
    """The study file that re-runs one study with the settings it was run with (hpsearch/studyfile.py)."""
    if len(results.studies) != 1:
        raise BadInput("--format toml writes one study's file: name one study")
    name = next(iter(results.studies))
    return study_file_text(name, results.settings(name), len(results.frame))


# The file formats of `hpsearch report --format` (the terminal table is drawn by the CLI).
FORMATS: dict[str, Callable[[Results, pd.DataFrame], str]] = {
    "csv": _csv, "markdown": to_markdown, "json": to_json, "html": to_html, "toml": to_toml,
}

# How the file of each format (and the terminal table, written with --output) starts: an existing file
# is written over only when it starts so, i.e. it is a report of that format that hpsearch wrote.
STARTS: dict[str, re.Pattern[bytes]] = {
    "csv": re.compile(rb"rank,study,"),
    "markdown": re.compile(rb"\| # \| "),
    "json": re.compile(rb'\{\s*"studies": \['),
    "html": re.compile(rb"<!DOCTYPE html>\s*<html[^>]*><head><meta charset=\"utf-8\"><title>hpsearch report: "),
    "toml": re.compile(rb"# Study .*, as hpsearch ran it\."),
    "table": re.compile(rb"\s*Study .*: best first"),
}


def _not(what: str, head: bytes) -> str:
    """What an existing file is, said against what was to be written there."""
    if head.startswith(b"SQLite format 3\0"):
        return f"an SQLite database, not {what}"
    if re.match(rb'\s*\{\s*"op_code"\s*:', head):
        return f"an Optuna journal, not {what}"
    return f"not {what} written by hpsearch"


def check_output(path: Path, storage: str | None, option: str, what: str, ours: Callable[[bytes], bool]) -> None:
    """Refuse (BadInput) to write ``what`` at ``path`` when that would write over the storage or its lock files,
    or over an existing file that is not ``what`` as hpsearch writes it (``ours`` tells by its first bytes).

    A new file, an empty one, /dev/null or a pipe are fine. Check every output before writing any.
    """
    from hpsearch.storage.store import is_storage_file, redact, storage_location

    if is_storage_file(path, storage):
        raise BadInput(f"{option} {path} is a file of the storage {redact(storage_location(storage))}; "
                       "writing there would destroy the studies: give another path")
    try:
        mode = os.stat(path).st_mode
    except OSError:  # a new file (or one that cannot be reached: writing it says why)
        return
    if stat.S_ISDIR(mode):
        raise BadInput(f"{option} {path} is a folder; give the path of a file")
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):  # /dev/null, /dev/stdout, a pipe: nothing kept there to lose
        return
    if not stat.S_ISREG(mode):
        raise BadInput(f"{option} {path} is not a regular file; give another path")
    with open(path, "rb") as file:
        head = file.read(4096)
    if head and not ours(head):
        raise BadInput(f"{option} {path} exists and is {_not(what, head)}; hpsearch will not write over it: "
                       "give another path (or delete the file first)")


def check_report_output(path: Path, fmt: str, storage: str | None) -> None:
    """``report --format FMT --output PATH``: see check_output."""
    check_output(path, storage, "--output", f"a {fmt} report", STARTS[fmt].match)


def check_plot_folder(folder: Path, storage: str | None, names: Sequence[str] | None = None) -> None:
    """Refuse (BadInput) a --plots folder where writing the plots ``names`` (the report's by default) would
    overwrite the storage or a file that is not a PNG."""
    from hpsearch.report.plots import PNG_MAGIC, REPORT_PLOTS

    if folder.exists() and not folder.is_dir():
        raise BadInput(f"--plots {folder} is not a folder; give the path of a folder for the PNG files")
    for name in REPORT_PLOTS if names is None else names:
        check_output(folder / name, storage, "--plots", "a PNG plot", lambda head: head.startswith(PNG_MAGIC))


def default_output(studies: Sequence[str], fmt: str) -> Path | None:
    """Where ``report`` writes when --output is not given: an HTML page is a file (STUDY.html), the rest the terminal."""
    return Path(re.sub(r"[^\w.+-]+", "_", "+".join(studies)) + ".html") if fmt == "html" else None


def print_ranked(console: Console, results: Results, top: int | None, notes: bool = True) -> None:
    """The ranked table (its ``top`` rows), the failures, the ``Best:`` line and (``notes``) the range-edge and
    test-split notes."""
    frame = results.frame  # the lines below speak of every trial, whatever ``top`` leaves out of the table
    console.print(table(frame, top, title=f"Study {', '.join(results.studies)}: best first", width=console.width))
    for line in failure_lines(frame):
        console.print(line, style="red")
    console.print(best_line(frame))
    for line in noise_lines(results) + ((edge_lines(frame) + test_lines(results)) if notes else []):
        console.print(line, style="yellow")


def report_text(results: Results, fmt: str, top: int | None) -> str:
    """The report as the text of a file: a format of FORMATS, or the terminal's table without colour."""
    if fmt != "table":
        return FORMATS[fmt](results, results.frame if top is None else results.frame.head(top))
    import io

    console = Console(record=True, width=200, file=io.StringIO())
    print_ranked(console, results, top)
    return console.export_text()


def outcome_lines(outcome: SearchOutcome, study: str, seconds: float) -> list[str]:
    """What a search did, after its table: trained, failed, or why nothing was trained."""
    elsewhere = outcome.running_elsewhere
    if outcome.trained == 0 and elsewhere:
        said = (f"Nothing to start: the {elsewhere} trials left of study '{study}' are still running in "
                f"other processes ({outcome.already} finished).")
    elif outcome.trained == 0:
        said = f"Nothing to train: study '{study}' already has its {outcome.already} trials."
    else:
        failed = f", {outcome.failed} failed" if outcome.failed else ""
        said = (f"Trained {outcome.trained} trials{failed} in {seconds:.1f} s; "
                f"{outcome.already + outcome.trained} in study '{study}' ({outcome.storage})"
                + (f"; {elsewhere} more still running in other processes." if elsewhere else "."))
    return [said, f"All rows: hpsearch report {study}"]
