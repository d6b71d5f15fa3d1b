"""``autoweld-bench``: latency per stage of the runtime against the plain PyTorch way.

Modules: :mod:`~autoweld.bench.stats` (percentiles), :mod:`~autoweld.bench.sink` (ledger +
PLC stages, loopback PLC), :mod:`~autoweld.bench.runner` (the measurement),
:mod:`~autoweld.bench.report` (Markdown table and plot), :mod:`~autoweld.bench.coldstart` (the
cold-start child process) and :mod:`~autoweld.bench.torch_way` (the plain PyTorch way).

This package imports nothing on import, and only ``torch_way`` imports torch: the runtime side
of the benchmark (and its cold-start child) never loads it.
"""
