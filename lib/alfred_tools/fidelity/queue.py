"""SQS's semantics that moto lacks, as a model of receipt handles.

AWS deletes a message only with the receipt handle of its most recent receive; a delete with a
handle superseded by a later receive of the same message succeeds without deleting it (moto
deletes with any handle it ever issued). ``_Receipts`` keeps which message each handle is for and
each message's newest handle, so ``superseded`` can say so. The other at-least-once behaviours
(duplicate delivery, a lost delete) are single draws against the spec's rates, made where the
proxy handles the call (``sqs.py``). No HTTP here.
"""

from __future__ import annotations

from alfred_tools.fidelity.basics import _Lru


class _Receipts:
    """Receipt handle -> message id, and message id -> its newest receipt handle; each bounded,
    the least recently given forgotten first. Not locked: the caller holds its own lock."""

    def __init__(self, cap: int = 200_000) -> None:
        self._handles = _Lru(cap)  # receipt handle -> message id
        self._latest = _Lru(cap)  # message id -> newest receipt handle

    def received(self, handle: str, message_id: str) -> None:
        """A receive gave ``message_id`` under ``handle``: its newest handle now."""
        self._handles.put(handle, message_id)
        self._latest.put(message_id, handle)

    def superseded(self, handle: str) -> bool:
        """Whether a later receive of the same message has replaced ``handle``."""
        mid = self._handles.get(handle)
        return mid is not None and self._latest.get(mid) not in (None, handle)
