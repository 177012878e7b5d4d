"""HTTP entrypoints: thin FastAPI handlers over the service layer."""
