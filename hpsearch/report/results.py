"""Results: one pandas row per trial, ranked. Reads the storage; never imports torch."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Mapping, Sequence

import math

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from hpsearch.errors import listed
from hpsearch.search.records import (EPOCHS, OUTCOME, REASON, REPEATS, SECONDS, SEED_STD, SETTINGS_ATTR,
                                     STOPPED_EPOCH, TEST_ATTR, VAL_EXAMPLES, VAL_LOSS_SE, claimable, decode_params,
                                     made_by_hpsearch, not_hpsearch)
from hpsearch.space import names as param_names, params as space_params
from hpsearch.spec import RANKINGS
from hpsearch.storage.store import load_study, open_storage

_AFTER_PARAMS = [
    "epochs", "val_accuracy", "val_loss", "train_loss", "outcome", "stopped_epoch", "seconds", "reason",
    "phase", "delta", "diagnosis", "edges",  # added after the first release: new CSV columns go last
    "val_accuracy_se", "val_loss_se", "repeats", "tie", "bound",
]


def columns() -> list[str]:
    """The frame's (and the CSV's) columns: a column per registered parameter after the trial's number."""
    return ["rank", "study", "trial", *param_names(), *_AFTER_PARAMS]
METRICS = ["val_accuracy", "val_loss", "train_loss"]
_LAST = ["pruned", "diverged", "failed", "timed_out", "out_of_memory", "died", "interrupted", "running"]  # the order of rows without a result
_OUTCOME = {TrialState.COMPLETE: "completed", TrialState.PRUNED: "diverged", TrialState.FAIL: "failed",
            TrialState.RUNNING: "running"}


def _row(study: str, t: FrozenTrial) -> dict[str, object]:
    attrs = t.user_attrs
    params = decode_params(t.params)
    # The state decides: a worker writes a trial's attributes before its state, so a reader in between
    # sees "completed" on a trial that is still RUNNING, without its last values.
    outcome = "running" if t.state == TrialState.RUNNING else attrs.get(OUTCOME, _OUTCOME.get(t.state, t.state.name.lower()))
    completed = t.state == TrialState.COMPLETE
    curves = {m: attrs.get(m) or [] for m in METRICS}
    return {
        "study": study,
        "trial": t.number,
        **{name: params.get(name) for name in param_names()},
        "epochs": attrs.get(EPOCHS),
        **{m: (curves[m][-1] if completed and curves[m] else None) for m in METRICS},
        "outcome": outcome,
        "stopped_epoch": attrs.get(STOPPED_EPOCH),
        "seconds": attrs.get(SECONDS),
        "reason": attrs.get(REASON, ""),
        "diagnosis": diagnose(outcome, curves["train_loss"], curves["val_loss"], attrs.get(STOPPED_EPOCH),
                              attrs.get(REASON, "")),
        **(standard_errors(curves, attrs) if completed else {}),
        "repeats": _count(attrs.get(REPEATS)) or 1,
    }


