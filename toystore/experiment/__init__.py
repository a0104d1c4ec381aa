"""The spec's evaluation, reproduced on a local cluster (issue 7): ``./scripts/experiment``.

:mod:`~toystore.experiment.runner` starts clusters and runs loads and a leader kill,
:mod:`~toystore.experiment.report` turns the figures into tables (pure),
:mod:`~toystore.experiment.plots` draws them, ``__main__`` wires them to a folder.
"""
