"""The local ``mysql`` user attacking a seed receive, as a script run under that user's ids.

Standard library only: the tests run it with the system Python under ``setpriv``.  Usage::

    datadir_attacker.py <datadir> <victim> <lure> <plant_after> [name ...]

In a tight loop, until killed, it does what the datadir's owner may do to a receive in flight:
renames every seed staging directory it finds (``.orchagent-seed-*``, then its own
``.stash-*`` names) and leaves a symlink to ``<lure>`` in its place, where ``<lure>/tree`` leads
to ``<victim>``; tries to plant symlinks to ``<victim>`` inside the staging directory; and
``plant_after`` seconds after it first saw a staging directory (negative: never) plants
symlinks into ``<victim>`` under each ``name`` (the names of entries about to arrive).
It prints ``ready`` once its lure is in place.
"""

import os
import sys
import time


def main(datadir: str, victim: str, lure: str, plant_after: float, names: list[str]) -> None:
    try:
        os.symlink(victim, os.path.join(lure, "tree"))
    except FileExistsError:
        pass
    print("ready", flush=True)
    seen_at = None
    stashes = 0
    while True:
        for name in os.listdir(datadir):
            path = os.path.join(datadir, name)
            if not name.startswith((".orchagent-seed-", ".stash-")) or os.path.islink(path):
                continue
            seen_at = seen_at or time.monotonic()
            stashes += 1
            stash = os.path.join(datadir, f".stash-{stashes}")
            for attempt in (lambda: os.rename(path, stash), lambda: os.symlink(lure, path)):
                try:
                    attempt()
                except OSError:
                    pass
            for inner in ("tree", "tree/db one", "tree/ibdata1", "tree/.orchagent-partial-1"):
                try:
                    os.symlink(victim, os.path.join(stash, inner))
                except OSError:
                    pass  # denied while the agent receives: what the test wants
        if seen_at is not None and 0 <= plant_after <= time.monotonic() - seen_at:
            for name in names:
                try:
                    os.symlink(os.path.join(victim, name), os.path.join(datadir, name))
                except OSError:
                    pass


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5:])
