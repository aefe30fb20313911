"""Report: the ranked results as a rich table in the terminal or a CSV file; the live progress bar."""
from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Callable, Iterator

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

if TYPE_CHECKING:
    from hpsearch.search import Progress as SearchProgress

FORMATS = ("table", "csv")

_HEADERS = {
    "rank": "#", "lr": "lr", "weight_decay": "weight decay", "batch_size": "batch", "momentum": "momentum",
    "epochs": "epochs", "val_accuracy": "val acc", "val_loss": "val loss", "train_loss": "train loss",
    "outcome": "outcome", "seconds": "seconds",
}


def _cell(column: str, value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if column in ("lr", "weight_decay", "momentum"):
        return f"{value:.3g}"
    if column in ("val_accuracy", "val_loss", "train_loss"):
        return f"{value:.4f}"
    if column == "seconds":
        return f"{value:.2f}"
    return str(value)


def table(frame: pd.DataFrame, top: int | None = None, title: str | None = None) -> Table:
    """The ranked rows as a rich Table; failed and diverged rows dimmed, with their reason."""
    several = frame["study"].nunique() > 1
    columns = ["rank"] + (["study"] if several else []) + ["trial"] + list(_HEADERS)[1:]
    out = Table(title=title, header_style="bold", title_justify="left")
    for c in columns:
        out.add_column(_HEADERS.get(c, c), justify="left" if c in ("outcome", "study") else "right")
    shown = frame if top is None else frame.head(top)
    for record in shown.to_dict("records"):
        cells = [_cell(c, record[c]) for c in columns]
        if record["outcome"] != "completed" and record["reason"]:
            cells[-2] = f"{record['outcome']}: {record['reason']}"
        out.add_row(*cells, style=None if record["outcome"] == "completed" else "dim")
    if top is not None and len(frame) > top:
        out.caption = f"top {top} of {len(frame)} trials"
    return out


def best_line(frame: pd.DataFrame) -> str:
    ok = frame[frame["outcome"] == "completed"]
    if ok.empty:
        return "No trial completed."
    b = ok.iloc[0]
    return (f"Best: val acc {b.val_accuracy:.4f} with lr={b.lr:.3g}, weight_decay={b.weight_decay:.3g}, "
            f"batch_size={b.batch_size}, momentum={b.momentum:.3g} (study {b.study}, trial {b.trial})")


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
def progress_bar(console: Console, description: str) -> Iterator[Callable[[SearchProgress], None]]:
    """A live bar: trials done of total, best so far, elapsed time and ETA. Yields the update callback."""
    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("trials"),
        TextColumn("best {task.fields[best]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
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
