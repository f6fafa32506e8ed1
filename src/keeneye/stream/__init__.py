"""Message bus (SQLite embedded default, Kafka scaled) and, later, the stream workers."""

from keeneye.stream.bus import Bus, Consumer, Message, open_bus

__all__ = ["Bus", "Consumer", "Message", "open_bus"]
