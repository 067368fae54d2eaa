"""Real processes for tests and benchmarks: a running agent, a MariaDB sandbox, a throw-away CA, a
btrfs loop device, a network namespace with a shaped link, hostile connections and an
orchestrator-playing client.  Imported by tests/, bench/ and scripts/; never shipped (setup.py
leaves it out).  In-memory doubles live in tests/support."""
