"""The HTTP API: one route table, one resource doing the async work and the error funnel."""
