"""The service layer: what the HTTP handlers, the worker and the sweeper call."""
