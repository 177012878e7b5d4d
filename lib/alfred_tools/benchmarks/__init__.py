"""The scenarios of ``alfred-jobs bench`` (see bench/README.md); ``alfred_tools.bench`` runs them.

They live inside the package, not only in the repository's ``bench/`` folder, because the
installed ``alfred-jobs`` command imports them and starts some of them as child processes
(``python -m alfred_tools.benchmarks.serve`` and friends), which must work from any directory.
"""
