"""Stream function: SSE and long-poll (FastAPI under uvicorn; Lambda Web Adapter on AWS).

The image's start command (``functions/stream/Dockerfile`` CMD) serves ``app`` with uvicorn. The
app is built at import; boto3 clients are built on the first request, not here.
"""

from __future__ import annotations

from alfred_jobs.entry.http.stream_api import create_stream_app

app = create_stream_app()
