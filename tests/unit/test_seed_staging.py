"""The seed receiver's staging directory when the datadir's owner renames and replaces entries.

The datadir's owner is played by this process (the same user: what it may do to entries in the
datadir, the real one may do too); ``tests/integration/test_seed_receive_safety.py`` races a
real seed as another user.
"""

from __future__ import annotations

import os
import stat
import time

from twisted.trial.unittest import SynchronousTestCase

from orchagent.seed import protocol, staging
from orchagent.seed.protocol import Entry, EntryKind, Kind, TransferFailed
from orchagent.seed.writer import TreeWriter
from tests.support.seed_trees import SESSION, describe_tree, tree_stream, writer_into


class StagingTests(SynchronousTestCase):
    """Renamed or replaced staging names never redirect the receiver, and cleanup finds its data."""

    def setUp(self):
        base = self.mktemp()
        self.source, self.datadir, self.outside = (os.path.join(base, name) for name in ("source", "datadir", "outside"))
        for directory in (os.path.join(self.source, "db"), self.datadir, os.path.join(self.outside, "tree", "db")):
            os.makedirs(directory)
        for name, data in (("ibdata1", b"one" * 1000), ("db/t.ibd", b"table")):
            with open(os.path.join(self.source, name), "wb") as f:
                f.write(data)
        self.outside_before = describe_tree(self.outside)

    def writer(self) -> TreeWriter:
        writer = writer_into(self.datadir)
        writer.start()
        self.addCleanup(writer.discard)
        return writer

    def swap_staging(self) -> None:
        """What the datadir's owner may do: move the staging directory aside, leave a symlink out."""
        os.rename(os.path.join(self.datadir, ".orchagent-seed-9"), os.path.join(self.datadir, "aside"))
        os.symlink(self.outside, os.path.join(self.datadir, ".orchagent-seed-9"))

    def assertOutsideUntouched(self):
        self.assertEqual(describe_tree(self.outside), self.outside_before)

    def test_a_swapped_staging_directory_does_not_redirect_the_tree(self):
        writer = self.writer()
        self.swap_staging()
        writer.feed(tree_stream(self.source))
        writer.finish()
        self.assertOutsideUntouched()
        self.assertEqual(sorted(os.listdir(self.datadir)), [".orchagent-seed-9", "db", "ibdata1"])  # "aside" gone
        self.assertTrue(os.path.islink(os.path.join(self.datadir, ".orchagent-seed-9")))
        os.unlink(os.path.join(self.datadir, ".orchagent-seed-9"))
        self.assertEqual(describe_tree(self.datadir), describe_tree(self.source))

    def test_the_tree_path_for_an_extractor_leads_to_the_tree_after_a_swap(self):
        scratch = staging.Staging(self.datadir, "9")
        scratch.create()
        self.addCleanup(scratch.remove)
        self.swap_staging()
        with open(os.path.join(scratch.tree_path(), "extracted"), "wb") as f:  # as mbstream -C <path> would
            f.write(b"x")
        self.assertOutsideUntouched()
        self.assertEqual(os.listdir(os.path.join(self.datadir, "aside", "tree")), ["extracted"])

    def test_cleanup_finds_the_staging_directory_under_its_new_name(self):
        writer = self.writer()
        writer.feed(tree_stream(self.source)[:-200])  # cut short
        self.swap_staging()
        writer.discard()
        self.assertOutsideUntouched()
        self.assertEqual(os.listdir(self.datadir), [".orchagent-seed-9"])  # only the owner's symlink

    def test_a_staging_directory_renamed_as_it_is_made_is_found(self):
        made = os.mkdir

        def mkdir_then_swap(path, mode=0o777, *, dir_fd=None):
            made(path, mode, dir_fd=dir_fd)
            if path == ".orchagent-seed-9":
                self.swap_staging()

        self.patch(os, "mkdir", mkdir_then_swap)
        writer = self.writer()
        writer.feed(tree_stream(self.source))
        writer.finish()
        self.assertOutsideUntouched()
        self.assertEqual(sorted(os.listdir(self.datadir)), [".orchagent-seed-9", "db", "ibdata1"])  # "aside" gone

    def test_a_stale_staging_entry_is_removed_without_following_it(self):
        os.symlink(self.outside, os.path.join(self.datadir, ".orchagent-seed-9"))
        writer = self.writer()
        writer.feed(tree_stream(self.source))
        writer.finish()
        self.assertOutsideUntouched()
        self.assertEqual(describe_tree(self.datadir), describe_tree(self.source))

    def test_a_name_planted_during_the_move_is_kept_and_the_moved_entries_removed(self):
        # The check before the move passes; the name appears right after it.
        self.patch(staging, "_exists", lambda name, dir_fd: False)
        os.symlink(os.path.join(self.outside, "tree"), os.path.join(self.datadir, "ibdata1"))
        writer = self.writer()
        writer.feed(tree_stream(self.source))
        with self.assertRaisesRegex(TransferFailed, "is not empty \\('ibdata1' exists\\)"):
            writer.finish()  # "db" moved in first, then "ibdata1" refused
        writer.discard()
        self.assertOutsideUntouched()
        self.assertEqual(os.listdir(self.datadir), ["ibdata1"])
        self.assertEqual(os.readlink(os.path.join(self.datadir, "ibdata1")), os.path.join(self.outside, "tree"))

    def test_a_directory_replaced_inside_the_staging_tree_is_refused(self):
        # Only the agent can do that here (the tree is closed to others); still, nothing is followed.
        writer = self.writer()
        sent = SESSION.stream_mac()  # the sender's side of the stream's MAC

        def directory(path: bytes) -> bytes:
            part = protocol.frame(Kind.ENTRY, Entry(EntryKind.DIR, path, 0o755, 0).encode())
            sent.update(part)
            return part

        writer.feed(directory(b"db"))
        writer.feed(directory(b"db/x"))
        tree = os.path.join(self.datadir, ".orchagent-seed-9", "tree")
        for _ in range(1000):  # until the disk thread made them
            if os.path.isdir(os.path.join(tree, "db", "x")):
                break
            time.sleep(0.01)
        os.rename(os.path.join(tree, "db"), os.path.join(tree, "db-aside"))
        os.symlink(os.path.join(self.outside, "tree"), os.path.join(tree, "db"))
        writer.feed(directory(b"db/x/y") + sent.end(0, 0))
        with self.assertRaises(NotADirectoryError):  # O_DIRECTORY | O_NOFOLLOW on the symlink
            writer.finish()
        writer.discard()
        self.assertOutsideUntouched()
        self.assertEqual(os.listdir(self.datadir), [])


