"""Message bus (SQLite embedded default, Kafka scaled), ingestion, stream workers, reconciler."""

from keeneye.stream.bus import Bus, Consumer, Message, open_bus
from keeneye.stream.ingest import Accepted, Ingestor, IngestUnavailable
from keeneye.stream.messages import (
    MalformedMessage,
    ObservationMessage,
    dlq_topic,
    input_topic,
    output_topic,
    parse_observation,
)
from keeneye.stream.reconciler import Reconciler, ReconcileReport
from keeneye.stream.worker import DEFAULT_GROUP, PipelineWorker, status_dir

__all__ = [
    "DEFAULT_GROUP",
    "Accepted",
    "Bus",
    "Consumer",
    "IngestUnavailable",
    "Ingestor",
    "MalformedMessage",
    "Message",
    "ObservationMessage",
    "PipelineWorker",
    "ReconcileReport",
    "Reconciler",
    "dlq_topic",
    "input_topic",
    "open_bus",
    "output_topic",
    "parse_observation",
    "status_dir",
]
