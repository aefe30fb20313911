"""Records: how hpsearch stores a trial in Optuna, and the only module that writes user attributes.

Later stages (results, report, refine, test) and users' scripts read these attributes, and
optuna-dashboard shows them; their names and values are a stored format that existing journals
already hold, so they do not change.

Trial attributes:

    outcome        an Outcome's value: completed | diverged | pruned | failed | out_of_memory | timed_out | died |
                   interrupted
    reason         why a trial did not complete (empty when it did)
    epochs         epochs trained
    train_loss     per-epoch mean training loss (list)
    val_loss       per-epoch validation loss (list)
    val_accuracy   per-epoch validation accuracy (list); also reported as intermediate values
                   (absent for regression, whose intermediate values are val_loss)
    seconds        the trial's share of its population's wall time
    step_ms        mean wall time of one training step of its population, in milliseconds
    seed           the configuration's seed (from --seed and the values); with --repeats, its first seed's
    val_examples   how many examples the validation split has (the accuracy's binomial standard error)
    val_loss_se    the last validation loss's standard error over those examples (with --repeats: the seeds' mean)
    repeats        seeds the configuration trained with (--repeats K, written when K > 1); then the value and the
                   curves above are the means over the seeds, and beside them:
    seeds          the seeds, in order
    per_seed       per seed: outcome, and the final val_accuracy, val_loss, train_loss (lists, None where none)
    seed_curves    per seed: the per-epoch curves (val_accuracy, val_loss, train_loss: lists of lists)
    seed_std       the standard deviation over the seeds of the final val_accuracy and val_loss
    stopped_epoch  the epoch a diverged or pruned trial stopped in; diverged_step: the step within it
    worker         host:pid:token of the worker that popped the trial
    heartbeat      unix time the worker last showed it is alive
    requeued       true on a failed trial whose configuration was queued again
    attempt        1 for a configuration's first run, 2 for its first retry, ...

Study attributes: ``hpsearch`` (the settings a study was created with) and ``test_result``.
"""
from __future__ import annotations

import enum
import math
import statistics
import time
from typing import TYPE_CHECKING, Any, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.errors import BadInput
from hpsearch.space import params as space_params
from hpsearch.spec import Config, make_config

if TYPE_CHECKING:
    from hpsearch.train import MemberResult

OUTCOME = "outcome"
REASON = "reason"
EPOCHS = "epochs"
TRAIN_LOSS = "train_loss"
VAL_LOSS = "val_loss"
VAL_ACCURACY = "val_accuracy"
SECONDS = "seconds"
STEP_MS = "step_ms"
SEED = "seed"
VAL_EXAMPLES = "val_examples"
VAL_LOSS_SE = "val_loss_se"
REPEATS = "repeats"
SEEDS = "seeds"
PER_SEED = "per_seed"
SEED_CURVES = "seed_curves"
SEED_STD = "seed_std"
STOPPED_EPOCH = "stopped_epoch"
DIVERGED_STEP = "diverged_step"
WORKER_ATTR = "worker"
HEARTBEAT_ATTR = "heartbeat"
REQUEUED_ATTR = "requeued"
ATTEMPT_ATTR = "attempt"
SETTINGS_ATTR = "hpsearch"  # study attribute: the settings a study was created with
TEST_ATTR = "test_result"  # study attribute: the locked test's record (hpsearch test)


class Outcome(str, enum.Enum):
    """What became of a trial; the value is what the ``outcome`` attribute stores."""

    COMPLETED = "completed"
    DIVERGED = "diverged"
    PRUNED = "pruned"
    FAILED = "failed"
    OUT_OF_MEMORY = "out_of_memory"
    DIED = "died"  # its worker was killed; queued again
    TIMED_OUT = "timed_out"  # the user's code ran past --timeout
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM; queued again
    RUNNING = "running"  # never stored: what results call a trial still in flight

    def __str__(self) -> str:
        return self.value