class ReceivedOwnerTests(SynchronousTestCase):
    """Received entries belong to the datadir's owner and lose set-uid, set-gid and sticky bits."""

    def test_owner_and_mode_whatever_the_sender_says(self):
        if os.geteuid() != 0:
            self.skipTest("needs root to give files away")
        source, target = self.mktemp(), self.mktemp()
        os.makedirs(os.path.join(source, "d"))
        os.makedirs(target)
        os.chown(target, 4321, 8765)
        for name, mode, owner in (("d/suid", 0o6755, 0), ("d/sticky", 0o1644, 1234)):
            path = os.path.join(source, name)
            with open(path, "wb") as f:
                f.write(b"x")
            os.chown(path, owner, owner)
            os.chmod(path, mode)
        os.symlink("/etc/shadow", os.path.join(source, "d", "l"))
        os.chmod(os.path.join(source, "d"), 0o3775)
        writer = writer_into(target)
        writer.start()
        self.addCleanup(writer.discard)
        writer.feed(tree_stream(source))
        writer.finish()
        found = {}
        for path in ("d", "d/l", "d/suid", "d/sticky"):
            st = os.lstat(os.path.join(target, path))
            found[path] = (st.st_uid, st.st_gid, None if stat.S_ISLNK(st.st_mode) else stat.S_IMODE(st.st_mode))
        self.assertEqual(found, {"d": (4321, 8765, 0o775), "d/l": (4321, 8765, None),
                                 "d/suid": (4321, 8765, 0o755), "d/sticky": (4321, 8765, 0o644)})
