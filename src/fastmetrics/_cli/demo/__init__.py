"""``fastmetrics demo``: a simulated OpenCTI ingestion connector with live metrics.

Modules, one job each: :mod:`.connector` (the workers and what they call on
the handler), :mod:`.check` (reading the exposition back and comparing it with
the workers' own counts), :mod:`.display` (status line, summary, log, JSON
report), :mod:`.cli` (the command).
"""

PROG = "fastmetrics demo"
