"""Serving an ASGI app for a test: uvicorn on a free port, in a thread (``localstack.serve_app``)."""

from __future__ import annotations

from alfred_tools.localstack import serve_app as serve

__all__ = ["serve"]
