"""What the user's training code sees of hpsearch: ``hp``, one trial's values, and ``hp.report`` per epoch.

A function named by ``--objective FILE.py:NAME`` is called as ``NAME(hp)``; a command after ``--``
gets the same values as placeholders and in the environment (``HPSEARCH_LR``, ...), and
``hpsearch.hparams()`` builds the same ``hp`` from that environment, so that one script serves both
ways. ``hp.report(epoch, val_accuracy=..., val_loss=..., train_loss=...)`` tells hpsearch an epoch:
inside a function it goes straight to the search (and raises TrialEnded when the trial is pruned or
diverged); inside a command it prints the JSON line hpsearch reads. Plain Python: no torch, no optuna.
"""
from __future__ import annotations

import json
import math
import numbers
import os
from typing import Callable, Mapping

from hpsearch.space import names, param

# The metrics a trial may report, by the names hpsearch's tables use. During ``hpsearch test`` (split "test")
# the code evaluates on the test split and may report it under these names or as test_accuracy / test_loss.
ACCURACIES = ("val_accuracy", "test_accuracy")
LOSSES = ("val_loss", "train_loss", "test_loss")
METRICS = ACCURACIES + LOSSES
# Not a metric: how many examples the validation figures were measured on, for their standard error (optional).
COUNTS = ("val_examples",)
ENV_PREFIX = "HPSEARCH_"
ENV_PARAMS = "HPSEARCH_PARAMS"  # every value, as one JSON object
SETTINGS = ("epochs", "seed", "split", "trial", "device")  # what a trial knows beside its hyperparameters


class TrialEnded(BaseException):
    """Raised by ``hp.report`` when hpsearch stops the trial (pruned, or its loss diverged).

    A BaseException, like KeyboardInterrupt, so that the user's ``except Exception`` does not swallow it;
    hpsearch catches it around the call and records the trial's outcome.
    """


class MetricError(ValueError):
    """A reported epoch hpsearch cannot use; the message is one line for the user."""


def check_metrics(epoch: object, metrics: Mapping[str, object]) -> dict[str, float]:
    """The reported metrics as floats, or MetricError: a known name, a number, an accuracy in [0, 1].

    A loss may be NaN or infinite: that is divergence, an outcome, not a mistake.
    """
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise MetricError(f"epoch {epoch!r} is not a whole number >= 0")
    if not metrics:
        raise MetricError(f"epoch {epoch} reports no metric; report {', '.join(METRICS[:1] + LOSSES[:2])}")
    checked = {}
    for name, value in metrics.items():
        if name in COUNTS:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise MetricError(f"{name} {value!r} at epoch {epoch} is not a whole number >= 1")
            checked[name] = int(value)
            continue
        if name not in METRICS:
            raise MetricError(f"unknown metric '{name}'; report val_accuracy, val_loss, train_loss "
                              "(or test_accuracy, test_loss; and val_examples, the validation split's size)")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise MetricError(f"{name} {value!r} at epoch {epoch} is not a number")
        number = float(value)
        if name in ACCURACIES and not (math.isfinite(number) and 0 <= number <= 1):
            raise MetricError(f"{name} {number!r} at epoch {epoch} is not an accuracy in [0, 1]")
        checked[name] = number
    return checked


def metric_line(epoch: int, metrics: Mapping[str, float]) -> str:
    """The JSON line a command prints for an epoch (NaN and infinity as JSON's extension, which hpsearch reads)."""
    return json.dumps({"epoch": epoch, **metrics})


class HP:
    """One trial's hyperparameters (``hp.lr``, ``hp.weight_decay``, ... and ``hp.params``, a dict) and how it runs.

    ``epochs``, ``seed`` (hpsearch seeds torch, numpy and random with it before a function is called;
    seed anything else from it), ``device``, ``split`` ("val" during a search, "test" for hpsearch test),
    ``trial`` (its number in the study).
    """

    def __init__(self, params: Mapping[str, object], epochs: int, seed: int, device: str = "cpu",
                 split: str = "val", trial: int = 0, sink: Callable[[int, dict[str, float]], None] | None = None) -> None:
        self.params = dict(params)
        self.epochs, self.seed, self.device, self.split, self.trial = epochs, seed, device, split, trial
        self._sink = sink

    def __getattr__(self, name: str) -> object:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self.__dict__["params"][name]
        except KeyError:
            raise AttributeError(f"hp has no '{name}'; it has {', '.join(self.__dict__['params'])}, epochs, seed, "
                                 "device, split, trial") from None

    def __repr__(self) -> str:
        return (f"HP({', '.join(f'{k}={v!r}' for k, v in self.params.items())}, epochs={self.epochs}, "
                f"seed={self.seed}, device={self.device!r}, split={self.split!r}, trial={self.trial})")

    def report(self, epoch: int, **metrics: float) -> None:
        """Tell hpsearch one epoch: ``hp.report(3, val_accuracy=0.91, val_loss=0.31, train_loss=0.22)``.

        Raises TrialEnded (inside a function hpsearch calls) when the trial is stopped; in a command it
        prints the JSON line hpsearch reads.
        """
        checked = check_metrics(epoch, metrics)
        if self._sink is not None:
            self._sink(epoch, checked)
        else:
            print(metric_line(epoch, checked), flush=True)

    def texts(self) -> dict[str, str]:
        """Every value as text, as VALUES writes it (a command's placeholders: lr -> "0.01", ..., epochs, seed,
        device, split, trial)."""
        out = {name: param(name).text(value) if name in names() else str(value)  # type: ignore[arg-type]
               for name, value in self.params.items()}
        out.update({key: str(getattr(self, key)) for key in SETTINGS})
        return out

    def environment(self) -> dict[str, str]:
        """The values as a command's environment: HPSEARCH_LR=0.01, ..., HPSEARCH_PARAMS={"lr": 0.01, ...}."""
        env = {ENV_PREFIX + name.upper(): text for name, text in self.texts().items()}
        env[ENV_PARAMS] = json.dumps(self.params)
        return env


def hparams() -> HP:
    """The trial's ``hp`` inside a command that hpsearch runs (from its environment); its report prints lines.

    Outside hpsearch there is no trial: a RuntimeError says so.
    """
    if ENV_PARAMS not in os.environ:
        raise RuntimeError("hpsearch.hparams(): not running under hpsearch (no HPSEARCH_PARAMS in the environment); "
                           "run this script as: hpsearch grid -- python SCRIPT ...")
    env = os.environ
    return HP(json.loads(env[ENV_PARAMS]), int(env["HPSEARCH_EPOCHS"]), int(env["HPSEARCH_SEED"]),
              env.get("HPSEARCH_DEVICE", "cpu"), env.get("HPSEARCH_SPLIT", "val"), int(env.get("HPSEARCH_TRIAL", "0")))


def report_epoch(epoch: int, **metrics: float) -> None:
    """``hpsearch.report_epoch(epoch, val_accuracy=..., ...)``: print the metric line of one epoch (in a command;
    ``hpsearch.hparams().report`` does the same)."""
    print(metric_line(epoch, check_metrics(epoch, metrics)), flush=True)
