"""SWE-bench runs: datasets, instance images, the batch runner, evaluation, reports.

Imported as `cwm_agent.swebench`; every module here imports the official
harness by its absolute name (`swebench.harness...`), which this package
never shadows.
"""
