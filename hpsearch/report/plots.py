"""Plots of a report as PNG files: loss curves, the validation metric against the learning rate, and
the parameter importances; and the learning-rate probe's loss against the rate (``hpsearch check``).
Matplotlib (Agg backend) is imported when a plot is drawn, never by ``--help``."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from hpsearch.report.results import Results, repeated
from hpsearch.space import names as param_names, param
from hpsearch.space import params as space_params

if TYPE_CHECKING:
    import optuna

    from hpsearch.recipe.probe import Probe

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LOSS_CURVES, METRIC_VS_LR, IMPORTANCE = "loss_curves.png", "metric_vs_lr.png", "importance.png"  # the files written
REPORT_PLOTS = (LOSS_CURVES, METRIC_VS_LR, IMPORTANCE)
LR_PROBE = "lr_probe.png"  # hpsearch check --lr-probe --plots DIR
TOP_CURVES = 5  # loss curves of the best configurations: more lines than this are unreadable


def _label_of(name: str) -> str:
    return param(name).label if name in param_names() else name


@dataclass(frozen=True)
class Importance:
    """Parameter importances of one study (empty when they cannot be told) and the sentence that says so."""

    study: str
    shares: dict[str, float]
    sentence: str


def importance(study: optuna.Study) -> Importance:
    """fANOVA importances of the parameters that varied, on the completed trials.

    Optuna 5's default evaluator, PED-ANOVA, compares the top 10% of trials with the rest: a coarse
    grid of 24 has two or three top trials, and its shares swing with them. fANOVA (a random forest,
    seeded here) splits the variance of the objective between the parameters.
    """
    import optuna
    from optuna.trial import TrialState

    name = study.study_name
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(trials) < 2:
        return Importance(name, {}, f"Study {name}: {len(trials)} completed trial(s), too few to tell which "
                                    "parameter mattered.")
    common = set.intersection(*(set(t.params) for t in trials))  # weight decay is absent where 0 was drawn
    varied = sorted(p for p in common if len({t.params[p] for t in trials}) > 1)
    if not varied or len({t.value for t in trials}) == 1:
        return Importance(name, {}, f"Study {name}: every completed trial scored the same or tried the same "
                                    "values, so no parameter stands out.")
    try:
        shares = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), params=varied)
    except (ValueError, RuntimeError) as error:  # conditional parameters missing from some trials
        return Importance(name, {}, f"Study {name}: importances could not be computed ({error}).")
    merged: dict[str, float] = {}
    zero_of = {p.zero_flag: p.name for p in space_params() if p.zero_flag is not None}
    for stored, value in shares.items():  # weight decay drawn as zero (0 or a log range) is weight decay too
        key = zero_of.get(stored, stored)
        merged[key] = merged.get(key, 0.0) + float(value)
    top, share = max(merged.items(), key=lambda item: item[1])
    return Importance(name, merged, f"Study {name}: {_label_of(top).lower()} mattered most "
                                    f"({share:.0%} of the variance of the objective explained, fANOVA over "
                                    f"{len(trials)} completed trials).")


def importances(results: Results) -> list[Importance]:
    """The importances of each study shown (computed per study: each has its own search space)."""
    return [importance(study) for study in results.studies.values()]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(record: dict[str, Any], several: bool) -> str:
    where = f"{record['study']} #{record['trial']}" if several else f"#{record['trial']}"
    return f"{where}: " + ", ".join(f"{p.short} {p.cell(record[p.name])}" for p in space_params())


def loss_curves(results: Results, top: int = TOP_CURVES) -> Any:
    """Training (solid) and validation (dashed) loss per epoch of the best configurations."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(9, 5.5))
    ok = results.frame[results.frame["outcome"] == "completed"].head(top)
    several = results.frame["study"].nunique() > 1
    for i, record in enumerate(ok.to_dict("records")):
        curves = results.curves(record["study"], int(record["trial"]))
        epochs = range(1, len(curves["train_loss"]) + 1)
        colour = f"C{i}"
        axes.plot(epochs, curves["train_loss"], color=colour, label=_label(record, several))
        axes.plot(epochs, curves["val_loss"], color=colour, linestyle="--")
    axes.plot([], [], color="grey", label="solid: training loss")
    axes.plot([], [], color="grey", linestyle="--", label="dashed: validation loss")
    axes.set_yscale("log")  # the late epochs, where configurations differ, are not squashed by the first
    axes.set(title=f"Loss curves of the top {len(ok)} configurations", xlabel="Epoch", ylabel="Loss (log scale)")
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return figure