def _count(value: object) -> int | None:
    """A stored count, or None when it is not one (a study written by hand, or by an older hpsearch)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def binomial_se(accuracy: float, n: int) -> float:
    """The standard error of an accuracy measured on ``n`` examples; a perfect (or null) score counts half an
    error (or half a success), so that it is never 0."""
    p = min(max(accuracy, 0.5 / n), 1 - 0.5 / n)
    return math.sqrt(p * (1 - p) / n)


def standard_errors(curves: Mapping[str, Sequence[float]], attrs: Mapping[str, Any]) -> dict[str, float | None]:
    """The standard errors of a completed trial's final validation accuracy and loss (README: How sure is the
    ranking). One seed: the accuracy's binomial one over the validation examples (a perfect score counts half an
    error, so that it is never 0), the loss's over the examples. K seeds: the seeds' standard error combined
    with that one, which more seeds do not shrink: sqrt(sd**2 / K + se**2). None where nothing says."""
    n = _count(attrs.get(VAL_EXAMPLES))
    k = _count(attrs.get(REPEATS)) or 1
    std = attrs.get(SEED_STD) if isinstance(attrs.get(SEED_STD), dict) else {}
    out: dict[str, float | None] = {}
    for name, of_examples in (("val_accuracy", None), ("val_loss", _number(attrs.get(VAL_LOSS_SE)))):
        final = _number(curves[name][-1]) if curves[name] else None
        if final is not None and name == "val_accuracy" and n is not None:
            of_examples = binomial_se(final, n)
        out[f"{name}_se"] = combined_se(_number(std.get(name)), k, of_examples) if final is not None else None
    return out


def combined_se(sd: float | None, k: int, of_examples: float | None) -> float | None:
    """The standard error of a mean over ``k`` seeds whose standard deviation is ``sd``, combined with the
    evaluation split's own (``of_examples``), which more seeds do not shrink: sqrt(sd**2 / k + se**2)."""
    parts = [x for x in ((sd**2 / k) if sd is not None and k > 1 else None,
                         of_examples**2 if of_examples is not None else None) if x is not None]
    return math.sqrt(sum(parts)) if parts else None


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """Every trial that ran (waiting ones are not results), unranked."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    frame = pd.DataFrame([_row(study.study_name, t) for t in trials], columns=columns()[1:])
    frame["phase"] = phase(study.user_attrs.get(SETTINGS_ATTR, {}))
    # An interrupted trial whose configuration ran again later is history, not a result.
    done = frame[frame["outcome"] != "interrupted"]
    keys = set(zip(*(done[name] for name in param_names())))
    again = pd.Series([k in keys for k in zip(*(frame[name] for name in param_names()))], index=frame.index, dtype=bool)
    stale = (frame["outcome"] == "interrupted") & again
    return frame[~stale]


TIE_Z = 2.0  # a row ties the best when within two standard errors of their difference: about a 95% test


def rank(frame: pd.DataFrame, by: str = "mean") -> pd.DataFrame:
    """Best first (higher validation accuracy, then lower validation loss; ``by="lcb"``: higher lower bound,
    accuracy - 2 se, or for a loss the lower upper bound); the rest last, unranked."""
    frame = frame.reindex(columns=[c for c in columns() if c != "rank"])  # a frame from before a column existed
    frame = frame.assign(bound=_bound(frame))
    ok = frame[frame["outcome"] == "completed"]
    if by not in RANKINGS:
        raise ValueError(f"rank by one of {RANKINGS}, not {by!r}")
    if by == "lcb":
        accuracy = pd.to_numeric(ok["val_accuracy"], errors="coerce")
        key = (-ok["bound"]).where(accuracy.notna(), ok["bound"])  # lowest first: -(accuracy bound), or the loss bound
        ok = ok.assign(_key=key).sort_values(["_key", "val_loss", "study", "trial"]).drop(columns="_key")
    else:
        ok = ok.sort_values(["val_accuracy", "val_loss", "study", "trial"], ascending=[False, True, True, True])
    rest = frame[frame["outcome"] != "completed"]
    order = rest["outcome"].map({o: i for i, o in enumerate(_LAST)}).fillna(len(_LAST))
    rest = rest.assign(_order=order).sort_values(["_order", "study", "trial"]).drop(columns="_order")
    ok = ok.assign(rank=range(1, len(ok) + 1))
    out = pd.concat([ok, rest.assign(rank=pd.NA)], ignore_index=True) if len(rest) else ok.reset_index(drop=True)
    out["rank"] = out["rank"].astype("Int64")
    for name in (*(p.name for p in space_params() if p.integer), "epochs", "stopped_epoch", "repeats"):
        out[name] = _whole(out[name])
    out["delta"] = _delta(out)
    out["tie"] = _ties(out)
    ranges = searched_ranges(out)
    out["edges"] = ""  # for the best row only: on a coarse grid every other row sits on some edge too
    if len(ok):
        out.loc[0, "edges"] = ", ".join(f"{name} {side}" for name, side in edge_flags(out.iloc[0], ranges).items())
    return out[columns()]


NOISE_RULES = (  # shown in the HTML report; the README's "How sure is the ranking" says the same
    ("±", "the standard error: for an accuracy p on n validation examples sqrt(p (1 - p) / n), for a loss that of "
          "the mean over the examples; with K seeds, sqrt(sd² / K + that²)."),
    ("tie", f"the row's difference from the best is within {TIE_Z:g} standard errors of the difference, "
            f"|best - row| <= {TIE_Z:g} sqrt(se_best² + se_row²): the data cannot tell them apart."),
)


def _ranked_metric(frame: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per row, the metric it is ranked by and that metric's standard error: accuracy, or a regression's loss."""
    accuracy = pd.to_numeric(frame["val_accuracy"], errors="coerce")
    loss = pd.to_numeric(frame["val_loss"], errors="coerce")
    metric = accuracy.where(accuracy.notna(), loss)
    se = pd.to_numeric(frame["val_accuracy_se"], errors="coerce").where(
        accuracy.notna(), pd.to_numeric(frame["val_loss_se"], errors="coerce"))
    return metric, se


