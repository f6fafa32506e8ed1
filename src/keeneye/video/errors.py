"""Why a video is refused, as one typed exception the API and the plugin processes map once.

:class:`VideoRejected` is an :class:`~keeneye.domain.InvalidInput`: ``reason`` is a stable code the
API answers with its ``status`` and a worker records as the ``rejected`` reason; the CLI prints the
message and the fix and exits non-zero. :class:`VideoLimits` carries the seed's pilot limits (24 h,
25 GB) so that callers (CLI, API, tests) pass the limits they were configured with.
"""

from __future__ import annotations

from dataclasses import dataclass

from keeneye.domain import InvalidInput

GB = 1000**3
DAY_SECONDS = 24 * 3600.0

# Stable reasons (also the vocabulary of docs/smartcut.md → "Refusals").
VIDEO_NOT_FOUND = "video_not_found"
NOT_A_VIDEO = "not_a_video"
CORRUPT_VIDEO = "corrupt_video"
NO_VIDEO_STREAM = "no_video_stream"
EMPTY_VIDEO = "empty_video"
VIDEO_TOO_LONG = "video_too_long"
VIDEO_TOO_LARGE = "video_too_large"
BAD_CHUNK = "bad_chunk"
BAD_SENSITIVITY = "bad_sensitivity"
UNKNOWN_PLUGIN = "unknown_plugin"
UNKNOWN_CLASS = "unknown_class"
BAD_OPTIONS = "bad_options"
BAD_SEGMENTS = "bad_segments"
BAD_GROUND_TRUTH = "bad_ground_truth"


class VideoRejected(InvalidInput):
    """A video, a chunk or a smartcut request that cannot be processed; ``reason`` says which check."""


@dataclass(frozen=True)
class VideoLimits:
    """What a single video may be: the seed's pilot limits by default (≤ 24 h, ≤ 25 GB)."""

    max_duration_seconds: float = DAY_SECONDS
    max_bytes: int = 25 * GB