def metric_vs_lr(results: Results) -> Any:
    """The validation metric of every completed trial against its learning rate, one series per batch size
    (and per optimizer, when several were searched: which wins at which rate is the question)."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(9, 5.5))
    ok = results.frame[results.frame["outcome"] == "completed"]
    metric = "val_accuracy" if ok["val_accuracy"].notna().any() else "val_loss"
    best = max if metric == "val_accuracy" else min
    several = "optimizer" in ok and ok["optimizer"].nunique() > 1
    keys = ["optimizer", "batch_size"] if several else ["batch_size"]
    # With --repeats, each dot is a mean over seeds: its standard error as a bar (README: How sure is the ranking)
    seeds = repeated(ok)
    for i, (values, group) in enumerate(ok.groupby(keys, sort=True)):
        label = f"{values[0]}, batch size {values[1]}" if several else f"batch size {values[0]}"
        axes.scatter(group["lr"], group[metric], color=f"C{i % 10}", alpha=0.6, label=label)
        if seeds:
            axes.errorbar(group["lr"], group[metric], yerr=pd.to_numeric(group[f"{metric}_se"], errors="coerce"),
                          fmt="none", ecolor=f"C{i % 10}", alpha=0.5, capsize=2)
        line = group.groupby("lr")[metric].agg(best)  # the best trial at each learning rate, joined
        axes.plot(line.index, line.values, color=f"C{i % 10}", linestyle=":")
    axes.set_xscale("log")
    axes.set(title=f"Validation {'accuracy' if metric == 'val_accuracy' else 'loss'} against learning rate\n"
                   f"(dots: every completed trial{', mean ± standard error over its seeds' if seeds else ''}; "
                   "line: the best at each learning rate)", xlabel="Learning rate (log scale)",
             ylabel="Validation accuracy" if metric == "val_accuracy" else "Validation loss")
    axes.grid(alpha=0.3, which="both")
    axes.legend()
    return figure


def importance_chart(importances: list[Importance]) -> Any:
    """Horizontal bars of each study's importances (studies with none are left out)."""
    plt = _pyplot()
    shown = [imp for imp in importances if imp.shares]
    params = [p for p in param_names() if any(p in imp.shares for imp in shown)]  # those that varied somewhere
    figure, axes = plt.subplots(figsize=(9, 1.2 + 0.5 * len(params) * max(1, len(shown))))
    height = 0.8 / max(1, len(shown))
    for i, imp in enumerate(shown):
        values = [imp.shares.get(p, 0.0) for p in params]
        bars = axes.barh([k + i * height for k in range(len(params))], values, height=height, color=f"C{i}",
                         label=f"study {imp.study}")
        axes.bar_label(bars, [f"{v:.0%}" if p in imp.shares else "not varied" for p, v in zip(params, values)],
                       padding=3)
    axes.set_yticks([k + height * (len(shown) - 1) / 2 for k in range(len(params))], [param(p).label for p in params])
    axes.invert_yaxis()
    axes.set_xlim(0, 1.1)  # room for the "100%" label
    axes.set_xticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    axes.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    axes.set(title="Parameter importance (fANOVA: share of the objective's variance)", xlabel="Share")
    axes.grid(alpha=0.3, axis="x")
    if len(shown) > 1:
        axes.legend()
    figure.tight_layout()
    return figure


def figures(results: Results, importances: list[Importance]) -> dict[str, Any]:
    """The report's figures by file name; the importance chart only where some study has importances."""
    out = {}
    if (results.frame["outcome"] == "completed").any():
        out[LOSS_CURVES] = loss_curves(results)
        out[METRIC_VS_LR] = metric_vs_lr(results)
    if any(imp.shares for imp in importances):
        out[IMPORTANCE] = importance_chart(importances)
    return out


def png(figure: Any) -> bytes:
    """A figure as PNG bytes; the figure is closed (pyplot keeps every open figure alive)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(figure)
    return buffer.getvalue()


def write_plots(results: Results, importances: list[Importance], folder: Path) -> list[Path]:
    """Write the report's PNG files into ``folder`` (created); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, figure in figures(results, importances).items():
        path = folder / name
        path.write_bytes(png(figure))
        paths.append(path)
    return paths


def probe_figure(probe: Probe) -> Any:
    """The probe's loss after its steps against the learning rate: the range that dropped the loss shaded,
    the initial loss and the drop's threshold as lines, the rates that diverged as crosses along the top."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(9, 5.5))
    finite = [(rate, loss) for rate, loss in zip(probe.rates, probe.losses) if math.isfinite(loss)]
    axes.plot([r for r, _ in finite], [loss for _, loss in finite], marker="o", color="C0",
              label=f"loss after {probe.steps} steps")
    top = max([probe.initial, *(loss for _, loss in finite)]) * 1.5
    diverged = [rate for rate, loss in zip(probe.rates, probe.losses) if not math.isfinite(loss)]
    if diverged:
        axes.scatter(diverged, [top] * len(diverged), marker="x", color="C3", label="diverged")
    axes.axhline(probe.initial, color="grey", linestyle="--", label=f"initial loss {probe.initial:.3g}")
    axes.axhline(probe.drop_share * probe.initial, color="grey", linestyle=":",
                 label=f"{probe.drop_share:g}x the initial loss: dropped below")
    if probe.good is not None:
        axes.axvspan(*probe.good, color="C2", alpha=0.15,
                     label=f"dropped: {probe.good[0]:g} to {probe.good[1]:g} (grid --lr {probe.grid})")
    axes.set_xscale("log")
    axes.set_yscale("log")  # the good rates' losses, far below the initial one, stay readable
    axes.set(title=f"Learning-rate probe of {probe.task}: {probe.optimizer}, batch size {probe.batch_size}, "
                   f"{probe.steps} steps per rate", xlabel="Learning rate (log scale)",
             ylabel=f"Loss on {probe.examples:,} training examples (log scale)")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize="small")
    return figure


def write_probe_plot(probe: Probe, folder: Path) -> Path:
    """Write the probe's plot into ``folder`` (created) as LR_PROBE; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LR_PROBE
    path.write_bytes(png(probe_figure(probe)))
    return path
