"""The chaos suite's markers live in pyproject.toml (`chaos`, `chaos_long`)."""
