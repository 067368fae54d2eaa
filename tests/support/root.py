"""Integration tests that need root (loop devices, mounts, other users' ids, namespaces, dpkg) skip
with the reason when not run as root; CI runs as root, so nothing is skipped there."""

from __future__ import annotations

import os
import unittest

IS_ROOT = os.geteuid() == 0


def root_skip_reason(why: str) -> str | None:
    """The skip reason for something that needs root for ``why``, or None when running as root."""
    return None if IS_ROOT else f"needs root: {why} (CI runs as root)"


def requires_root(why: str):
    """Skip the decorated test class or method, saying ``why`` root is needed, unless running as root.

    On a class it also keeps ``setUpClass`` from running (pytest and trial both read unittest's mark).
    """
    return unittest.skipIf(not IS_ROOT, root_skip_reason(why))
