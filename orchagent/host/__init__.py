"""Facts about and control of the local host: MySQL, snapshots, mounts, disks."""
