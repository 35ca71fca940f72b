"""``fastmetrics bench``: a quick interleaved benchmark, no pytest needed.

Modules, one job each: :mod:`.timing` (loops, batches, calibration),
:mod:`.subjects` (the candidates and what they are called on, pycti's loader),
:mod:`.ops` (the measured operations), :mod:`.run` (the interleaved rounds),
:mod:`.report` (statistics, the table, the plot), :mod:`.docs` (the generated
blocks of the docs, ``--update-docs``), :mod:`.cli` (the command).
The pytest-benchmark suite in ``bench/`` reuses the first four and the table.
"""

PROG = "fastmetrics bench"
