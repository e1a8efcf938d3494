"""The torture suite: churn soak, report hammer, stats-directory attacks and
settings fuzzing (issue 8). ``test_short.py`` runs a short version in
``make test``; ``benchmarks/torture.py`` (``make torture``) the long one."""
