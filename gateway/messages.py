"""Messages only the gateway writes. JSON, because people read the dead-letter stream."""

from __future__ import annotations

from typing import Literal

import msgspec

from proto.messages import PaymentJob

# The PSP calls the gateway makes (retry and metrics label; a dead letter names the failed one).
PspStep = Literal["authorize", "capture", "void", "refund", "search", "retrieve"]
# Why the gateway stopped retrying a step.
GiveUpReason = Literal["retry_budget_exhausted", "expired_while_retrying", "psp_rejected"]


class DeadLetter(msgspec.Struct, frozen=True):
    """A payment job the gateway gave up on; its reservation was released as payment_failed."""

    job: PaymentJob
    reason: GiveUpReason
    step: PspStep  # authorize or capture: the steps a job gives up on
    error: str
    attempts: int
    at_ms: int


encode_deadletter = msgspec.json.Encoder().encode
deadletter_decoder = msgspec.json.Decoder(DeadLetter)
