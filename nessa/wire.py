"""gRPC metadata keys the client and the daemon agree on (besides ``authorization``)."""

from __future__ import annotations

__all__ = ["CLIENT_METADATA", "RETRY_METADATA"]

#: Sent by a client to be told apart from other clients at the same address (the per-client stream limit).
CLIENT_METADATA = "x-nessa-client"
#: Trailing metadata the daemon sets on a RESOURCE_EXHAUSTED that goes away by itself (the daemon is busy):
#: clients retry those with backoff, and not limits that a retry cannot change (a proxy too large).
RETRY_METADATA = "x-nessa-retry"
