"""The search loop's promise under a stop: wherever Ctrl-C or SIGTERM lands, no trial is left RUNNING."""
from __future__ import annotations

import signal

import pytest
from optuna.trial import TrialState

from hpsearch.errors import Interrupted
from hpsearch.search.run import run_search
from hpsearch.search.runner import Strategy
from hpsearch.search.samplers import TrialSeededRandom
from hpsearch.signals import Stop
from hpsearch.spec import build_spec

from helpers import plain_study


class _StopsWhileSampling(TrialSeededRandom):
    """A sampler that is stopped after its first trial's values were drawn: between asking a batch and training it."""

    def __init__(self, seed: int, stop: KeyboardInterrupt) -> None:
        super().__init__(seed)
        self.stop = stop

    def sample_independent(self, study, trial, param_name, param_distribution):  # noqa: ANN001, ANN201
        if trial.number == 1:
            raise self.stop
        return super().sample_independent(study, trial, param_name, param_distribution)


@pytest.mark.parametrize(("stop", "code"), [(KeyboardInterrupt(), 130), (Stop(signal.SIGTERM), 143)])
def test_a_stop_between_asking_and_training_leaves_no_trial_running(workdir, stop, code):
    spec = build_spec("random", trials=4, epochs=1, study="s")
    strategy = Strategy(sampler=lambda spec: _StopsWhileSampling(spec.seed, stop), random_batch=4)
    with pytest.raises(Interrupted) as caught:
        run_search(spec, strategy=strategy)
    assert caught.value.exit_code == code
    assert "4 running trial(s) recorded as interrupted and queued again" in str(caught.value)
    trials = plain_study("s").get_trials(deepcopy=False)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert sum(t.user_attrs.get("outcome") == "interrupted" for t in trials) == 4
