"""Alert rules (YAML), the embedded rules engine, notification channels and the Prometheus export."""
