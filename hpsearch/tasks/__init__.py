"""Tasks: what is trained. A model factory and the train / validation / test tensors.

task       what a task is (``hpsearch.Task``), the MLP builder, checks of a model
builtin    the built-in tasks (digits, mnist1d, ...) and ``load_task``, the one way in
user       users' own tasks: a plug-in task function, or a data file
mnist1d    MNIST-1D generated with numpy (nothing is downloaded)
data/      the digits split shipped with the package
"""
