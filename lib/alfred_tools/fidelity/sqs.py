"""SQS through the proxy: at-least-once delivery put back around moto's answers.

``_Sqs`` makes a received message visible again at once (a duplicate delivery, at the spec's
``sqs_duplicate`` rate or by a scripted ``duplicate``), answers a DeleteMessage (or a batch entry)
success without applying it (a lost delete), and ignores a delete whose receipt handle a later
receive superseded (``queue._Receipts``), as AWS does and moto does not.
"""

from __future__ import annotations

import threading

from alfred_tools.fidelity.basics import JsonDict, _Draws
from alfred_tools.fidelity.faults import _Faults
from alfred_tools.fidelity.queue import _Receipts
from alfred_tools.fidelity.spec import FidelitySpec
from alfred_tools.fidelity.wire import _Call, _json_reply, _Reply, _rewritten, _Upstream


class _Sqs:
    """The proxy's SQS: the receipt handles it has seen given out, and a count of the deletes it
    ignored for a superseded handle (the faults it injects are counted by ``_Faults``)."""

    def __init__(self, upstream: _Upstream, draws: _Draws, faults: _Faults) -> None:
        self.upstream = upstream
        self._draws = draws
        self._faults = faults
        self._lock = threading.Lock()
        self._receipts = _Receipts()
        self._stale_receipts = 0

    def handle(self, call: _Call, spec: FidelitySpec, fault: str | None) -> _Reply:
        """An SQS call (``fault``: what was injected before it, e.g. ``lost_delete``), at least once."""
        op, p = call.action, call.payload
        if op == "DeleteMessage":
            if fault == "lost_delete" or self._stale_receipt(spec, str(p.get("ReceiptHandle", ""))):
                return _json_reply(200, {}, "sqs")
            return self.upstream.forward(call)
        if op == "DeleteMessageBatch":
            return self._delete_batch(call, spec, fault)
        reply = self.upstream.forward(call)
        if op == "ReceiveMessage" and reply.status == 200:
            self._received(call, spec, reply)
        return reply

    def _delete_batch(self, call: _Call, spec: FidelitySpec, fault: str | None) -> _Reply:
        p = call.payload
        keep: list[JsonDict] = []
        dropped: list[str] = []
        lost = 0
        for entry in p.get("Entries") or []:
            is_lost = fault == "lost_delete" or (
                call.principal not in spec.exempt
                and self._draws.next("lost:DeleteMessageBatch") < spec.rate("sqs_lost_delete", "DeleteMessageBatch"))
            if is_lost or self._stale_receipt(spec, str(entry.get("ReceiptHandle", ""))):
                dropped.append(str(entry.get("Id")))
                lost += is_lost
            else:
                keep.append(entry)
        if lost and fault != "lost_delete":
            self._faults._count("lost_delete", "DeleteMessageBatch", lost)
        if not dropped:
            return self.upstream.forward(call)
        if not keep:
            return _json_reply(200, {"Successful": [{"Id": i} for i in dropped], "Failed": []}, "sqs")
        reply = self.upstream.forward(call, {**p, "Entries": keep})
        if reply.status != 200:
            return reply
        data = reply.json()
        data["Successful"] = list(data.get("Successful") or []) + [{"Id": i} for i in dropped]
        data.setdefault("Failed", [])
        return _rewritten(reply, data)

    def _stale_receipt(self, spec: FidelitySpec, handle: str) -> bool:
        """A delete with a receipt handle superseded by a later receive of the same message."""
        rate = spec.rate("sqs_stale_receipt", "DeleteMessage")
        if rate <= 0:
            return False
        with self._lock:
            stale = self._receipts.superseded(handle)
        if stale and self._draws.next("stale_receipt") < rate:
            with self._lock:
                self._stale_receipts += 1
            return True
        return False

    def _received(self, call: _Call, spec: FidelitySpec, reply: _Reply) -> None:
        messages = reply.json().get("Messages") or []
        if not messages:
            return
        with self._lock:
            for m in messages:
                self._receipts.received(str(m.get("ReceiptHandle", "")), str(m.get("MessageId", "")))
        scripted = self._faults._scripted(call, spec, frozenset({"duplicate"})) is not None
        rate = 0.0 if call.principal in spec.exempt else spec.rate("sqs_duplicate", "ReceiveMessage")
        for m in messages:
            if scripted or (rate > 0 and self._draws.next("duplicate") < rate):
                status, _ = self.upstream.call("sqs", call.region, call.principal, "ChangeMessageVisibility",
                                               {"QueueUrl": call.payload.get("QueueUrl"),
                                                "ReceiptHandle": m.get("ReceiptHandle"), "VisibilityTimeout": 0})
                if status == 200:
                    self._faults._count("duplicate", "ReceiveMessage")

    def counts(self) -> JsonDict:
        with self._lock:
            return {"stale_receipt_deletes_ignored": self._stale_receipts}

    def reset_counts(self) -> None:
        with self._lock:
            self._stale_receipts = 0
