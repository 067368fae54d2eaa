"""Seeding: copying one server's data onto another (records, transfers, the built-in engine)."""
