"""alfred-jobs: durable background execution for the Alfred agent — the runtime.

This package is what ships: the Lambda layer and the stream image contain it and its
dependencies, nothing else. Layers, each importing only those below it (import-linter checks):

    entry/        the Lambda handlers, the FastAPI apps, the composition root (wiring)
    adapters/ agents/   DynamoDB, SQS, Secrets Manager; the agents (demo, Bedrock) — behind ports
    service/      use cases: jobs, watching, the sweeper, auth, cursors
    durability/   the log as fence (journal), the lease keeper, the runner
    ports         what services need from storage and the queue, and ``Deps``
    domain/       the job, its events and their payloads, the agent interface
    settings, exceptions, observability   one settings object, one exception tree, logs/metrics

The tooling (CLI, local stack, demo, bench, emulator, fault injection) is ``alfred_tools``.
"""

__version__ = "0.1.0"
