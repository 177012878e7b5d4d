"""alfred-jobs tooling: everything that never ships to Lambda.

The CLI (``cli``), the local stack (``devstack``: emulator, workers, sweeper, one origin), the
demo, the bench and its scenarios (``bench``, ``benchmarks``), the moto server starter
(``emulator``), the faithful proxy (``fidelity``), the fault injector (``faults``), the local
stand-ins for the event source mapping and the schedule (``local_worker``, ``local_sweeper``),
resources from template.yaml (``bootstrap``) and tooling clients (``clients``).

It imports the runtime (``alfred_jobs``); the runtime never imports it (import-linter checks).
"""
