"""lazyfs: a FUSE file system that loses everything not fsynced when its process is killed.

    python3 lazyfs.py BACKING MOUNTPOINT

Mirrors the directory BACKING at MOUNTPOINT, in the spirit of LazyFS. The backing directory plays
the disk: what is in it is what survives a power cut. Killing this process (SIGKILL) is the power
cut. What it models:

- File data is a page cache held here, in memory, per file. A write lands only there; reads see
  it. It reaches the backing file only when that file is fsynced or fdatasynced (both flush
  data and size: there is no separate metadata to lose). flush/close/release do NOT persist it,
  and nothing is ever written back in the background, however old: harsher than a real kernel,
  which writes dirty pages back after some 30 s.
- Metadata goes straight to the backing directory, as if journaled at once: create, mkdir,
  rename, unlink, rmdir, chmod, chown, utimens and truncate. So a file created and written but
  never fsynced exists after the cut with its durable contents: empty if it was new, the old
  bytes and old size if it grew (appends are lost, as with delayed allocation). A file renamed
  over another before its data was synced is, after the cut, the new name with the durable (so
  possibly empty) contents. A truncate is durable at once; growing a file by truncate leaves
  zeros, as some real file systems do.
- Directory fsync is a no-op (metadata is already durable). statfs reports the backing file
  system. File locks are not implemented here, so the kernel keeps flock/fcntl locks locally
  (fusepy negotiates neither FUSE_FLOCK_LOCKS nor FUSE_POSIX_LOCKS): they work within the mount.

What it does not model: torn or reordered writes within one fsync, a disk that lies about
fsync, bit rot, hard links, symlinks, mmap, xattrs. Runs single-threaded (nothreads), so no locks.
"""

import os
import sys

from fuse import FUSE, Operations


class Dirty:
    """The cached contents of one file and the byte range written since its last fsync."""

    def __init__(self, data):
        self.data = data
        self.lo = None  # None: clean, the backing file holds exactly `data`
        self.hi = 0


class LazyFS(Operations):
    use_ns = True

    def __init__(self, root):
        self.root = os.path.realpath(root)
        self.cache = {}  # path -> Dirty; only files written since they were opened

    def _b(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    # Metadata: straight to the backing directory.

    def getattr(self, path, fh=None):
        st = os.lstat(self._b(path))
        attrs = {k: getattr(st, k) for k in (
            "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks",
            "st_atime_ns", "st_mtime_ns", "st_ctime_ns")}
        for k in ("st_atime", "st_mtime", "st_ctime"):
            attrs[k] = attrs.pop(k + "_ns")
        c = self.cache.get(path)
        if c is not None:
            attrs["st_size"] = len(c.data)
        return attrs

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._b(path))

    def statfs(self, path):
        sv = os.statvfs(self._b(path))
        return {k: getattr(sv, k) for k in (
            "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
            "f_files", "f_flag", "f_frsize", "f_namemax")}

    def mkdir(self, path, mode):
        os.mkdir(self._b(path), mode)

    def rmdir(self, path):
        os.rmdir(self._b(path))

    def chmod(self, path, mode):
        os.chmod(self._b(path), mode)

    def chown(self, path, uid, gid):
        os.chown(self._b(path), uid, gid)

    def utimens(self, path, times=None):
        os.utime(self._b(path), ns=times)

    def unlink(self, path):
        os.unlink(self._b(path))
        self.cache.pop(path, None)

    def rename(self, old, new):
        os.rename(self._b(old), self._b(new))
        # The cache follows the file, and everything under a renamed directory.
        for key in [k for k in self.cache if k == new or k.startswith(new + "/")]:
            del self.cache[key]
        for key in [k for k in self.cache if k == old or k.startswith(old + "/")]:
            self.cache[new + key[len(old):]] = self.cache.pop(key)

    def truncate(self, path, length, fh=None):
        os.truncate(self._b(path), length)
        c = self.cache.get(path)
        if c is not None:
            if length < len(c.data):
                del c.data[length:]
            else:
                c.data.extend(bytes(length - len(c.data)))
            c.hi = min(c.hi, length)
            if c.lo is not None and c.lo >= c.hi:
                c.lo = None

    # Data: through the in-memory cache.

    def create(self, path, mode, fi=None):
        self.cache.pop(path, None)
        return os.open(self._b(path), os.O_RDWR | os.O_CREAT, mode)

    def open(self, path, flags):
        try:
            return os.open(self._b(path), os.O_RDWR)
        except PermissionError:
            return os.open(self._b(path), os.O_RDONLY)

    def read(self, path, size, offset, fh):
        c = self.cache.get(path)
        if c is None:
            return os.pread(fh, size, offset)
        return bytes(c.data[offset:offset + size])

    def write(self, path, data, offset, fh):
        c = self.cache.get(path)
        if c is None:
            size = os.fstat(fh).st_size
            c = self.cache[path] = Dirty(bytearray(os.pread(fh, size, 0)))
        end = offset + len(data)
        if end > len(c.data):
            c.data.extend(bytes(end - len(c.data)))
        c.data[offset:end] = data
        c.lo = offset if c.lo is None else min(c.lo, offset)
        c.hi = max(c.hi, end)
        return len(data)

    def fsync(self, path, datasync, fh):
        c = self.cache.get(path)
        if c is not None and c.lo is not None:
            # By path: fsync is allowed on a read-only descriptor.
            fd = os.open(self._b(path), os.O_WRONLY)
            try:
                os.pwrite(fd, bytes(c.data[c.lo:c.hi]), c.lo)
                os.ftruncate(fd, len(c.data))
            finally:
                os.close(fd)
            c.lo, c.hi = None, 0
        # No os.fsync of the backing file: the "disk" here never loses its own page cache.
        return 0

    def flush(self, path, fh):
        return 0  # close() does not make data durable

    def release(self, path, fh):
        os.close(fh)
        c = self.cache.get(path)
        if c is not None and c.lo is None:
            del self.cache[path]  # clean: the backing file holds the same bytes
        return 0

    def fsyncdir(self, path, datasync, fh):
        return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: lazyfs.py BACKING MOUNTPOINT")
    FUSE(LazyFS(sys.argv[1]), sys.argv[2], foreground=True, nothreads=True)
