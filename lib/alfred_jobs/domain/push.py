"""Web Push: a browser's subscription, and what a push says (SPEC, "Notifications when the user is away")."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PushSubscription:
    """A browser's ``PushSubscription`` (its ``toJSON()``): where to send, and its keys (RFC 8291)."""

    endpoint: str
    p256dh: str  # the browser's ECDH public key, base64url
    auth: str    # the 16-byte authentication secret, base64url


@dataclass(frozen=True)
class PushMessage:
    """One push: a job ended or asks for input. The JSON payload is exactly these fields."""

    job_id: str
    status: str
    seq: int     # the event it is about: a push is sent at most once per (job, seq)
    title: str
    body: str

    def payload(self) -> dict[str, object]:
        return {"job_id": self.job_id, "status": self.status, "seq": self.seq, "title": self.title,
                "body": self.body}
