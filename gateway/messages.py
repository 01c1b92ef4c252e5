"""Messages only the gateway writes. JSON, because people read the dead-letter stream."""

from __future__ import annotations

import msgspec

from proto.messages import PaymentJob


class DeadLetter(msgspec.Struct, frozen=True):
    """A payment job the gateway gave up on; its reservation was released as payment_failed."""

    job: PaymentJob
    reason: str  # "retry_budget_exhausted" | "expired_while_retrying" | "psp_rejected"
    step: str  # "authorize" | "capture"
    error: str
    attempts: int
    at_ms: int


encode_deadletter = msgspec.json.Encoder().encode
deadletter_decoder = msgspec.json.Decoder(DeadLetter)