def _bound(frame: pd.DataFrame) -> pd.Series:
    """The pessimistic end of each completed row's metric: accuracy - 2 se, loss + 2 se (se unknown: the mean)."""
    metric, se = _ranked_metric(frame)
    accuracy = pd.to_numeric(frame["val_accuracy"], errors="coerce")
    margin = TIE_Z * se.fillna(0.0)
    return (metric - margin).where(accuracy.notna(), metric + margin).where(frame["outcome"] == "completed")


def _ties(ranked: pd.DataFrame) -> pd.Series:
    """Whether each completed row below the first is within noise of it: |best - row| <= 2 sqrt(se_best² + se_row²).

    NA where either standard error is unknown, and on the first row itself.
    """
    metric, se = _ranked_metric(ranked)
    ok = ranked["outcome"] == "completed"
    tie = pd.Series(pd.NA, index=ranked.index, dtype="boolean")
    if not ok.any() or pd.isna(se.iloc[0]):
        return tie
    within = (metric - metric.iloc[0]).abs() <= TIE_Z * (se**2 + se.iloc[0] ** 2) ** 0.5
    known = ok & se.notna() & (ranked.index > 0)
    tie[known] = within[known]
    return tie


def ties_with_best(ranked: pd.DataFrame) -> pd.DataFrame:
    """The completed rows that tie the best (the first row) within noise."""
    return ranked[ranked["tie"].fillna(False).astype(bool)]


def repeated(frame: pd.DataFrame) -> bool:
    """Whether any configuration of the frame trained with more than one seed (--repeats)."""
    return bool((pd.to_numeric(frame["repeats"], errors="coerce").fillna(1) > 1).any())


TIES_NAMED = 10  # tied trials a line names before "and N more"


def trial_names(rows: pd.DataFrame, with_study: bool = True) -> str:
    """"coarse#9, coarse#10 and 53 more" (``with_study`` False: "9, 10 and 53 more")."""
    return listed([f"{r.study}#{r.trial}" if with_study else str(r.trial) for r in rows.itertuples()], TIES_NAMED)


def _whole(column: pd.Series) -> pd.Series:
    """Whole numbers as nullable integers; a column holding any other value (a batch size of 1e20 stored by
    an older hpsearch, text from a foreign study) is left as it is: shown, never an overflow."""
    numbers = pd.to_numeric(column, errors="coerce")
    fits = numbers.isna() | ((numbers.abs() < 2**53) & (numbers == numbers.round()))
    if numbers.notna().sum() != column.notna().sum() or not fits.all():
        return column
    return numbers.astype("Int64")


def _delta(ranked: pd.DataFrame) -> pd.Series:
    """Each completed row's distance to the first (the best): accuracy minus the first row's (<= 0 when ranked
    by the mean), or for a regression row (no accuracy) its validation loss minus the first row's (>= 0)."""
    ok = ranked["outcome"] == "completed"
    if not ok.any():
        return pd.Series(math.nan, index=ranked.index)
    metric, _ = _ranked_metric(ranked)
    return (metric - metric.iloc[0]).where(ok)


