"""PostgreSQL fixtures (filled in by the PostgreSQL harness)."""
