"""The pipes between the agent and a streaming tool (a backup, an extractor) hold a whole 1 MiB block."""

import fcntl
import os

from twisted.trial.unittest import SynchronousTestCase

from orchagent import process
from orchagent.process import STREAM_PIPE_BYTES, stream_pipe


class StreamPipeTests(SynchronousTestCase):
    """A block fits without the tool at the other end reading; where the system refuses, the default pipe."""

    def pipe(self) -> tuple[int, int]:
        read_end, write_end = stream_pipe()
        self.addCleanup(os.close, read_end)
        self.addCleanup(os.close, write_end)
        return read_end, write_end

    def test_a_whole_block_fits(self):
        read_end, write_end = self.pipe()
        self.assertEqual(fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ), STREAM_PIPE_BYTES)
        os.set_blocking(write_end, False)
        self.assertEqual(os.write(write_end, b"x" * STREAM_PIPE_BYTES), STREAM_PIPE_BYTES)
        self.assertEqual(len(os.read(read_end, STREAM_PIPE_BYTES)), STREAM_PIPE_BYTES)

    def test_refused_the_default_size(self):
        def refuse(fd, command, argument):
            raise PermissionError(1, "Operation not permitted")

        self.patch(process.fcntl, "fcntl", refuse)
        read_end, write_end = self.pipe()
        os.write(write_end, b"still a pipe")
        self.assertEqual(os.read(read_end, 100), b"still a pipe")
