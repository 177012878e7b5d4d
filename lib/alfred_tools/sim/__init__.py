"""A deterministic simulation of the whole protocol, in virtual time, on AWS's semantics.

``kernel`` (virtual time, greenlet tasks, processes that crash and pause; the runtime's
``Clock`` and ``Tasks`` ports over them), ``store`` and ``queue`` (DynamoDB's and SQS's timing,
faults and staleness over the in-memory fakes' conditions), ``agent`` (Alfred's shape, scripted
per job), ``world`` (one history: the processes, the users, the chaos), ``invariants`` (what must
hold), ``history`` (running seeds), ``cli`` (``alfred-jobs sim``). docs/testing.md explains how
to add an actor, a fault or an invariant, and how to replay a seed.
"""
