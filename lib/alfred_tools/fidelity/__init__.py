"""Faithful mode: an HTTP proxy in front of moto server that behaves like AWS where moto is kinder.

Why it exists. moto answers every read strongly consistently, never deletes TTL-expired items,
never loses the answer to a write it applied, never throttles, and enforces no IAM. Code that
only ever runs against moto can come to depend on guarantees AWS does not give, and no test
would notice. This proxy sits between every boto3 client (API, workers, sweeper, tests) and a
moto server, and puts back what AWS really does. Every random choice is drawn from a seed
(``seed=N``), so a run can be replayed (per operation; which thread draws the n-th decision
can vary under concurrency).

1. Eventually consistent reads are stale. The proxy watches every write that passes through
   it (PutItem, UpdateItem, DeleteItem, BatchWriteItem, TransactWriteItems) and keeps, per
   (table, primary key), a short history of versions with the time each appeared. A read
   with ``ConsistentRead`` false or absent (GetItem, BatchGetItem, Query, Scan; a query on a
   global secondary index is always eventually consistent) sees each key as it was at
   ``now - lag``, lag uniform in [0, stale_ms] drawn per request: an item created less than
   lag ago is absent, an updated one comes back as its older version, a recently deleted one
   is still returned by GetItem/BatchGetItem. Query/Scan results are mapped item by item
   through the same view (the older version is kept only if it still satisfies the key
   condition and filter). Consistent reads are never stale.
2. TTL deletes late and in any order. A background thread learns each table's TTL attribute,
   looks for items whose TTL is in the past, and deletes each after its own random delay in
   ``ttl_delay`` seconds, so the items of one job disappear late and one by one (the job
   record before its events, some events before others). Until then reads return them, as
   DynamoDB does; the deletions enter the history, so stale reads may still see them.
3. Ambiguous writes. A PutItem, UpdateItem, DeleteItem, SendMessage, DeleteMessage(Batch) or
   ChangeMessageVisibility(Batch) is applied upstream and then its answer is lost (HTTP 500,
   or the connection is closed) *before* the SDK's retry loop: botocore sends it again, and
   the caller sees the outcome of the retry, e.g. ConditionalCheckFailedException on its own
   conditional write, or a message sent twice.
4. Throttling and 5xx, not forwarded: DynamoDB ProvisionedThroughputExceededException /
   ThrottlingException (400) and InternalServerError (500); SQS RequestThrottled /
   ThrottlingException (400) and InternalError (500) / ServiceUnavailable (503), in the JSON
   error shape botocore parses (``__type``, ``x-amzn-query-error`` for SQS).
5. SQS is at-least-once. Duplicate delivery: after a ReceiveMessage, a message is made
   visible again at once (ChangeMessageVisibility 0 upstream), so another consumer receives
   it while the first still holds it. Lost delete: a DeleteMessage (or a batch entry) is
   answered success but never applied, so the message comes back after its visibility
   timeout. Superseded receipt handles: once a message has been received again, a delete
   with an older receipt handle succeeds without deleting it (AWS documents that the most
   recent handle must be used; moto deletes with any handle it ever issued).

Random faults (kinds 3-5) are bounded: the same request (botocore's invocation id) fails at
most twice in a row, so the SDK's retries settle; scripted faults are exact and unbounded.
Principals (access key ids) listed in ``exempt`` never get random or unnamed scripted faults;
stale reads and TTL apply to everyone.

Run ``python -m alfred_tools.fidelity --upstream http://127.0.0.1:PORT [--port N] [--spec SPEC]``
or :func:`start_fidelity_proxy`. The spec (``--spec`` or ``ALFRED_FIDELITY_SPEC``) is a
``;``-separated list, e.g. ``aws;seed=7;stale_ms=200;ambiguous.UpdateItem=0.1`` (see
:class:`FidelitySpec`). Control endpoints live under ``/_fidelity/`` (health, calls, script,
config, stats).

Not reproduced: IAM (any credentials work); capacity (throttles are random, not load-driven);
partial batch failures (UnprocessedItems, Failed entries) and transaction conflicts; in
Query/Scan, an item the current state no longer matches but an older version did (a recent
delete, a changed sort key): the proxy only re-maps the items moto returned, it adds none;
staleness of writes that bypass the proxy. Time is compressed: AWS deletes expired items
within days, not seconds, and a lost answer here is immediate, not a read timeout.

The modules, from the bottom up (each one's docstring says more):

- the semantics, with no HTTP in them (what an in-process simulator could reuse): ``basics``
  (seeded draws, a bounded map), ``spec`` (the spec and its profiles; which random fault a draw
  gives an operation), ``expressions`` (DynamoDB's condition language and projections),
  ``store`` (tables and keys, each key's version history, what an eventually consistent read
  sees at a given moment, TTL's late deletions), ``queue`` (SQS receipt handles, superseded);
- the proxy: ``wire`` (calls and replies; the principal and region from the SigV4 credential
  scope; HTTP to moto), ``faults`` (random and scripted faults, their error replies),
  ``dynamodb`` and ``sqs`` (each service's calls through the proxy), ``proxy`` (``Fidelity``:
  one call in, its reply out; the control API);
- running it: ``front`` (the HTTP server; ``python -m alfred_tools.fidelity``), ``client``
  (``start_fidelity_proxy`` and ``FidelityProxy``, what tests use).
"""

from alfred_tools.fidelity.client import FidelityProxy, start_fidelity_proxy
from alfred_tools.fidelity.spec import FidelitySpec, FidelitySpecError

__all__ = ["FidelityProxy", "FidelitySpec", "FidelitySpecError", "start_fidelity_proxy"]
