"""Notification channels: where the rules engine sends an alert (log, webhook, e-mail).

A channel is anything with a ``name`` and ``send(notification)``; ``send`` raises when delivery
failed (the engine records the failure and moves on to the next channel — one broken channel never
stops the others). Channels are configured in ``alerting.channels`` and ordered for escalation by
``alerting.route``.

The webhook body follows Alertmanager's webhook format (``status``, ``alerts[].labels``,
``annotations``, ``startsAt`` …) so receivers written for Alertmanager — chat bridges, incident
tools — accept keeneye's notifications unchanged; keeneye adds ``value``, ``level`` and ``kind``.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from typing import Any, Literal, Protocol

import httpx

from keeneye.domain import JsonObject
from keeneye.settings import AlertingSettings, ChannelSettings

log = logging.getLogger(__name__)

NotificationKind = Literal["firing", "escalated", "repeat", "resolved"]
# Alertmanager's "no end yet" timestamp.
_ZERO_TIME = "0001-01-01T00:00:00Z"


class ChannelError(Exception):
    """Delivery to one channel failed; the message says which channel and why."""


@dataclass(frozen=True)
class Notification:
    """One message about one alert, for one channel at one escalation level."""

    alert_id: int
    rule: str
    severity: str
    kind: NotificationKind
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    value: float | None
    starts_at: datetime
    ends_at: datetime | None
    level: int
    fingerprint: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> Literal["firing", "resolved"]:
        return "resolved" if self.kind == "resolved" else "firing"

    @property
    def summary(self) -> str:
        return str(self.annotations.get("summary") or self.rule)

    def subject(self) -> str:
        """``[FIRING:critical] WorkerSaturated species-id: …`` — one line for mail subjects and logs."""
        tag = self.status.upper() + ("" if self.kind in ("firing", "resolved") else f"/{self.kind}")
        return f"[{tag}:{self.severity}] {self.rule}: {self.summary}"

    def text(self) -> str:
        """A plain-text body a person can act on."""
        lines = [self.subject(), ""]
        if self.annotations.get("description"):
            lines += [str(self.annotations["description"]), ""]
        lines.append(f"alert:      #{self.alert_id} ({self.kind}, escalation level {self.level})")
        lines.append(f"severity:   {self.severity}")
        if self.value is not None:
            lines.append(f"value:      {format_value(self.value)}")
        lines.append(f"since:      {self.starts_at.isoformat()}")
        if self.ends_at is not None:
            lines.append(f"resolved:   {self.ends_at.isoformat()}")
        for key in sorted(self.labels):
            lines.append(f"label:      {key}={self.labels[key]}")
        if self.status == "firing":
            lines += ["", f"Acknowledge (stops escalation): keeneye alerts ack {self.alert_id}"]
        return "\n".join(lines) + "\n"

    def webhook_body(self, receiver: str) -> JsonObject:
        """Alertmanager's webhook shape (version 4) with one alert, plus keeneye's own fields."""
        labels: JsonObject = {"alertname": self.rule, "severity": self.severity, **self.labels}
        alert: JsonObject = {
            "status": self.status,
            "labels": labels,
            "annotations": {**self.annotations},
            "startsAt": _iso(self.starts_at),
            "endsAt": _iso(self.ends_at) if self.ends_at else _ZERO_TIME,
            "fingerprint": self.fingerprint,
            "value": self.value,
            "level": self.level,
            "kind": self.kind,
            "id": self.alert_id,
        }
        return {
            "version": "4",
            "receiver": receiver,
            "status": self.status,
            "groupKey": f"{self.rule}:{self.fingerprint}",
            "alerts": [alert],
            "groupLabels": {"alertname": self.rule},
            "commonLabels": labels,
            "commonAnnotations": {**self.annotations},
            "level": self.level,
            "kind": self.kind,
            **self.extra,
        }


def format_value(value: float) -> str:
    """How ``{{ $value }}`` and messages show a number: six significant digits."""
    return f"{value:.6g}"


def _iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


class Channel(Protocol):
    name: str

    def send(self, notification: Notification) -> None:
        """Deliver or raise (any exception counts as a failed attempt)."""


class LogChannel:
    """Writes the alert to keeneye's log (warning while firing, info when resolved)."""

    def __init__(self, name: str = "log") -> None:
        self.name = name

    def send(self, notification: Notification) -> None:
        level = logging.INFO if notification.status == "resolved" else logging.WARNING
        log.log(
            level,
            "%s",
            notification.subject(),
            extra={
                "alert_id": notification.alert_id,
                "rule": notification.rule,
                "labels": dict(notification.labels),
                "value": notification.value,
                "level": notification.level,
            },
        )


class WebhookChannel:
    """POSTs the Alertmanager-style JSON body to ``url``; any non-2xx answer is a failure."""

    def __init__(self, name: str, url: str, *, timeout: float = 5.0) -> None:
        self.name = name
        self.url = url
        self.timeout = timeout

    def send(self, notification: Notification) -> None:
        try:
            response = httpx.post(self.url, json=notification.webhook_body(self.name), timeout=self.timeout)
            response.raise_for_status()
        except httpx.HTTPStatusError as exc:
            raise ChannelError(
                f"webhook {self.name}: {self.url} answered {exc.response.status_code}"
            ) from exc
        except httpx.HTTPError as exc:
            raise ChannelError(
                f"webhook {self.name}: POST {self.url} failed: {exc or type(exc).__name__}"
            ) from exc


class EmailChannel:
    """Plain-text mail over SMTP (optionally STARTTLS and login)."""

    def __init__(
        self,
        name: str,
        *,
        host: str,
        port: int,
        sender: str,
        recipients: list[str],
        starttls: bool = False,
        user: str | None = None,
        password: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.sender = sender
        self.recipients = list(recipients)
        self.starttls = starttls
        self.user = user
        self.password = password
        self.timeout = timeout

    def message(self, notification: Notification) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = notification.subject()
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg["X-Keeneye-Alert"] = str(notification.alert_id)
        msg.set_content(notification.text())
        return msg

    def send(self, notification: Notification) -> None:
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.user:
                    smtp.login(self.user, self.password or "")
                smtp.send_message(self.message(notification))
        except (OSError, smtplib.SMTPException) as exc:
            raise ChannelError(
                f"email {self.name}: SMTP {self.host}:{self.port} failed: {exc or type(exc).__name__}"
            ) from exc


def build_channel(config: ChannelSettings) -> Channel:
    if config.kind == "log":
        return LogChannel(config.name)
    if config.kind == "webhook":
        assert config.url is not None  # ChannelSettings refuses a webhook without url
        return WebhookChannel(config.name, config.url, timeout=config.timeout_seconds)
    return EmailChannel(
        config.name,
        host=config.smtp_host,
        port=config.smtp_port,
        sender=config.sender,
        recipients=config.recipients,
        starttls=config.smtp_starttls,
        user=config.smtp_user,
        password=config.smtp_password.get_secret_value() if config.smtp_password else None,
        timeout=config.timeout_seconds,
    )


def build_channels(alerting: AlertingSettings) -> dict[str, Channel]:
    """Channel name → channel, for every entry of ``alerting.channels``."""
    return {c.name: build_channel(c) for c in alerting.channels}


__all__ = [
    "Channel",
    "ChannelError",
    "EmailChannel",
    "LogChannel",
    "Notification",
    "NotificationKind",
    "WebhookChannel",
    "build_channel",
    "build_channels",
    "format_value",
]
