"""Notification channels against real receivers: an HTTP server and an SMTP server on loopback."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from keeneye.monitoring.alerts.channels import (
    ChannelError,
    EmailChannel,
    LogChannel,
    Notification,
    WebhookChannel,
    build_channels,
)
from keeneye.settings import AlertingSettings, ChannelSettings
from tests.services import free_port
from tests.unit.monitoring.alert_support import smtp_receiver, webhook_receiver

STARTED = datetime(2026, 5, 4, 12, 30, tzinfo=UTC)


def note(kind: str = "firing", **extra: object) -> Notification:
    fields: dict[str, object] = {
        "alert_id": 42,
        "rule": "WorkerLoadHigh",
        "severity": "warning",
        "kind": kind,
        "labels": {"pipeline": "species-id", "stat": "max"},
        "annotations": {"summary": "species-id: a replica is busy", "description": "Busiest at 0.91."},
        "value": 0.91,
        "starts_at": STARTED,
        "ends_at": datetime(2026, 5, 4, 13, 0, tzinfo=UTC) if kind == "resolved" else None,
        "level": 1,
        "fingerprint": "ab" * 32,
        **extra,
    }
    return Notification(**fields)  # type: ignore[arg-type]


def test_webhook_posts_an_alertmanager_shaped_body() -> None:
    with webhook_receiver() as hook:
        WebhookChannel("ops", hook.url).send(note())
        WebhookChannel("ops", hook.url).send(note("resolved"))
    firing, resolved = hook.bodies
    assert firing["version"] == "4" and firing["receiver"] == "ops" and firing["status"] == "firing"
    [alert] = firing["alerts"]
    assert alert["labels"] == {
        "alertname": "WorkerLoadHigh",
        "severity": "warning",
        "pipeline": "species-id",
        "stat": "max",
    }
    assert alert["annotations"]["summary"] == "species-id: a replica is busy"
    assert alert["startsAt"] == "2026-05-04T12:30:00Z" and alert["endsAt"] == "0001-01-01T00:00:00Z"
    assert (alert["value"], alert["level"], alert["id"], firing["level"]) == (0.91, 1, 42, 1)
    assert resolved["status"] == "resolved" and resolved["alerts"][0]["endsAt"] == "2026-05-04T13:00:00Z"


def test_webhook_error_answer_and_refused_connection_raise_a_clear_error() -> None:
    with (
        webhook_receiver(status=500) as hook,
        pytest.raises(ChannelError, match=r"webhook ops: .* answered 500"),
    ):
        WebhookChannel("ops", hook.url).send(note())
    closed = f"http://127.0.0.1:{free_port()}/hook"
    with pytest.raises(ChannelError, match=r"webhook ops: POST http://127.0.0.1:\d+/hook failed"):
        WebhookChannel("ops", closed, timeout=2).send(note())


def test_email_sends_a_plain_text_message() -> None:
    with smtp_receiver() as smtp:
        EmailChannel(
            "mail", host=smtp.host, port=smtp.port, sender="keeneye@plant.example",
            recipients=["a@plant.example", "b@plant.example"],
        ).send(note())  # fmt: skip
    [msg] = smtp.messages
    assert smtp.recipients == [["a@plant.example", "b@plant.example"]]
    assert msg["Subject"] == "[FIRING:warning] WorkerLoadHigh: species-id: a replica is busy"
    assert msg["From"] == "keeneye@plant.example" and msg["X-Keeneye-Alert"] == "42"
    assert msg.get_content_type() == "text/plain"
    body = msg.get_payload(decode=True).decode()
    assert "Busiest at 0.91." in body
    assert "value:      0.91" in body and "label:      pipeline=species-id" in body
    assert "keeneye alerts ack 42" in body


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
def test_email_login_is_used_and_a_wrong_password_fails() -> None:
    with smtp_receiver(user="alerts", password="s3cret") as smtp:
        good = EmailChannel(
            "mail", host=smtp.host, port=smtp.port, sender="k@x.example", recipients=["o@x.example"],
            user="alerts", password="s3cret",
        )  # fmt: skip
        good.send(note())
        bad = EmailChannel(
            "mail", host=smtp.host, port=smtp.port, sender="k@x.example", recipients=["o@x.example"],
            user="alerts", password="wrong",
        )  # fmt: skip
        with pytest.raises(ChannelError, match=r"email mail: SMTP 127.0.0.1:\d+ failed"):
            bad.send(note())
    assert len(smtp.messages) == 1


def test_email_to_a_closed_port_raises() -> None:
    channel = EmailChannel(
        "mail",
        host="127.0.0.1",
        port=free_port(),
        sender="k@x.example",
        recipients=["o@x.example"],
        timeout=2,
    )
    with pytest.raises(ChannelError, match=r"email mail: SMTP 127\.0\.0\.1"):
        channel.send(note())


def test_log_channel_logs_firing_as_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="keeneye.monitoring.alerts.channels"):
        LogChannel().send(note())
        LogChannel().send(note("resolved"))
    firing, resolved = caplog.records
    assert firing.levelno == logging.WARNING and "[FIRING:warning] WorkerLoadHigh" in firing.getMessage()
    assert resolved.levelno == logging.INFO and resolved.getMessage().startswith("[RESOLVED:warning]")


def test_build_channels_from_settings() -> None:
    alerting = AlertingSettings(
        channels=[
            ChannelSettings(name="log", kind="log"),
            ChannelSettings(name="hook", kind="webhook", url="http://127.0.0.1:9/x", timeout_seconds=1.5),
            ChannelSettings(
                name="mail", kind="email", smtp_host="mail.example", smtp_port=587, smtp_starttls=True,
                smtp_user="u", smtp_password="p", recipients=["o@x.example"],
            ),
        ],
        route=["hook", "mail"],
    )  # fmt: skip
    channels = build_channels(alerting)
    assert isinstance(channels["log"], LogChannel)
    hook = channels["hook"]
    assert isinstance(hook, WebhookChannel) and hook.timeout == 1.5
    mail = channels["mail"]
    assert isinstance(mail, EmailChannel)
    assert (mail.host, mail.port, mail.starttls, mail.user, mail.password) == (
        "mail.example",
        587,
        True,
        "u",
        "p",
    )
