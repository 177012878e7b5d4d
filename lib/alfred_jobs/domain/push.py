"""Web Push: a browser's subscription, and what a push says (SPEC, "Notifications when the user is away")."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Preview = Literal["none", "title", "full"]
# What a push says under ``preview="title"``: what happened, never what the reply or question says.
TITLES = {"complete": "Alfred finished", "waiting": "Alfred has a question",
          "failed": "Alfred could not finish", "cancelled": "Alfred stopped"}


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


def preview(message: PushMessage, level: Preview) -> PushMessage:
    """``message`` as ``ALFRED_PUSH_PREVIEW`` lets a lock screen show it: ``full`` as it is,
    ``title`` its status's title and no body, ``none`` "Alfred" and no body."""
    if level == "full":
        return message
    title = TITLES.get(message.status, "Alfred") if level == "title" else "Alfred"
    return replace(message, title=title, body="")
