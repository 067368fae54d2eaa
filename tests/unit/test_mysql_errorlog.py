"""Reading the error log backwards: right lines, bounded memory, clear errors."""

import os
import time
import tracemalloc

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from orchagent.errors import Conflict, NotFound
from orchagent.host import errorlog
from orchagent.host.errorlog import tail_lines

GIB = 1 << 30


class TailTests(SynchronousTestCase):
    """The error log tail reads only the last blocks, whatever the log's size, line endings or encoding."""

    def write(self, data: bytes) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_last_lines(self):
        path = self.write(b"".join(b"line %d\n" % i for i in range(100)))
        self.assertEqual(tail_lines(path, 3), ["line 97", "line 98", "line 99"])

    def test_fewer_lines_than_asked_no_final_newline_and_crlf(self):
        self.assertEqual(tail_lines(self.write(b"a\r\nb\r\nc"), 20), ["a", "b", "c"])

    def test_empty_log_is_an_empty_list(self):
        self.assertEqual(tail_lines(self.write(b""), 20), [])

    def test_invalid_utf8_is_replaced(self):
        self.assertEqual(tail_lines(self.write(b"ok\n\xff\xfe\n"), 2), ["ok", "\ufffd\ufffd"])

    def test_missing_log_says_what_to_set(self):
        error = self.assertRaises(NotFound, tail_lines, "/nonexistent/host.err", 20)
        self.assertIn("/nonexistent/host.err", str(error))
        self.assertIn("MySQLErrorLogFile", str(error))

    def test_lines_across_many_blocks(self):
        self.patch(errorlog, "BLOCK_SIZE", 1000)
        lines = [("x" * (i % 3000)) + str(i) for i in range(300)]
        path = self.write(("\n".join(lines) + "\n").encode())
        self.assertEqual(tail_lines(path, 120), lines[-120:])

    @settings(max_examples=200, deadline=None)
    @given(text=st.text(alphabet="ab\n", max_size=60), count=st.integers(0, 12), block=st.integers(1, 9))
    def test_same_as_reading_everything(self, text, count, block):
        self.patch(errorlog, "BLOCK_SIZE", block)
        path = self.write(text.encode())
        expected = text.split("\n")
        if text.endswith("\n"):
            expected.pop()
        self.assertEqual(tail_lines(path, count), expected[-count:] if text and count else [])

    def test_ten_gigabyte_sparse_log_costs_a_few_blocks(self):
        path = self.huge_log(b"".join(b"2024-01-01 [Note] event %d\n" % i for i in range(50)))
        started = time.monotonic()
        tracemalloc.start()
        try:
            lines = tail_lines(path, 20)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertEqual(lines, [f"2024-01-01 [Note] event {i}" for i in range(30, 50)])
        self.assertLess(peak, 4 * errorlog.BLOCK_SIZE)
        self.assertLess(time.monotonic() - started, 1.0)

    def test_a_log_without_newlines_stops_at_the_scan_budget(self):
        path = self.huge_log(b"\nlast words\n")  # 10 GB of NUL bytes, then one line
        tracemalloc.start()
        try:
            lines = tail_lines(path, 20, max_scan_bytes=1 << 20)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertEqual(lines[-1], "last words")
        self.assertEqual(len(lines[0]), (1 << 20) - len(b"\nlast words\n"))  # the cut line keeps its end
        self.assertLess(peak, 4 * (1 << 20))

    def huge_log(self, tail: bytes) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.truncate(10 * GIB)
            f.seek(0, os.SEEK_END)
            f.write(tail)
        return path


class UnsafeLogTests(SynchronousTestCase):
    """A log others could have replaced (symlink, fifo, foreign file, hard link) is refused, never read."""

    def setUp(self):
        self.logs = os.path.abspath(self.mktemp())
        os.makedirs(self.logs)
        os.chmod(self.logs, 0o777)  # as the mysql user's own directory is to it
        self.log = os.path.join(self.logs, "host.err")
        self.secret = os.path.abspath(self.mktemp())
        with open(self.secret, "w") as f:
            f.write("root:secret-hash:19000:0:99999:7:::\n")

    def assertRefused(self, *words):
        error = self.assertRaises(Conflict, tail_lines, self.log, 20)
        for word in words:
            self.assertIn(word, str(error))
        self.assertNotIn("secret-hash", str(error))

    def test_symlink_planted_in_its_directory(self):
        os.symlink(self.secret, self.log)
        self.assertRefused(self.log, "symlink", "MySQLErrorLogFile")

    def test_fifo_does_not_block(self):
        os.mkfifo(self.log)
        self.assertRefused("a fifo", "MySQLErrorLogFile")

    def test_directory(self):
        os.mkdir(self.log)
        self.assertRefused("a directory")

    def test_hard_link_to_another_file(self):
        os.link(self.secret, self.log)
        self.assertRefused("2 hard links")

    def test_file_of_another_user(self):
        with open(self.log, "w") as f:
            f.write("x\n")
        self.patch(errorlog.safepath, "trusted_owners", lambda: frozenset())
        self.patch(errorlog, "MYSQL_USER", "no-such-user-here")
        self.assertRefused("belongs to uid", "neither the no-such-user-here user nor root")
