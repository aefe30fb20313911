"""The recipe's steps beside the pipeline: they call into it.

check      sanity checks before a search (initial loss, overfit one batch, step timings)
estimate   what a search would train, and how long it would take
refine     the next, finer search around the best configurations of earlier studies
test       the chosen configuration, trained again, evaluated once on the test split
"""
