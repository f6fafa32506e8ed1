"""Alert rules (YAML), the embedded rules engine, notification channels and the Prometheus export.

One module a job: ``rules`` (the rule file and its kinds), ``engine`` (evaluation, states, escalation),
``channels`` (notifications), ``source`` (where metric values come from), ``store`` (alerts, silences),
``promql`` (rules as PromQL), ``promtool`` (rule unit tests), ``alertmanager`` (the example routing),
``grafana`` (dashboards) and ``export`` (writes the Prometheus files). Import from those modules.
"""

__all__ = [
    "alertmanager",
    "channels",
    "engine",
    "export",
    "grafana",
    "promql",
    "promtool",
    "rules",
    "source",
    "store",
]