def load_results(names: Sequence[str], storage: str | None = None, by: str = "mean") -> pd.DataFrame:
    """The ranked table of one or several studies."""
    return read_results(names, storage, by).frame


@dataclass(frozen=True)
class Results:
    """The ranked table and what a full report adds to it: the studies (settings, test result, curves)."""

    frame: pd.DataFrame
    studies: dict[str, optuna.Study]

    def settings(self, study: str) -> dict[str, Any]:
        return dict(self.studies[study].user_attrs.get(SETTINGS_ATTR, {}))

    def test_result(self, study: str) -> dict[str, Any] | None:
        return self.studies[study].user_attrs.get(TEST_ATTR)

    def trial(self, study: str, number: int) -> FrozenTrial:
        return self._trials[study, number]

    @cached_property
    def _trials(self) -> dict[tuple[str, int], FrozenTrial]:
        return {(name, t.number): t for name, study in self.studies.items() for t in study.get_trials(deepcopy=False)}

    def curves(self, study: str, number: int) -> dict[str, list[float]]:
        """The per-epoch metrics of one trial (empty lists where it recorded none)."""
        attrs = self.trial(study, number).user_attrs
        return {m: list(attrs.get(m) or []) for m in METRICS}


def read_results(names: Sequence[str], storage: str | None = None, by: str = "mean") -> Results:
    """Load one or several studies once, for the ranked table and everything a report shows."""
    store = open_storage(storage, create=False)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    studies = {name: load_study(store.storage, store.shown, name) for name in names}
    for name, study in studies.items():
        if not claimable(study):  # an empty study without attributes is merely an empty table
            raise not_hpsearch(name, f"it holds {_foreign_summary(study)}; hpsearch reads its own studies only "
                               "(open this one with optuna.load_study or optuna-dashboard)")
    frame = rank(pd.concat([trials_frame(study) for study in studies.values()], ignore_index=True), by)
    return Results(frame, studies)


def list_studies(storage: str | None = None) -> pd.DataFrame:
    """One row per study: name, command, task, trials finished and the best validation accuracy.

    A study hpsearch did not make is listed as "foreign", its objectives in the task column; a study that
    cannot be read is listed as such: the listing never fails because of one study.
    """
    opened = open_storage(storage, create=False).storage
    rows = []
    for summary in opened.get_all_studies():
        row: dict[str, object] = {"study": summary.study_name, "command": "", "task": "", "completed": 0,
                                  "best_val_accuracy": None}
        try:
            study = optuna.load_study(study_name=summary.study_name, storage=opened)
            trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            row["completed"] = len(trials)
            if made_by_hpsearch(study):
                settings = study.user_attrs[SETTINGS_ATTR]
                pick = min if study.direction == optuna.study.StudyDirection.MINIMIZE else max  # regression: lowest loss
                row.update(command=settings.get("command", ""), task=what_trains(settings),
                           best_val_accuracy=pick((t.value for t in trials if t.value is not None), default=None))
            else:
                row.update(command="foreign", task=_directions(study))
        except Exception as error:  # noqa: BLE001 - one unreadable study must not hide the others
            row.update(command="unreadable", task=type(error).__name__)
        rows.append(row)
    return pd.DataFrame(rows, columns=["study", "command", "task", "completed", "best_val_accuracy"])


def _directions(study: optuna.Study) -> str:
    return ", ".join(d.name.lower() for d in study.directions)


def _foreign_summary(study: optuna.Study) -> str:
    """What a foreign study holds, in a few words: "3 trials, 2 objectives (minimize, maximize)"."""
    trials = len(study.get_trials(deepcopy=False))
    objectives = len(study.directions)
    return (f"{trials} trial{'s' * (trials != 1)}, {objectives} objective{'s' * (objectives != 1)} "
            f"({_directions(study)})")


# --- the edges of the range searched (shared with refine) ---

