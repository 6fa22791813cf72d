"""Python client for gantry: shared rate limits, a shared cache, SQL query
analysis, span ingestion and leases on global connection budgets, over gRPC.

    from gantry import Client
    with Client("gantry:7070") as client:
        with client.limiter("api", key=customer_id, wait=2.0):
            ...

Over TLS with a token: Client("gantry:7070", tls=Tls(ca_file="ca.crt"), token=...).
When gantry does not answer, limiters answer by their failure policy
(Client(..., failure_policy=FAIL_OPEN | FAIL_CLOSED | LOCAL)); see the README.
The generated stubs are in gantry.v1; gantry.aio has the asyncio client.
"""

from ._common import BatchingHint, Decision, GantryError, NotGranted, QueryStats, SlowQuery, Tls
from ._resilience import FAIL_CLOSED, FAIL_OPEN, LOCAL
from .client import Cache, Client, Lease, NearCache, QueryRecorder, RateLimiter

__all__ = [
    "BatchingHint", "Cache", "Client", "Decision", "FAIL_CLOSED", "FAIL_OPEN", "GantryError", "LOCAL", "Lease",
    "NearCache", "NotGranted", "QueryRecorder", "QueryStats", "RateLimiter", "SlowQuery", "Tls",
]
