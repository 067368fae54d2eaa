"""Test trees for the seed transfer: build one with every awkward kind of entry, compare two, and
turn one into a stream (or a writer for one) under a test session key."""

from __future__ import annotations

import os
import stat

from orchagent.seed import authentication, protocol
from orchagent.seed.reader import TreeReader
from orchagent.seed.resumption import START, ResumePoint
from orchagent.seed.writer import TreeWriter

SECRET = b"s3cret"
SESSION = authentication.Session.derive(SECRET, "9", authentication.new_nonce(), authentication.new_nonce())


def tree_stream(root: str, session: authentication.Session = SESSION, compression: str = "none",
                resume: ResumePoint = START) -> bytes:
    """The whole seed stream of ``root``, as a sender would send it for seed 9 (from ``resume`` on)."""
    batches = TreeReader(root, session.stream_mac(), chunk_bytes=64 * 1024, compression=compression,
                         resume=resume).batches()
    return b"".join(part for batch in batches for part in batch.parts)


def split_frames(stream: bytes) -> list[bytes]:
    """The stream cut into whole frames (header and payload each)."""
    frames, at = [], 0
    while at < len(stream):
        _, length = protocol.HEADER.unpack_from(stream, at)
        frames.append(stream[at:at + protocol.HEADER.size + length])
        at += protocol.HEADER.size + length
    return frames


def writer_into(target: str) -> TreeWriter:
    """A writer receiving seed 9 into ``target``, keyed as :func:`tree_stream` sends."""
    return TreeWriter(target, "9", mac=SESSION.stream_mac())


def build_tree(root: str, big_bytes: int = 3 * 1024 * 1024 + 17, small_files: int = 200) -> None:
    """Large files, many small ones, a sparse file, symlinks, empty dirs, odd names and modes."""
    os.makedirs(root)
    pattern = bytes(range(256)) * 4096  # 1 MiB, position-dependent so misplaced data shows
    with open(os.path.join(root, "ibdata1"), "wb") as f:
        for offset in range(0, big_bytes, len(pattern)):
            f.write(pattern[: min(len(pattern), big_bytes - offset)])
    db = os.path.join(root, "db one")
    os.makedirs(os.path.join(db, "empty", "deeper"))
    os.makedirs(os.path.join(root, "empty top"))
    for i in range(small_files):
        with open(os.path.join(db, f"t{i}.ibd"), "wb") as f:
            f.write(os.urandom(i * 37 % 5000))
    with open(os.path.join(db, "zero length"), "wb"):
        pass
    sparse = os.path.join(root, "sparse.ibd")
    with open(sparse, "wb") as f:
        f.seek(8 * 1024 * 1024)
        f.write(b"middle")
        f.truncate(32 * 1024 * 1024)  # a trailing hole too
    odd = os.fsencode(root) + b"/odd \n name \xff\xfe"
    with open(odd, "wb") as f:
        f.write(b"non-UTF-8 name")
    os.symlink("ibdata1", os.path.join(root, "link to ibdata1"))
    os.symlink("/nonexistent/target", os.path.join(root, "dangling"))
    os.symlink("db one", os.path.join(root, "dirlink"))
    os.chmod(os.path.join(db, "t1.ibd"), 0o640)
    os.chmod(os.path.join(db, "t2.ibd"), 0o4755)
    os.chmod(os.path.join(db, "empty", "deeper"), 0o500)
    os.utime(os.path.join(db, "t3.ibd"), ns=(1_000_000_123, 1_234_567_890_123_456_789))
    os.utime(os.path.join(root, "dangling"), ns=(5, 1_111_111_111_000_000_001), follow_symlinks=False)
    os.utime(os.path.join(db, "empty"), ns=(5, 1_500_000_000_000_000_000))


def describe_tree(root: str) -> dict[bytes, tuple]:
    """Everything a seed must preserve, per relative path: kind, mode, mtime, content/target.

    The mode's permission bits only: a seed drops set-uid, set-gid and sticky bits.
    """
    root_b = os.fsencode(root)
    found: dict[bytes, tuple] = {}
    for directory, dirnames, filenames in os.walk(root_b):
        for name in dirnames + filenames:
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root_b)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                detail: object = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    detail = hash(f.read()), st.st_size
            else:
                detail = None
            found[relative] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode) & 0o777, st.st_mtime_ns, detail)
    return found


def allocated_bytes(path: str) -> int:
    return os.stat(path).st_blocks * 512
