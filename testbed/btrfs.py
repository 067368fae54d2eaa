"""A throw-away btrfs file system on a loop device (needs root), for snapshot and seed tests.

    fs = btrfs_filesystem(self)                 # in a TestCase: created now, destroyed at cleanup
    data = fs.subvolume("mysql")                # <fs.mount_point>/mysql, a subvolume
    snapshots = fs.directory("snapshots")       # a plain directory on the same file system

Cleanup unmounts every mount of the loop device (bind mounts of snapshots elsewhere included),
detaches it and deletes the sparse image, even when the test failed half-way.
"""

from __future__ import annotations

import os
import subprocess

from orchagent.host.mounts import read_mountinfo


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True).stdout


class BtrfsFileSystem:
    """A btrfs file system in a sparse image on a loop device, mounted under ``directory``."""

    def __init__(self, directory: str, size_mb: int = 300):
        self.workdir = os.path.abspath(directory)
        self.image = os.path.join(self.workdir, "btrfs.img")
        self.mount_point = os.path.join(self.workdir, "fs")
        self.size_mb = size_mb
        self.device: str | None = None

    def create(self) -> "BtrfsFileSystem":
        os.makedirs(self.mount_point, exist_ok=True)
        with open(self.image, "wb") as f:
            f.truncate(self.size_mb * 1024 * 1024)
        self.device = _run("losetup", "--find", "--show", self.image).strip()
        _run("mkfs.btrfs", "-q", self.device)
        _run("mount", self.device, self.mount_point)
        return self

    def subvolume(self, name: str) -> str:
        path = os.path.join(self.mount_point, name)
        _run("btrfs", "subvolume", "create", path)
        return path

    def directory(self, name: str) -> str:
        path = os.path.join(self.mount_point, name)
        os.makedirs(path, exist_ok=True)
        return path

    def destroy(self) -> None:
        if self.device is not None:
            mounted = [entry.mount_point for entry in read_mountinfo() if entry.source == self.device]
            for mount_point in reversed(mounted):
                if subprocess.run(["umount", mount_point], stderr=subprocess.DEVNULL).returncode:
                    subprocess.run(["umount", "--lazy", mount_point], stderr=subprocess.DEVNULL)
            subprocess.run(["losetup", "--detach", self.device], stderr=subprocess.DEVNULL)
            self.device = None
        if os.path.exists(self.image):
            os.unlink(self.image)


def btrfs_filesystem(testcase, size_mb: int = 300) -> BtrfsFileSystem:
    """A mounted btrfs file system in a fresh temporary directory, destroyed when the test ends."""
    filesystem = BtrfsFileSystem(testcase.mktemp(), size_mb)
    testcase.addCleanup(filesystem.destroy)
    return filesystem.create()
