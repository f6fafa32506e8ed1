"""Metrics, drift, online quality and alerting: how an operator sees every pipeline behave."""
