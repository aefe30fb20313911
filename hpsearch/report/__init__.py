"""Report: read the storage, rank, render. Never imports torch.

results    one pandas row per trial, ranked; the curve diagnosis
render     the terminal table, CSV / Markdown / JSON / HTML files, the live progress bar
plots      PNG plots: loss curves, the metric against the learning rate, importances
"""
