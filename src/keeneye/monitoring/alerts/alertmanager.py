"""The example Alertmanager configuration written beside the exported rules (``alertmanager.yml``).

It mirrors the embedded engine's routing (severity, repeat, escalation, inhibition); ``amtool check-config``
accepts it in CI.
"""

from __future__ import annotations

ALERTMANAGER_FILE = "alertmanager.yml"

# --------------------------------------------------------------------------------------------------
# Alertmanager example
# --------------------------------------------------------------------------------------------------

ALERTMANAGER_EXAMPLE = """\
# EXAMPLE Alertmanager configuration for keeneye's exported rules (keeneye-rules.yaml).
# Written by `keeneye alerts export --prometheus DIR`; copy it and adapt it: the webhook URLs below
# are EXAMPLE URLs on example.invalid and must be replaced by your chat / paging endpoints.
#
# It mirrors the embedded engine (KEENEYE_ALERTING__*):
# - severity routing: warning and info go to the team channel, critical to on-call;
# - repeat: a still-firing alert is re-sent every 4h (alerting.repeat_minutes = 240), critical every 1h;
# - escalation: the engine escalates an unacknowledged critical alert after 15 minutes. Here the
#   escalation is a rule: WorkerLoadCritical is WorkerLoadHigh held for 15m instead of 5m, with
#   severity critical, so it pages on-call. The inhibit rule then mutes the warning of the same
#   `group` label, pipeline and replica kind (WorkerLoadHigh while WorkerLoadCritical or
#   WorkerSaturated fires for the same kind: stream or api), so nobody is told twice.
global:
  resolve_timeout: 5m
route:
  receiver: keeneye-team
  group_by: [alertname, pipeline]
  group_wait: 30s
  group_interval: 5m
  repeat_interval: 4h
  routes:
    - receiver: keeneye-oncall
      matchers: ['severity="critical"']
      group_wait: 10s
      repeat_interval: 1h
    - receiver: keeneye-team
      matchers: ['severity=~"warning|info"']
      repeat_interval: 4h
inhibit_rules:
  # Only criticals that carry a `group` label mute: Alertmanager treats a label missing on both
  # sides as equal, so without `group=~".+"` QualityDrop would mute every group-less warning.
  - source_matchers: ['severity="critical"', 'group=~".+"']
    target_matchers: ['severity="warning"']
    equal: [group, pipeline, kind]
receivers:
  - name: keeneye-team
    webhook_configs:
      - url: https://chat.example.invalid/hooks/keeneye-team  # EXAMPLE URL: replace
        send_resolved: true
  - name: keeneye-oncall
    webhook_configs:
      - url: https://pager.example.invalid/hooks/keeneye-oncall  # EXAMPLE URL: replace
        send_resolved: true
"""
