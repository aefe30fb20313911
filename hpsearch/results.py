"""Results: one pandas row per trial, ranked. Reads the storage; never imports torch."""
from __future__ import annotations

from typing import Sequence

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from hpsearch.search import decode_params
from hpsearch.storage import load_study, open_storage

COLUMNS = [
    "rank", "study", "trial", "lr", "weight_decay", "batch_size", "momentum", "epochs",
    "val_accuracy", "val_loss", "train_loss", "outcome", "stopped_epoch", "seconds", "reason",
]
METRICS = ["val_accuracy", "val_loss", "train_loss"]
_LAST = ["pruned", "diverged", "failed", "interrupted", "running"]  # the order of rows without a result
_OUTCOME = {TrialState.COMPLETE: "completed", TrialState.PRUNED: "diverged", TrialState.FAIL: "failed",
            TrialState.RUNNING: "running"}


def _row(study: str, t: FrozenTrial) -> dict[str, object]:
    attrs = t.user_attrs
    params = decode_params(t.params)
    outcome = attrs.get("outcome", _OUTCOME.get(t.state, t.state.name.lower()))
    completed = t.state == TrialState.COMPLETE
    curves = {m: attrs.get(m) or [] for m in METRICS}
    return {
        "study": study,
        "trial": t.number,
        "lr": params.get("lr"),
        "weight_decay": params.get("weight_decay"),
        "batch_size": params.get("batch_size"),
        "momentum": params.get("momentum"),
        "epochs": attrs.get("epochs"),
        **{m: (curves[m][-1] if completed and curves[m] else None) for m in METRICS},
        "outcome": outcome,
        "stopped_epoch": attrs.get("stopped_epoch"),
        "seconds": attrs.get("seconds"),
        "reason": attrs.get("reason", ""),
    }


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """Every trial that ran (waiting ones are not results), unranked."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    frame = pd.DataFrame([_row(study.study_name, t) for t in trials], columns=COLUMNS[1:])
    # An interrupted trial whose configuration ran again later is history, not a result.
    done = frame[frame["outcome"] != "interrupted"]
    keys = set(zip(done["lr"], done["weight_decay"], done["batch_size"], done["momentum"]))
    again = pd.Series([k in keys for k in zip(frame["lr"], frame["weight_decay"], frame["batch_size"],
                                              frame["momentum"])], index=frame.index, dtype=bool)
    stale = (frame["outcome"] == "interrupted") & again
    return frame[~stale]


def rank(frame: pd.DataFrame) -> pd.DataFrame:
    """Best first (higher validation accuracy, then lower validation loss); the rest last, unranked."""
    ok = frame[frame["outcome"] == "completed"].sort_values(
        ["val_accuracy", "val_loss", "study", "trial"], ascending=[False, True, True, True])
    rest = frame[frame["outcome"] != "completed"]
    order = rest["outcome"].map({o: i for i, o in enumerate(_LAST)}).fillna(len(_LAST))
    rest = rest.assign(_order=order).sort_values(["_order", "study", "trial"]).drop(columns="_order")
    ok = ok.assign(rank=range(1, len(ok) + 1))
    out = pd.concat([ok, rest.assign(rank=pd.NA)], ignore_index=True) if len(rest) else ok.reset_index(drop=True)
    out["rank"] = out["rank"].astype("Int64")
    out["batch_size"] = out["batch_size"].astype("Int64")
    out["epochs"] = out["epochs"].astype("Int64")
    out["stopped_epoch"] = out["stopped_epoch"].astype("Int64")
    return out[COLUMNS]


def load_results(names: Sequence[str], storage: str | None = None) -> pd.DataFrame:
    """The ranked table of one or several studies."""
    store = open_storage(storage, create=False)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    frames = [trials_frame(load_study(store.storage, store.shown, name)) for name in names]
    return rank(pd.concat(frames, ignore_index=True))


def list_studies(storage: str | None = None) -> pd.DataFrame:
    """One row per study: name, command, task, trials finished and the best validation accuracy."""
    opened = open_storage(storage, create=False).storage
    rows = []
    for summary in opened.get_all_studies():
        settings = summary.user_attrs.get("hpsearch", {})
        study = optuna.load_study(study_name=summary.study_name, storage=opened)
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        best = max((t.value for t in trials if t.value is not None), default=None)
        rows.append({"study": summary.study_name, "command": settings.get("command", ""),
                     "task": settings.get("task", ""), "completed": len(trials), "best_val_accuracy": best})
    return pd.DataFrame(rows, columns=["study", "command", "task", "completed", "best_val_accuracy"])
