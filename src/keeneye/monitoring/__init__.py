"""Metrics, drift, online quality and alerting: how an operator sees every pipeline behave.

Public modules: ``drift`` (PSI / KS / MMD windows), ``quality`` (online quality from feedback),
``summary`` (the monitoring page's numbers), ``stats`` (the tests themselves) and ``alerts``. The
Prometheus metric catalogue is ``keeneye.metrics`` (lowest floor: every process exports metrics).
"""

__all__ = ["alerts", "drift", "quality", "stats", "summary"]
