"""alfred-jobs tooling: everything that never ships to Lambda.

The CLI (``cli``, ``api_client``); the one local stack (``localstack``: settings from an explicit
environment, injected clients, child workers and sweeper) and ``dev`` on top of it (``devstack``:
one origin for the API, the stream and the web client); the demo; the bench and its scenarios
(``bench``, ``benchmarks``); the moto server starter (``emulator``), the faithful proxy
(``fidelity``), the fault injector (``faults``); the local stand-ins for the event source mapping
and the schedule (``local_worker``, ``local_sweeper``); resources from template.yaml
(``bootstrap``) and tooling clients (``clients``).

It imports the runtime (``alfred_jobs``); the runtime never imports it (import-linter checks).
"""
