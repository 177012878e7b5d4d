"""Durability: the log that fences its own writers (journal), the lease keeper, the runner."""
