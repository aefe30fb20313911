"""Plots: what the importance plot says when the importances cannot be told. (The PNGs themselves: test_report.py.)"""
from __future__ import annotations

import optuna

from hpsearch.report.plots import importance


def test_importance_says_so_in_a_sentence_when_it_cannot_be_told():
    distributions = {"lr": optuna.distributions.FloatDistribution(1e-3, 1e-1)}
    study = optuna.create_study(study_name="one", direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.01}, distributions=distributions, value=0.5))
    assert importance(study).shares == {} and "too few" in importance(study).sentence
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.1}, distributions=distributions, value=0.5))
    assert importance(study).shares == {} and "scored the same" in importance(study).sentence