def searched_ranges(frame: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """Per parameter, the lowest and highest value that the frame's trials tried (any outcome: a diverged
    learning rate was searched too). Over several studies this is the range searched so far. Sampled
    studies count what they drew, not their declared bounds: a continuous draw never lands on a bound."""
    ranges = {}
    for name in param_names():
        values = pd.to_numeric(frame[name], errors="coerce").dropna()
        if len(values):
            ranges[name] = (float(values.min()), float(values.max()))
    return ranges


def edge_flags(params: Mapping[str, object], ranges: Mapping[str, tuple[float, float]]) -> dict[str, str]:
    """Which of a configuration's values sit on an edge of the range searched: name -> "low" or "high".

    A parameter searched at a single value has no edge, and weight decay 0 (or momentum 0) is no
    low edge to widen: nothing lies below it.
    """
    flags = {}
    for name, (low, high) in ranges.items():
        value = params.get(name)
        if value is None or low == high or pd.isna(value):
            continue
        if value >= high:
            flags[name] = "high"
        elif value <= low and value > 0:
            flags[name] = "low"
    return flags


# --- reading the curves ---

NOT_LEARNING = 0.01  # the training loss fell by less than 1% from the first epoch to the last
STILL_FALLING = 0.10  # the last epoch brought at least a tenth of the training loss's whole fall
RISING = 0.05  # the last validation loss is 5% above its lowest, reached two or more epochs before the end


DIAGNOSIS_RULES = (  # the first that holds; shown in the HTML report and the README
    ("diverged at epoch E, pruned at epoch E, failed: REASON",
     "the trial did not finish (likewise out_of_memory, died, interrupted)."),
    ("too short", "a single epoch is not a curve."),
    ("not learning", ("the training loss fell by less than 1% from the first epoch to the last: the learning "
                      "rate is far too low, or so high that the ReLUs died (accuracy at chance, loss flat).")),
    ("overfitting", ("the last validation loss is more than 5% above its lowest, reached two or more epochs "
                     "before the end, while the training loss kept falling since then.")),
    ("underfitting", ("in the last epoch both losses still fell, the training loss by at least a tenth of its "
                      "whole fall since epoch 1 (not flattening yet): more epochs would help.")),
    ("healthy", "none of the above: the training loss has flattened and the validation loss is not rising."),
)


def diagnose(outcome: str, train_loss: Sequence[float], val_loss: Sequence[float],
             stopped_epoch: int | None = None, reason: str = "") -> str:
    """What a trial's curves say: the first of DIAGNOSIS_RULES that holds."""
    if outcome in ("diverged", "pruned"):
        return f"{outcome} at epoch {stopped_epoch}" if stopped_epoch is not None else outcome
    if outcome != "completed":  # failed, out_of_memory, died, interrupted: the reason says why
        return f"{outcome}: {reason}" if reason else outcome
    if not train_loss or not val_loss:  # the user's code reported no loss curve (only accuracy, say)
        return "no loss curves"
    if min(len(train_loss), len(val_loss)) < 2:
        return "too short"
    first, before, last = train_loss[0], train_loss[-2], train_loss[-1]
    if first - last < NOT_LEARNING * abs(first):
        return "not learning"
    lowest = min(range(len(val_loss)), key=val_loss.__getitem__)
    if lowest <= len(val_loss) - 3 and val_loss[-1] > val_loss[lowest] * (1 + RISING) and last < train_loss[lowest]:
        return "overfitting"
    if val_loss[-1] < val_loss[-2] and before - last >= STILL_FALLING * (first - last):
        return "underfitting"
    return "healthy"


def what_trains(settings: Mapping[str, object]) -> str:
    """A study's task, or the user's own code that trained it (``--objective F.py:NAME`` or ``-- COMMAND``)."""
    if settings.get("objective"):
        return f"--objective {settings['objective']}"
    if settings.get("run"):
        return "-- " + " ".join(map(str, settings["run"]))  # type: ignore[call-overload]
    return str(settings.get("task", ""))


def phase(settings: Mapping[str, object]) -> str:
    """Where a study stands in the recipe: "refine" when it was refined from others, else its command."""
    return "refine" if "source" in settings else str(settings.get("command", ""))
