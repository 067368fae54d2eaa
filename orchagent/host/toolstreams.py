"""The backup tools' streaming runs for a hot seed: the backup writing its stream into a pipe on the
source, the extractor unpacking one from a pipe on the target (command lines and the reading of
their errors: :mod:`orchagent.host.hotbackup`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable

from orchagent.commands import CommandFailed
from orchagent.errors import AgentError
from orchagent.host.hotbackup import Tool, backup_argv, extract_argv, tool_error
from orchagent.process import stream_pipe


class ToolStream:
    """One streaming run of a tool: the backup writing its stream, or the extractor reading one.

    ``fd`` is the caller's end of the pipe (read the stream from it, or write the stream into it),
    for a worker thread: the pipe is the backpressure.  :meth:`finished` waits for the tool's end
    and turns a failure into the tool's own words; :meth:`abort` kills its process group.  Both
    remove the backup's temporary directory.
    """

    def __init__(self, what: str, command, fd: int, temp_dir: str | None, defer_to_thread: Callable) -> None:
        self.what = what
        self.command = command
        self.fd = fd
        self._temp_dir = temp_dir
        self._defer_to_thread = defer_to_thread
        self._aborted = False

    def close(self) -> None:
        """Close the caller's end (the tool then sees the end of its input, or a broken pipe)."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    async def finished(self) -> None:
        """Once the tool ended: AgentError with what it said unless it succeeded (never after :meth:`abort`)."""
        try:
            if self._aborted:
                raise AgentError(f"{self.what} was killed: the seed was stopped")
            await self.command.result
        except CommandFailed as e:
            said = tool_error(e.result.stderr.decode("utf-8", "replace"))
            raise AgentError(f"{self.what} failed: {said}" if said and e.result.exit_code else
                             f"{self.what} failed: {e}") from None
        finally:
            await self._remove_temp_dir()

    async def abort(self) -> None:
        """Kill the tool's process group (a backup leaves no lock or stage on the server behind it).

        Its end, a failure now, is of no interest any more (nobody may be left to await it: unhandled,
        it would be logged as an error); :meth:`finished` fails from now on.
        """
        if not self._aborted:
            self._aborted = True
            self.command.result.addErrback(lambda _failure: None)
        try:
            await self.command.terminate()
        finally:
            await self._remove_temp_dir()

    async def _remove_temp_dir(self) -> None:
        temp_dir, self._temp_dir = self._temp_dir, None
        if temp_dir is not None:
            await self._defer_to_thread(shutil.rmtree, temp_dir, True)


async def start_backup(runner, tool: Tool, defaults_file: str, datadir: str, defer_to_thread: Callable,
                       *, idle_timeout: float | None) -> ToolStream:
    """Start the backup of ``datadir``'s server streaming into a pipe; its temporary files go to a
    private directory of the agent's, removed when it ends.  ``idle_timeout``: a stall (nothing on
    stderr, where the tools log their progress) kills it."""
    temp_dir = await defer_to_thread(tempfile.mkdtemp, ".orchagent-hotbackup")  # 0700, root's
    read_end, write_end = stream_pipe()
    try:
        command = runner.start(backup_argv(tool, defaults_file, temp_dir, datadir), stdout_fd=write_end,
                               timeout=None, idle_timeout=idle_timeout)
    except BaseException:
        os.close(read_end)
        await defer_to_thread(shutil.rmtree, temp_dir, True)
        raise
    return ToolStream(f"{tool.name} --backup", command, read_end, temp_dir, defer_to_thread)


def start_extract(runner, tool: Tool, directory: str, defer_to_thread: Callable) -> ToolStream:
    """Start unpacking a stream written into the returned pipe end into ``directory`` (the agent's own,
    closed to others, so the tool working there by path is safe)."""
    read_end, write_end = stream_pipe()
    try:
        command = runner.start(extract_argv(tool, directory), stdin_fd=read_end, timeout=None)
    except BaseException:
        os.close(write_end)
        raise
    return ToolStream(f"{tool.extractor} -x", command, write_end, None, defer_to_thread)