def finished(trial: FrozenTrial) -> bool:
    """Complete, diverged, or failed for good; interrupted, died and retried trials are queued again."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return (trial.state == TrialState.FAIL and trial.user_attrs.get(OUTCOME) != Outcome.INTERRUPTED
            and not trial.user_attrs.get(REQUEUED_ATTR))


def decode_params(params: dict[str, object]) -> dict[str, object]:
    """The values from a trial's stored parameters (weight decay may be stored as zero: ``Param.zero_flag``).

    A parameter a sampled trial does not hold takes its ``fixed`` value: the trial was stored before the
    parameter existed (a study of SGD only, before there was --optimizer), and trained at that value.
    """
    values = dict(params)
    for p in space_params():
        if p.zero_flag is not None and values.pop(p.zero_flag, False):
            values[p.name] = 0.0
        if values and p.name not in values and p.fixed is not None:
            values[p.name] = p.fixed
    return values


def param_config(params: dict[str, object], seed: int) -> Config:
    """A trial's configuration from its stored parameters."""
    return make_config(decode_params(params), seed)  # type: ignore[arg-type]


def queued_params(trial: FrozenTrial) -> dict[str, object]:
    """The configuration a trial ran (or was about to run), to queue it again.

    A queued trial's fixed parameters first: a worker killed while popping it may have recorded only some.
    """
    return dict(trial.system_attrs.get("fixed_params") or trial.params)


# --- trials ---


def sign(trial: optuna.Trial, worker: str) -> None:
    """Sign a trial just popped: who runs it, and that it is alive now."""
    trial.set_user_attr(WORKER_ATTR, worker)
    beat(trial)


def beat(trial: optuna.Trial) -> None:
    """The trial's worker is alive now."""
    trial.set_user_attr(HEARTBEAT_ATTR, round(time.time(), 3))


def beat_by_id(storage: optuna.storages.BaseStorage, trial_id: int) -> None:
    """``beat`` from a thread that holds only the trial's id."""
    storage.set_trial_user_attr(trial_id, HEARTBEAT_ATTR, round(time.time(), 3))


def tell(study: optuna.Study, trial: optuna.Trial, results: Sequence[MemberResult], prune: str,
         minimize: bool, repeats: int = 1) -> float | None:
    """Record a trained trial: its curves and outcome, then COMPLETE with its value, or PRUNED.

    ``results``: one per seed it trained with (--repeats K: up to K, fewer when a seed diverged and the others
    were not run); they are recorded as their mean (``merge``) with each seed's figures beside it. Diverged and pruned trials are PRUNED so that TPE still learns
    from their curves. Returns the value told (None when it did not complete).
    """
    result = results[0] if repeats == 1 else merge(results, repeats)
    attrs: dict[str, Any] = {
        OUTCOME: result.outcome,
        REASON: result.reason,
        EPOCHS: max(len(result.val_loss), len(result.val_accuracy)),  # the user's code may report one of them
        TRAIN_LOSS: result.train_loss,
        VAL_LOSS: result.val_loss,
        VAL_ACCURACY: result.val_accuracy,
        SECONDS: round(result.seconds, 6),
        STEP_MS: round(result.step_ms, 4),
        SEED: result.config.seed,
    }
    attrs.update({key: value for key, value in ((VAL_EXAMPLES, result.val_examples), (VAL_LOSS_SE, result.val_loss_se))
                  if value is not None})
    if repeats > 1:
        attrs.update(seed_attrs(results, repeats))
    if result.outcome == "stopped":  # the trainer stops what the pruner asks it to
        attrs[OUTCOME] = Outcome.PRUNED.value
        attrs[REASON] = f"pruned by {prune} after epoch {result.stopped_epoch}"
    if result.outcome != Outcome.COMPLETED:
        attrs[STOPPED_EPOCH] = result.stopped_epoch
    if result.outcome == Outcome.DIVERGED:
        attrs[DIVERGED_STEP] = result.diverged_step
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    if result.outcome != Outcome.COMPLETED:
        study.tell(trial, state=TrialState.PRUNED)
        return None
    value = result.val_loss[-1] if minimize else result.val_accuracy[-1]
    study.tell(trial, value)
    return value


_CURVES = ("val_accuracy", "val_loss", "train_loss")


