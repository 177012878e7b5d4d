"""Entry points: Lambda handlers (worker), the FastAPI apps (http) and the composition root (wiring)."""
