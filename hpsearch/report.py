"""Report: the ranked results as a rich table in the terminal or a CSV file; the live progress bar."""
from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Callable, Iterator

import pandas as pd
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

if TYPE_CHECKING:
    from hpsearch.search import Progress as SearchProgress

_HEADERS = {  # two-line headers keep the table inside an 80-column terminal
    "rank": "\n#", "lr": "\nlr", "weight_decay": "weight\ndecay", "batch_size": "batch\nsize",
    "momentum": "\nmomentum", "epochs": "\nepochs", "val_accuracy": "val\nacc", "val_loss": "val\nloss",
    "train_loss": "train\nloss", "outcome": "\noutcome", "seconds": "\nsecs",
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


def _outcome(record: dict) -> str:
    """Short enough for a table cell: 'diverged (epoch 2)'; the full reason is in CSV and below failures."""
    epoch = record.get("stopped_epoch")
    if record["outcome"] in ("diverged", "pruned") and epoch is not None and epoch is not pd.NA:
        return f"{record['outcome']} (ep {epoch})"
    return str(record["outcome"])


# Columns a narrow terminal drops first (the CSV always has every column).
_OPTIONAL = [("seconds", 112), ("epochs", 104), ("train_loss", 96)]


def table(frame: pd.DataFrame, top: int | None = None, title: str | None = None, width: int = 200) -> Table:
    """The ranked rows as a rich Table for a terminal ``width`` wide; rows without a result dimmed, last."""
    several = frame["study"].nunique() > 1
    columns = ["rank"] + (["study"] if several else []) + ["trial"] + list(_HEADERS)[1:]
    columns = [c for c in columns if not any(c == name and width < needed for name, needed in _OPTIONAL)]
    out = Table(title=title, header_style="bold", title_justify="left", box=box.SIMPLE_HEAD,
                collapse_padding=True, pad_edge=False)
    for c in columns:
        out.add_column(_HEADERS.get(c, "\n" + c), justify="left" if c in ("outcome", "study") else "right",
                       no_wrap=True)
    shown = frame if top is None else frame.head(top)
    for record in shown.to_dict("records"):
        cells = [_outcome(record) if c == "outcome" else _cell(c, record[c]) for c in columns]
        out.add_row(*cells, style=None if record["outcome"] == "completed" else "dim")
    if top is not None and len(frame) > top:
        out.caption = f"top {top} of {len(frame)} trials"
    return out


def failure_lines(frame: pd.DataFrame, most: int = 5) -> list[str]:
    """One line per failed trial with its reason (diverged and pruned ones explain themselves)."""
    failed = frame[frame["outcome"] == "failed"]
    lines = [f"trial {r.trial} failed: {r.reason}" for r in failed.head(most).itertuples()]
    if len(failed) > most:
        lines.append(f"... and {len(failed) - most} more failed trials (hpsearch report --format csv has every reason)")
    return lines


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