def merge(results: Sequence[MemberResult], repeats: int) -> MemberResult:
    """One configuration's seeds as one result: the mean curves (over the epochs every seed reached), and the
    outcome of the first seed that diverged, else of the first that was stopped, else completed: a configuration
    that diverges with one of its seeds is not one to pick."""
    from hpsearch.train import MemberResult

    def mean_curve(name: str) -> list[float]:
        curves = [getattr(r, name) for r in results]
        length = min(map(len, curves))
        return [statistics.fmean(c[e] for c in curves) for e in range(length)] if all(curves) else []

    ended = ([(k, r) for k, r in enumerate(results) if r.outcome == Outcome.DIVERGED]
             or [(k, r) for k, r in enumerate(results) if r.outcome != Outcome.COMPLETED])
    ses = [r.val_loss_se for r in results if r.val_loss_se is not None]
    merged = MemberResult(results[0].config, **{name: mean_curve(name) for name in _CURVES},
                          seconds=sum(r.seconds for r in results),
                          step_ms=statistics.fmean(r.step_ms for r in results),
                          val_loss_se=statistics.fmean(ses) if ses else None, val_examples=results[0].val_examples)
    if ended:
        k, first = ended[0]
        merged.outcome, merged.stopped_epoch, merged.diverged_step = first.outcome, first.stopped_epoch, first.diverged_step
        merged.reason = f"seed {k + 1} of {repeats}: {first.reason}" if first.reason else ""
    return merged


def seed_attrs(results: Sequence[MemberResult], repeats: int) -> dict[str, Any]:
    """What each seed of a configuration did (--repeats; the seeds that ran), beside the means ``tell`` records."""
    finals = {name: [getattr(r, name)[-1] if getattr(r, name) else None for r in results] for name in _CURVES}
    std = {name: statistics.stdev(values) for name in ("val_accuracy", "val_loss")
           if len(values := finals[name]) > 1 and all(v is not None and math.isfinite(v) for v in values)}
    return {
        REPEATS: repeats,
        SEEDS: [r.config.seed for r in results],
        PER_SEED: {"outcome": [r.outcome for r in results], **finals},
        SEED_CURVES: {name: [list(getattr(r, name)) for r in results] for name in _CURVES},
        SEED_STD: std,
    }


def fail(study: optuna.Study, trial_id: int, outcome: Outcome, reason: str, requeued: bool = False) -> None:
    """Record a trial as failed with its outcome and reason (FAIL: TPE ignores it)."""
    storage = study._storage
    storage.set_trial_user_attr(trial_id, OUTCOME, outcome.value)
    storage.set_trial_user_attr(trial_id, REASON, reason)
    if requeued:
        storage.set_trial_user_attr(trial_id, REQUEUED_ATTR, True)
    storage.set_trial_state_values(trial_id, TrialState.FAIL)


def requeue(study: optuna.Study, trial: optuna.Trial | FrozenTrial, attempt: int | None = None) -> None:
    """Queue a trial's configuration again (not a trial without one: the budget samples afresh)."""
    frozen = trial if isinstance(trial, FrozenTrial) else study._storage.get_trial(trial._trial_id)
    params = queued_params(frozen)
    if params:
        attempt = attempt if attempt is not None else frozen.user_attrs.get(ATTEMPT_ATTR, 1)
        study.enqueue_trial(params, user_attrs={ATTEMPT_ATTR: attempt})


def attempt(trial: optuna.Trial | FrozenTrial) -> int:
    """Which run of its configuration a trial is: 1, or more for a retry."""
    return int(trial.user_attrs.get(ATTEMPT_ATTR, 1))


# --- studies ---


def write_settings(study: optuna.Study, settings: dict[str, Any]) -> None:
    study.set_user_attr(SETTINGS_ATTR, settings)


def write_test_result(study: optuna.Study, record: dict[str, Any]) -> None:
    study.set_user_attr(TEST_ATTR, record)


def made_by_hpsearch(study: optuna.Study) -> bool:
    """A study is hpsearch's when it carries hpsearch's settings; any other is foreign, and hpsearch only reads it."""
    return isinstance(study.user_attrs.get(SETTINGS_ATTR), dict)


def claimable(study: optuna.Study) -> bool:
    """hpsearch's, or holding nothing at all yet: no attribute, no trial, one objective. Such an empty study
    is claimed, not refused: it may be one that another hpsearch process has just created."""
    return made_by_hpsearch(study) or (not study.user_attrs and len(study.directions) == 1
                                       and not study.get_trials(deepcopy=False))


def not_hpsearch(name: str, what: str) -> BadInput:
    """The one-line refusal of a foreign study; ``what``: what to do instead."""
    return BadInput(f"study '{name}' was not made by hpsearch; {what}")
