"""The seed reader leaves the source's page cache as it found it (``fincore`` from util-linux)."""

import os
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from orchagent.seed import authentication
from orchagent.seed.reader import TreeReader

MB = 1024 * 1024


def resident_bytes(path: str) -> int:
    """Bytes of ``path`` in the page cache."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", path],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


class SourcePageCacheTests(SynchronousTestCase):
    """What a seed reads on the source does not stay in the page cache."""

    def test_what_a_seed_reads_leaves_the_page_cache(self):
        source = self.mktemp()
        os.makedirs(source)
        big, small = os.path.join(source, "ibdata1"), os.path.join(source, "t.frm")
        for path, size in ((big, 12 * MB), (small, 9000)):
            with open(path, "wb") as f:
                f.write(os.urandom(size))
                os.fsync(f.fileno())  # clean pages: the cache may drop them
            with open(path, "rb") as f:
                f.read()  # now cached, as a hot table of a running server is
        self.assertEqual(resident_bytes(big), 12 * MB)
        self.assertGreater(resident_bytes(small), 0)

        sent, midway = 0, None
        for batch in TreeReader(source, authentication.StreamMac(bytes(32))).batches():
            sent += batch.data_bytes
            if midway is None and sent >= 8 * MB:  # the big file is read up to here, not further
                midway = resident_bytes(big)

        self.assertEqual(sent, 12 * MB + 9000)
        self.assertLessEqual(midway, 6 * MB)  # a huge file does not fill the cache on the way
        self.assertEqual((resident_bytes(big), resident_bytes(small)), (0, 0))
