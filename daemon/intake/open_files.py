"""Does any process hold these files open for writing? Linux can tell, through /proc.

Asked once for a batch (the files found by a rescan), so /proc is walked once, not per file.
The answer is the paths that are *known* closed to writers; a path the platform cannot
answer for is left out, and its caller keeps the stability wait for it. It cannot tell:

* without a /proc of Linux's kind (Windows, macOS, a missing or unreadable proc root);
* when some process's file table cannot be read (another user's process, for a daemon that
  is not root) or processes are hidden (/proc mounted with ``hidepid``);
* inside a PID namespace (a container): processes outside it, which can write a
  bind-mounted inbox, are not listed;
* for a file on a filesystem that other machines can write (NFS, SMB, sshfs, any FUSE):
  their writers are not processes of this machine;
* for a file with several hard links (a writer may hold it under another name).

Nothing Unix-only is imported: every question is a plain file read under the proc root.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

PROC = Path("/proc")
# The initial PID namespace's inode number: fixed in the kernel (PROC_PID_INIT_INO).
INIT_PID_NAMESPACE = "pid:[4026531836]"
# Filesystems whose writers are all processes of this machine.
LOCAL_FILESYSTEMS = frozenset({
    "ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "jfs", "reiserfs", "bcachefs", "zfs",
    "tmpfs", "ramfs", "overlay", "vfat", "exfat", "ntfs3", "hfsplus", "apfs",
})  # fmt: skip
WRITE_ACCESS = 0o3  # O_ACCMODE bits of fdinfo's octal "flags": O_WRONLY 1, O_RDWR 2


def not_open_for_writing(paths: Iterable[Path], *, proc_root: Path = PROC) -> set[Path]:
    """The regular files among ``paths`` that no process of this machine holds open for
    writing, as far as ``proc_root`` can tell; every other path is left out."""
    wanted: dict[tuple[int, int], Path] = {}
    for path in paths:
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if st.st_nlink == 1 and (st.st_mode & 0o170000) == 0o100000:  # one name, regular
            wanted[(st.st_dev, st.st_ino)] = path
    if not wanted:
        return set()
    try:
        namespace = os.readlink(proc_root / "self" / "ns" / "pid")
        mounts = (proc_root / "self" / "mountinfo").read_text()
    except OSError:
        return set()
    if not _sees_every_process(namespace, mounts):
        return set()
    local = _local_devices(mounts)
    wanted = {key: path for key, path in wanted.items() if key[0] in local}
    writing = _held_for_writing(proc_root, wanted)
    if writing is None:
        return set()
    return {path for key, path in wanted.items() if key not in writing}


def _sees_every_process(namespace: str, mounts: str) -> bool:
    """Whether this process's /proc lists every process of the machine: it is in the
    initial PID namespace (`namespace`, its ns/pid link) and no proc mount in `mounts` (its
    mountinfo) hides other users' processes."""
    if namespace != INIT_PID_NAMESPACE:
        return False
    proc_options = [line.split(" - ", 1)[1] for line in mounts.splitlines() if " - proc " in line]
    return not any("hidepid=" in o and "hidepid=0" not in o for o in proc_options)


def _local_devices(mounts: str) -> set[int]:
    """Device numbers (``st_dev``) of the filesystems of a local kind in `mounts` (mountinfo)."""
    devices = set()
    for line in mounts.splitlines():
        fields, _, rest = line.partition(" - ")
        parts, kind = fields.split(), rest.split(" ", 1)[0]
        if len(parts) > 2 and kind in LOCAL_FILESYSTEMS:
            major, _, minor = parts[2].partition(":")
            devices.add(os.makedev(int(major), int(minor)))
    return devices


def _held_for_writing(
    proc_root: Path, wanted: dict[tuple[int, int], Path]
) -> set[tuple[int, int]] | None:
    """(device, inode) of the wanted files some process holds open for writing; None when a
    process's open files cannot be read."""
    names = {path.name for path in wanted.values()}
    writing: set[tuple[int, int]] = set()
    for pid in os.listdir(proc_root):
        if not pid.isdigit():
            continue
        fd_dir = proc_root / pid / "fd"
        try:
            fds = os.listdir(fd_dir)
        except (FileNotFoundError, ProcessLookupError):
            continue  # it ended meanwhile
        except OSError:
            return None  # another user's process: it could be writing
        for fd in fds:
            link = fd_dir / fd
            try:
                # The name first (cheap, and the same in every mount namespace), then the
                # inode: a link names the file as its process sees it.
                if os.path.basename(os.readlink(link)) not in names:
                    continue
                st = os.stat(link)
                key = (st.st_dev, st.st_ino)
                if key in wanted and _opened_for_writing(proc_root / pid / "fdinfo" / fd):
                    writing.add(key)
            except OSError:
                continue  # closed meanwhile
    return writing


def _opened_for_writing(fdinfo: Path) -> bool:
    for line in fdinfo.read_text().splitlines():
        if line.startswith("flags:"):
            return bool(int(line.split()[1], 8) & WRITE_ACCESS)
    return True  # unreadable flags: assume the worst
