"""Pieces of the optimizer benchmark, ``benchmarks/bench_optimizer.py`` (its entry point).

The script puts its own folder on ``sys.path``, so these modules are imported as
``optbench.<module>`` and import ``plain_xsam`` from that folder. The layout is described in
the script's docstring.
"""
