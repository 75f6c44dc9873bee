"""Guest job: NFS through os-brick's NFS (remotefs) connector.

Case: nfs (the kernel NFS server exports a tmpfs with a volume file; the
connector mounts the share and the volume file is used for I/O).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import labguest as g

MOUNT_BASE = "/var/lib/lab/nfs-mnt"
SIZE = 64 << 20


def mounts_of(share: str) -> list[str]:
    """Lines of /proc/mounts for the share."""
    return [
        m
        for m in Path("/proc/mounts").read_text().splitlines()
        if m.startswith(share)
    ]


def main() -> None:
    """Serve a volume file over NFS and attach it with os-brick."""
    with g.Case("nfs") as case:
        g.brick_init()
        from os_brick.initiator import connector as brick

        with case.step("server"):
            share = g.start_nfs_server()
        export = Path(share.split(":", 1)[1])
        volume = export / "volume-lab.img"
        with open(volume, "wb") as f:
            f.truncate(SIZE)
        # NFSv3: v4 cannot export from this guest, whose root is an
        # overlay nfsd cannot walk for the v4 pseudo-root; os-brick would
        # try 4.2 and 4.1 first and only then fall back.
        props = {"export": share, "name": volume.name, "options": "-o vers=3"}
        case.data["props"] = props
        conn = brick.InitiatorConnector.factory(
            "NFS", None, nfs_mount_point_base=MOUNT_BASE
        )
        with case.step("connect"):
            info = conn.connect_volume(props)
        case.data["attachment"] = info
        path = info["path"]
        case.data["mounts"] = mounts_of(share)
        case.data["path_exists"] = os.path.exists(path)
        with case.step("io"):
            digest = g.io_check(path, offset=1 << 20)
        case.data["io_sha256"] = digest
        # The bytes must have reached the server's own file.
        with open(volume, "rb") as f:
            f.seek(1 << 20)
            server = hashlib.sha256(f.read(1 << 20)).hexdigest()
        case.data["server_sha256"] = server
        with case.step("disconnect"):
            conn.disconnect_volume(props, info)
        # os-brick's NFS connector leaves the share mounted (shares are
        # shared between volumes); record that, then unmount.
        case.data["mounts_after_disconnect"] = mounts_of(share)
        for line in mounts_of(share):
            g.sh("umount", line.split()[1])
        case.data["mounts_after_umount"] = mounts_of(share)
    g.save_artifacts("/tmp/brick.log")


if __name__ == "__main__":
    main()
