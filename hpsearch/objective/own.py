"""The user's own training code as an Objective: one trial at a time, each epoch told as it is reported.

``TrialRun`` is what both ways share (a function here, a command in command.py): the reported
epochs checked, divergence caught as the trainer catches it (a loss not finite, or above 10x its
first value), each epoch told to the search, which may stop the trial (pruning). ``FunctionObjective``
calls ``NAME(hp)`` in this process, with torch, numpy and random seeded from the trial's seed, its
prints going to the trial's log, and --timeout as an alarm.
"""
from __future__ import annotations

import abc
import contextlib
import inspect
import math
import random
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, TextIO

from hpsearch.errors import BadInput
from hpsearch.objective.base import Done, EpochCallback, Failure
from hpsearch.objective.hp import HP, MetricError, TrialEnded
from hpsearch.spec import Config
from hpsearch.tasks.code import first_line, module

if TYPE_CHECKING:
    from hpsearch.train import MemberResult

DIVERGENCE_FACTOR = 10.0  # as the population trainer: a loss above 10x the trial's first loss is exploding
LOG_LIMIT = 64 * 2**20  # bytes of a trial's log; beyond it, lines are dropped (a script printing without end)


def log_path(logs: Path | None, trial: int, seed: int | None = None) -> Path | None:
    """trial-N.log; trial-N-seed-R.log for the R-th seed (from 1) of a trial that trains several (--repeats)."""
    if logs is None:
        return None
    return logs / (f"trial-{trial}.log" if seed is None else f"trial-{trial}-seed-{seed}.log")


def log_note(path: Path | None) -> str:
    return f" (log: {path})" if path is not None else ""


class TrialRun:
    """One trial of the user's code: its reported epochs, checked and told to the search, and its result."""

    def __init__(self, index: int, config: Config, on_epoch: EpochCallback, metric: str, split: str) -> None:
        from hpsearch.train import MemberResult

        self.index, self.on_epoch, self.metric, self.split = index, on_epoch, metric, split
        self.result: MemberResult = MemberResult(config)
        self.started = time.perf_counter()
        self.first_loss: float | None = None
        self.ended = False  # stopped or diverged: later reports are ignored

    @property
    def epochs(self) -> int:
        return max(len(self.result.val_accuracy), len(self.result.val_loss))

    def report(self, epoch: int, metrics: dict[str, float]) -> None:
        """One reported epoch (checked by hp.check_metrics); raises TrialEnded when the trial stops here."""
        from hpsearch.train import EpochReport

        if self.ended:
            raise TrialEnded()
        test = self.split == "test"  # the test split's figures may come as test_* or under the usual names
        accuracy = metrics.get("test_accuracy") if test and "test_accuracy" in metrics else metrics.get("val_accuracy")
        loss = metrics.get("test_loss") if test and "test_loss" in metrics else metrics.get("val_loss")
        train = metrics.get("train_loss")
        ranked = accuracy if self.metric == "val_accuracy" else loss
        if ranked is None:
            other = "val_loss" if self.metric == "val_accuracy" else "val_accuracy"
            raise MetricError(f"epoch {epoch} reports no {self.metric}, which the study ranks by; report it every "
                              f"epoch{' (or rank by ' + other + ' with --metric ' + other + ')' if other in metrics else ''}")
        number = self.epochs + 1  # epochs count from 1 in hpsearch's records, whatever the code numbers them
        watched = train if train is not None else loss
        if watched is not None:
            if self.first_loss is None and math.isfinite(watched):
                self.first_loss = watched
            limit = None if self.first_loss is None else DIVERGENCE_FACTOR * self.first_loss
            if not math.isfinite(watched) or (limit is not None and watched > limit):
                what = "train_loss" if train is not None else "val_loss"
                shown = "not finite" if not math.isfinite(watched) else f"{watched:.3g} > {DIVERGENCE_FACTOR:g}x its first"
                self._end("diverged", number, f"{what} {shown} at epoch {number}")
        r = self.result
        if "val_examples" in metrics:  # the accuracy's binomial standard error needs it
            r.val_examples = int(metrics["val_examples"])
        for curve, value in ((r.train_loss, train), (r.val_loss, loss), (r.val_accuracy, accuracy)):
            if value is not None:
                curve.append(value)
        seconds = time.perf_counter() - self.started
        report = EpochReport(number, [self.index], [train] if train is not None else [],
                             [loss] if loss is not None else [], [accuracy] if accuracy is not None else [], [], seconds)
        if self.index in set(self.on_epoch([self.index], report)):
            self._end("stopped", number, f"stopped after epoch {number}")

    def _end(self, outcome: str, epoch: int, reason: str) -> None:
        self.result.outcome, self.result.stopped_epoch, self.result.reason = outcome, epoch, reason
        self.ended = True
        raise TrialEnded()

    def returned(self, value: object) -> None:
        """A function's return value: a dict of final metrics completes the last epoch (or is the only one)."""
        if value is None or self.ended:
            return
        if not isinstance(value, dict):
            raise MetricError(f"returned {type(value).__name__}; return None or a dict of final metrics")
        from hpsearch.objective.hp import check_metrics

        checked = check_metrics(max(self.epochs, 1), value)
        if self.epochs == 0:
            with contextlib.suppress(TrialEnded):
                self.report(1, checked)
            return
        for name, curve in (("train_loss", self.result.train_loss), ("val_loss", self.result.val_loss),
                            ("val_accuracy", self.result.val_accuracy)):
            if name in checked and curve:
                curve[-1] = checked[name]

    def results(self, silent: str) -> list[MemberResult] | Failure:
        """The trial's result once its code is done: stopped or diverged (at any epoch, the first too), or
        completed; a Failure with the reason ``silent`` when it reported no epoch at all."""
        self.result.seconds = time.perf_counter() - self.started
        if not self.ended and self.epochs == 0:
            return Failure(silent)
        return [self.result]


