"""Search: the only Optuna-aware stage. Ask a batch -> an objective trains it -> tell.

run        ``run_search``, the entry point: in this process, or in ``--jobs`` worker processes
runner     the loop in one process: enqueue a grid or ask in batches, train, tell, resume
samplers   Optuna samplers seeded by trial (same values whichever worker asks), and pruners
records    the stored-trial format: the only module that writes a trial's user attributes
jobs       ``--jobs N``: worker processes on one machine, one progress bar, one Ctrl-C
workers    who runs which trial, and whether that worker is still alive
"""
