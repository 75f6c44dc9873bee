"""hostagent benchmarks: each figure side by side with its reference.

Run ``make bench`` (or ``.venv/bin/python -m tests.bench``).  Every figure is
measured in the same run as its reference, on this machine, so the ratio
means something even where the absolute numbers vary from host to host.
``--smoke`` runs every figure with tiny sizes; ``make check`` does that so
this code cannot rot, and never looks at the timings.
"""