class TrialTimeout(BaseException):
    """The trial ran past --timeout (raised by the alarm in the middle of the user's code)."""


@contextlib.contextmanager
def _deadline(seconds: float | None) -> Iterator[None]:
    """--timeout for code running in this process: SIGALRM raises TrialTimeout where the code is.

    Only the main thread has signals; elsewhere (hpsearch called from a thread) there is no limit.
    """
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def alarm(signum: int, frame: object) -> None:
        raise TrialTimeout()

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _log(path: Path | None) -> Iterator[TextIO | None]:
    """The trial's stdout and stderr, into its log file (none: left where they are)."""
    if path is None:
        yield None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", errors="replace") as log, \
            contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        yield log


def seed_everything(seed: int) -> None:
    """Python's random, numpy's global generator and torch's (when the user's code imported it)."""
    random.seed(seed)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(seed)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


def load_function(reference: str) -> Callable[[HP], Any]:
    """The function ``FILE.py:NAME`` or ``package.module:NAME`` names, which takes one argument (hp)."""
    where, _, name = reference.rpartition(":")
    found = module(where, "objective file")
    function = getattr(found, name, None)
    if function is None:
        defined = [n for n, v in vars(found).items() if inspect.isfunction(v) and not n.startswith("_")
                   and v.__module__ == found.__name__]
        hint = f" (it defines: {', '.join(defined)})" if defined else ""
        raise BadInput(f"--objective {reference}: {where} has no function '{name}'{hint}")
    if not callable(function) or inspect.isclass(function):
        raise BadInput(f"--objective {reference}: '{name}' is not a function; define def {name}(hp): ...")
    try:
        inspect.signature(function).bind(None)
    except TypeError:
        raise BadInput(f"--objective {reference}: {name}() must take one argument, hp (def {name}(hp): ...)") from None
    except ValueError:  # a built-in without a signature: let the call tell
        pass
    return function


class OneAtATime(abc.ABC):
    """The user's code trains one configuration at a time: each is its own group (``run_one``)."""

    logs: Path | None = None  # the folder of the trials' logs (none: their output is left where it is)

    def prepare(self) -> None:
        """Nothing to load by default; the function and the command check themselves here."""

    def train(self, configs: Sequence[Config], epochs: int, on_epoch: EpochCallback,
              trials: Sequence[int] = ()) -> Iterator[Done]:
        self.prepare()
        numbers = [trials[i] if i < len(trials) else i for i in range(len(configs))]
        for i, config in enumerate(configs):
            number = numbers[i]
            seed = numbers[:i].count(number) + 1 if numbers.count(number) > 1 else None  # one of its --repeats
            yield [i], self.run_one(i, config, epochs, on_epoch, number, log_path(self.logs, number, seed))

    @abc.abstractmethod
    def run_one(self, index: int, config: Config, epochs: int, on_epoch: EpochCallback,
                trial: int, path: Path | None) -> list[MemberResult] | Failure:
        """Train ``config`` (batch index ``index``, trial number ``trial``, its output to ``path``): its result,
        or why it failed."""


class FunctionObjective(OneAtATime):
    """``--objective FILE.py:NAME``: ``NAME(hp)`` called once per trial, in this process."""

    def __init__(self, reference: str, metric: str = "val_accuracy", device: str = "auto", timeout: float | None = None,
                 logs: Path | None = None, split: str = "val") -> None:
        self.reference, self.metric, self.device, self.timeout, self.logs, self.split = (
            reference, metric, device, timeout, logs, split)
        self._function: Callable[[HP], Any] | None = None

    def prepare(self) -> None:
        if self._function is None:
            self._function = load_function(self.reference)

    def _device(self) -> str:
        if self.device != "auto":
            return self.device
        torch = sys.modules.get("torch")
        return "cuda" if torch is not None and torch.cuda.is_available() else "cpu"

    def run_one(self, index: int, config: Config, epochs: int, on_epoch: EpochCallback,
                trial: int, path: Path | None) -> list[MemberResult] | Failure:
        assert self._function is not None
        run = TrialRun(index, config, on_epoch, self.metric, self.split)
        hp = HP(config.params(), epochs, config.seed, self._device(), self.split, trial, run.report)
        where = log_note(path)
        try:
            with _log(path) as log:
                try:
                    seed_everything(config.seed)
                    with _deadline(self.timeout):
                        run.returned(self._function(hp))
                except (TrialEnded, KeyboardInterrupt, TrialTimeout):
                    raise
                except BaseException:  # the traceback goes to the log; the reason is one line
                    if log is not None:
                        traceback.print_exc(file=log)
                    raise
        except TrialEnded:
            pass  # stopped or diverged: the run holds the outcome
        except TrialTimeout:
            return Failure(f"ran past --timeout {self.timeout:g} s{where}", timed_out=True)
        except MetricError as error:
            return Failure(f"{self.reference}: {error}{where}")
        except SystemExit as error:
            return Failure(f"{self.reference} called sys.exit({error.code!r}){where}")
        except KeyboardInterrupt:
            raise
        except Exception as error:  # noqa: BLE001 - the user's code may raise anything: this trial failed
            return Failure(f"{first_line(error)}{where}")
        return run.results(f"{self.reference} reported no epoch: call hp.report(epoch, {self.metric}=...) each "
                           f"epoch, or return a dict of final metrics{where}")


__all__ = ["FunctionObjective", "OneAtATime", "TrialRun", "load_function", "seed_everything"]
