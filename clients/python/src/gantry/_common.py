"""What the sync and asyncio clients share: retry policy, conversions, errors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

from google.protobuf import duration_pb2

# gRPC's own retries (a service config), on UNAVAILABLE only: gantry
# restarting or a connection reset; every other code is an answer.
RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)

CHANNEL_OPTIONS = [
    ("grpc.enable_retries", 1),
    ("grpc.service_config", RETRY_SERVICE_CONFIG),
    ("grpc.keepalive_time_ms", 30_000),
]


class NotGranted(Exception):
    """A wait for tokens or lease units ran out before they were granted."""

    def __init__(self, message: str, retry_after: Optional[float] = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Decision:
    """A rate-limit answer; durations in seconds."""

    allowed: bool
    remaining: int
    retry_after: float
    reset_after: float
    waited: float


def duration(seconds: Optional[float]) -> Optional[duration_pb2.Duration]:
    if seconds is None or seconds <= 0:
        return None
    d = duration_pb2.Duration()
    d.FromTimedelta(timedelta(seconds=seconds))
    return d


def seconds(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


def decision(resp) -> Decision:
    return Decision(
        allowed=resp.allowed,
        remaining=resp.remaining,
        retry_after=seconds(resp.retry_after),
        reset_after=seconds(resp.reset_after),
        waited=seconds(resp.waited),
    )
