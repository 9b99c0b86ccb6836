"""Large checkpoints handed between local worker processes through shared memory (Linux).

A worker process that saves a large checkpoint (:data:`SHARED_BYTES` and more) lays its bytes
out in a shared-memory segment, a file in ``/dev/shm``, and writes the checkpoint file from
there (:class:`~poptune.checkpoints.LocalCheckpoints` with ``shared_memory=True``). Another
worker process on the same machine that restores that checkpoint maps the segment instead of
reading the file: its arrays are decoded in place, on the segment's pages, and the trainable's
``load_state_dict`` copies them into its live weights. The file is still written and stays the
truth; the segment is an optimisation that any doubt sends back to the file.

What makes a segment safe to use:

- Its name is made of what identifies the checkpoint: the user id, the database id and
  population id of its folder (never the population's name, which is user text), member, step
  and a hash of the recorded path and checksum (the path is unique per save attempt). Two
  populations, two copies of one database, or two users never share a name.
- A reader uses a segment only if it is a regular file of its own user that no one else may
  write, of the recorded size, whose header names the recorded checksum, and whose bytes then
  have that checksum; anything else (absent, foreign, torn, stale) and the file is read.
- A published segment never changes while anyone maps it: a reader holds a shared ``flock`` on
  it for as long as its mapping lives (the decoded arrays keep the mapping alive, and Python's
  ``mmap`` keeps a duplicate of the descriptor, which holds the lock), and a writer reuses a
  segment's pages only under an exclusive lock, which it cannot get while a reader maps it.

Memory stays bounded: a worker keeps at most :data:`SEGMENTS` segments (the latest checkpoint
of each member it saved last, oldest dropped first), overwrites a member's segment when it saves
the member again (or one whose checkpoint was collected), leaves half of ``/dev/shm`` and a
quarter of the memory free, and deletes its segments when it stops. The
segments of a killed worker are removed by :func:`sweep_segments`, which the local-process
runner calls before it starts its workers and after they stopped, and ``poptune delete``
calls for the population it deletes: it removes only segments
that are provably the population's own (their name, and their owner) and whose writing
process is gone.

Segments are files opened with ``os.open`` rather than ``multiprocessing.shared_memory``:
before Python 3.13 every process that attaches a ``SharedMemory`` registers it with its own
resource tracker, which unlinks it (with a "leaked shared_memory objects" warning) when that
process exits, taking the segment from under the others (CPython issues 82300 and 116849).

The handover is off unless ``POPTUNE_SHARED_MEMORY=1`` asks for it (see :func:`available`:
measured, it did not pay in ``benchmarks/large_state.py``); it is off anyway on other
platforms and where ``/dev/shm`` is not a tmpfs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import mmap
import os
import re
import stat
import struct
import sys
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from functools import cache

from .records import CheckpointRef

__all__ = ["SEGMENTS", "SHARED_BYTES", "Segment", "Segments", "available", "sweep_segments"]

log = logging.getLogger(__name__)

#: Checkpoints of at least this many bytes are handed over through shared memory: below it,
#: reading the file costs a few milliseconds and a segment would only take memory.
SHARED_BYTES = 16 * 2**20
#: The most segments one worker process keeps (the latest checkpoints it saved).
SEGMENTS = 4

ROOT = "/dev/shm"
_PAGE = mmap.PAGESIZE
_HEADER = 4096  # a page: the payload, and so every array in it, stays page-aligned
_MAGIC = b"POPTUNE\x00SEGMENT\x00"
_FIELDS = struct.Struct("<16sQQQH")  # magic, writer pid, writer start time, size, checksum length
_CHECKSUM_MAX = _HEADER - _FIELDS.size
_FOLDER = re.compile(r"db-([0-9a-f]{16})/population-([0-9]+)")
_PATH = re.compile(r"(db-[0-9a-f]{16}/population-[0-9]+)/member-[0-9]+/step-[0-9]+-[0-9a-f]+\.ckpt")


def available() -> bool:
    """Whether this process hands checkpoints over through shared memory: asked for with
    ``POPTUNE_SHARED_MEMORY=1``, on Linux with a writable tmpfs at ``/dev/shm``.

    Off by default: in ``benchmarks/large_state.py`` it cost more than it saved (each save
    copies the state into shared memory, and a new segment's pages are slow to allocate on the
    development machine), so it pays only where exploits between worker processes are many
    against the saves (see docs/overhead.md)."""
    if os.environ.get("POPTUNE_SHARED_MEMORY", "0").lower() not in ("1", "true", "yes"):
        return False
    return _tmpfs()


@cache
def _tmpfs() -> bool:
    if not sys.platform.startswith("linux") or not os.access(ROOT, os.W_OK | os.X_OK):
        return False
    try:
        with open("/proc/self/mounts") as mounts:
            return any(
                fields[1] == ROOT and fields[2] == "tmpfs"
                for fields in (line.split() for line in mounts)
                if len(fields) > 2
            )
    except OSError:
        return False


def _prefix(database_id: str, population_id: int) -> str:
    """The start of every segment name of a population (the user's, on this machine)."""
    return f"poptune-{os.geteuid()}-{database_id}-{population_id}-"


def _folder_prefix(folder: str) -> str | None:
    """The segment prefix of a population folder written by this poptune, else ``None``
    (folders without a database id are never handed over: they may be shared)."""
    match = _FOLDER.fullmatch(folder)
    return None if match is None else _prefix(match[1], int(match[2]))


def segment_name(ref: CheckpointRef) -> str | None:
    """The name of the segment that holds checkpoint ``ref``, or ``None`` if it has none (a
    path poptune does not write): built from validated parts only, never from user text.

    Example:
        >>> ref = CheckpointRef(2, 5, "db-0123456789abcdef/population-1/member-0002/"
        ...     "step-000005-0123456789ab.ckpt", 10, "xxh3_128:00")
        >>> segment_name(ref).split("-")[2:6]
        ['0123456789abcdef', '1', '2', '5']
    """
    match = _PATH.fullmatch(ref.path) if isinstance(ref.path, str) else None
    prefix = None if match is None else _folder_prefix(match[1])
    if prefix is None:
        return None
    token = hashlib.sha256(f"{ref.path}\n{ref.checksum}".encode()).hexdigest()[:32]
    return f"{prefix}{int(ref.member)}-{int(ref.step)}-{token}"


def _padded(size: int) -> int:
    return -(-size // _PAGE) * _PAGE


def _path(name: str) -> str:
    return f"{ROOT}/{name}"


def _process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or ``None`` if there is none: with
    the pid, it names a process for good (pids are reused, start times of one pid are not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            fields = file.read().rpartition(b")")[2].split()
        return int(fields[19])  # field 22 of proc(5); the first two end at the ")"
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Segment:
    """A segment reserved by a writer (under a temporary name, exclusively locked): fill
    :attr:`view`, then :meth:`Segments.publish` or :meth:`Segments.abort` it."""

    name: str
    fd: int
    member: int
    size: int
    mapping: mmap.mmap
    #: the payload, page-aligned, ``size`` bytes followed by the padding to a whole page
    view: memoryview


@dataclass
class _Published:
    fd: int  # kept open: the writer locks it exclusively before reusing the segment
    member: int | None  # None: its checkpoint was collected, its pages wait to be reused
    length: int


class Segments:
    """The shared-memory segments of one worker process: reserved, filled and published by
    its checkpoint writer, read by every worker process of the machine.

    Thread-safe: the background writer publishes while the training thread reads and the
    housekeeping thread discards.
    """

    def __init__(self, keep: int | None = None) -> None:
        self.keep = SEGMENTS if keep is None else keep
        self._published: OrderedDict[str, _Published] = OrderedDict()
        self._reserved: set[str] = set()
        self._lock = threading.Lock()
        self._warned = False

    # --- the writer ------------------------------------------------------------------------

    def reserve(self, folder: str, member: int, size: int) -> Segment | None:
        """A segment for a new checkpoint of ``member`` in ``folder`` of ``size`` bytes; the
        member's previous segment (else one whose checkpoint was collected, else, with
        :attr:`keep` segments, the oldest) is reused when no reader maps it. ``None`` if the
        folder is not handed over or memory is short."""
        prefix = _folder_prefix(folder)
        if prefix is None:
            return None
        length = _HEADER + _padded(size)
        with self._lock:
            old = next((n for n, p in self._published.items() if p.member == member), None)
            if old is None:  # one whose checkpoint was collected
                old = next((n for n, p in self._published.items() if p.member is None), None)
            if old is None and len(self._published) >= self.keep:
                old = next(iter(self._published))
            published = self._published.pop(old) if old is not None else None
        try:
            segment = None
            if old is not None and published is not None:
                segment = self._reuse(old, published, prefix, member, size, length)
            if segment is None and self._room(length):
                segment = self._create(prefix, member, size, length)
        except OSError as error:  # no space, a name taken meanwhile: the file path only
            log.debug("No shared-memory segment for member %d: %s", member, error)
            return None
        return segment

    def _reuse(
        self, old: str, published: _Published, prefix: str, member: int, size: int, length: int
    ) -> Segment | None:
        """``old`` renamed to a new temporary name and resized, if no reader maps it; else it
        is unlinked (its readers keep their pages) and ``None`` returned."""
        try:
            fcntl.flock(published.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _unlink(old)
            os.close(published.fd)
            return None
        temporary = f"{prefix}t{uuid.uuid4().hex}"
        try:
            if length > published.length and not self._room(length - published.length):
                raise OSError(errno.ENOSPC, "leaving room in /dev/shm and memory")
            os.rename(_path(old), _path(temporary))  # from here no reader finds it by name
        except OSError:
            _unlink(old)
            os.close(published.fd)
            return None
        with self._lock:
            self._reserved.add(temporary)
        return self._prepare(temporary, published.fd, member, size, length)

    def _create(self, prefix: str, member: int, size: int, length: int) -> Segment | None:
        temporary = f"{prefix}t{uuid.uuid4().hex}"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(_path(temporary), flags, 0o600)
        with self._lock:
            self._reserved.add(temporary)
        fcntl.flock(fd, fcntl.LOCK_EX)  # new: nobody else can hold it
        return self._prepare(temporary, fd, member, size, length)

    def _prepare(self, temporary: str, fd: int, member: int, size: int, length: int) -> Segment:
        """Size the segment, reserve its pages (so that filling it cannot fail with SIGBUS on
        a full tmpfs: ``posix_fallocate`` raises instead), map it, and mark it unpublished."""
        try:
            os.ftruncate(fd, length)
            os.posix_fallocate(fd, 0, length)
            mapping = mmap.mmap(
                fd,
                length,
                flags=mmap.MAP_SHARED | mmap.MAP_POPULATE,
                prot=mmap.PROT_READ | mmap.PROT_WRITE,
            )
        except BaseException:
            self._drop(temporary, fd)
            raise
        # The writer's pid and start time first, so that a sweep can tell a live writer's
        # segment from a killed one's; size and checksum only once it is complete.
        mapping[: _FIELDS.size] = _FIELDS.pack(_MAGIC, os.getpid(), _own_start(), 0, 0)
        view = memoryview(mapping)[_HEADER:length]
        return Segment(temporary, fd, member, size, mapping, view)

    def publish(self, segment: Segment, ref: CheckpointRef) -> None:
        """Make a filled segment findable as checkpoint ``ref`` (whose bytes it holds)."""
        name = segment_name(ref)
        checksum = ref.checksum.encode()
        try:  # never raises: the checkpoint is written, the segment is only an optimisation
            if name is None or len(checksum) > _CHECKSUM_MAX or ref.size != segment.size:
                raise ValueError(f"it does not hold checkpoint {ref.path!r:.200}")
            fields = _FIELDS.pack(_MAGIC, os.getpid(), _own_start(), ref.size, len(checksum))
            segment.mapping[: len(fields) + len(checksum)] = fields + checksum
            segment.view.release()
            segment.mapping.close()
            # A name another user planted is not replaced (EPERM in /dev/shm, which is sticky).
            os.rename(_path(segment.name), _path(name))
        except (OSError, ValueError, BufferError) as error:
            log.debug("Shared-memory segment %s not published: %s", segment.name, error)
            self.abort(segment)
            return
        fcntl.flock(segment.fd, fcntl.LOCK_UN)  # readers may lock it now
        with self._lock:
            self._reserved.discard(segment.name)
            length = _HEADER + _padded(segment.size)
            self._published[name] = _Published(segment.fd, segment.member, length)
            evicted = []
            while len(self._published) > self.keep:
                evicted.append(self._published.popitem(last=False))
        for old, published in evicted:
            _unlink(old)
            os.close(published.fd)

    def abort(self, segment: Segment) -> None:
        """Give up a reserved segment (its checkpoint was not written)."""
        segment.view.release()
        with contextlib.suppress(BufferError):  # a view still held: closed when it goes
            segment.mapping.close()
        self._drop(segment.name, segment.fd)

    def _drop(self, name: str, fd: int) -> None:
        _unlink(name)
        os.close(fd)
        with self._lock:
            self._reserved.discard(name)

    def _room(self, length: int) -> bool:
        """Whether ``length`` more bytes of shared memory leave half of ``/dev/shm`` and a
        quarter of the memory free (a segment's pages are memory no one else can use)."""
        try:
            shm = os.statvfs(ROOT)
            room = shm.f_bavail * shm.f_frsize - length >= shm.f_blocks * shm.f_frsize / 2
            memory = _meminfo()
            if memory is not None:
                room = room and memory[1] - length >= memory[0] / 4
        except OSError:
            room = False
        if not room and not self._warned:
            self._warned = True
            log.info(
                "Shared memory is short: large checkpoints of this worker are handed over "
                "through their files only, until segments are freed."
            )
        return room

    # --- readers ---------------------------------------------------------------------------

    def open(self, ref: CheckpointRef) -> memoryview | None:
        """The bytes of checkpoint ``ref`` from its segment, mapped copy-on-write (decoded
        arrays may be written without changing the segment), or ``None`` if there is no
        segment that is this user's, of the recorded size, and headed by the recorded checksum.
        The caller still verifies the bytes' checksum."""
        name = segment_name(ref)
        if name is None or ref.size <= 0:
            return None
        try:
            fd = os.open(_path(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:  # absent: not saved on this machine, or taken back
            return None
        try:
            # Held as long as the mapping lives (mmap keeps a duplicate of the descriptor):
            # the writer does not reuse a segment that someone maps.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            info = os.fstat(fd)
            length = _HEADER + _padded(ref.size)
            if (
                not stat.S_ISREG(info.st_mode)
                or info.st_uid != os.geteuid()
                or info.st_mode & 0o077
                or info.st_size != length
            ):
                log.debug("Shared-memory segment %s is not one this worker trusts.", name)
                return None
            mapping = mmap.mmap(
                fd,
                length,
                flags=mmap.MAP_PRIVATE,  # not MAP_POPULATE: it would copy every page (COW)
                prot=mmap.PROT_READ | mmap.PROT_WRITE,
            )
        except OSError as error:  # being reused by its writer, or vanished meanwhile
            log.debug("Shared-memory segment %s cannot be mapped: %s", name, error)
            return None
        finally:
            os.close(fd)
        magic, _, _, size, length_of_checksum = _FIELDS.unpack_from(mapping)
        recorded = bytes(
            mapping[_FIELDS.size : _FIELDS.size + min(length_of_checksum, _CHECKSUM_MAX)]
        )
        if magic != _MAGIC or size != ref.size or recorded != ref.checksum.encode():
            log.debug("Shared-memory segment %s holds another checkpoint.", name)
            mapping.close()
            return None
        return memoryview(mapping)[_HEADER : _HEADER + ref.size]

    # --- cleaning up -----------------------------------------------------------------------

    def discard(self, ref: CheckpointRef) -> None:
        """Checkpoint ``ref`` was collected (its file is being deleted): if this process wrote
        its segment, the next save reuses the segment's pages (new pages cost more to
        allocate than to overwrite). The segment of another process stays its writer's, within
        its bound, until it reuses or deletes it."""
        name = segment_name(ref)
        if name is None:
            return
        with self._lock:
            published = self._published.get(name)
            if published is not None:
                published.member = None
                self._published.move_to_end(name, last=False)

    def close(self) -> None:
        """Delete every segment this process published or reserved (the worker stops)."""
        with self._lock:
            published, self._published = self._published, OrderedDict()
            reserved, self._reserved = self._reserved, set()
        for name, entry in published.items():
            _unlink(name)
            os.close(entry.fd)
        for name in reserved:  # a writer stopped in the middle of a save
            _unlink(name)


def _unlink(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_path(name))


def _ours(name: str) -> bool:
    """Whether ``/dev/shm/name`` is a regular file of this user (not a link, not another's)."""
    try:
        info = os.lstat(_path(name))
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid()


_STARTS: dict[int, int | None] = {}


def _own_start() -> int:
    pid = os.getpid()  # per pid: a forked worker is another process
    if pid not in _STARTS:
        _STARTS[pid] = _process_start(pid)
    return _STARTS[pid] or 0


def _meminfo() -> tuple[int, int] | None:
    """``(MemTotal, MemAvailable)`` in bytes, or ``None`` if the kernel does not say."""
    values: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    if len(values) < 2:
        return None
    return values["MemTotal"], values["MemAvailable"]


def sweep_segments(database_id: str | None, population_id: int) -> list[str]:
    """Delete the population's segments left by worker processes that are gone (killed
    before they could delete them), saying how many in the log; return their names.

    Only segments that are provably the population's own are touched: named for its database
    and population, regular files of this user, and either torn or written by a process that
    no longer runs (a worker of the population still running here keeps its segments).
    """
    if database_id is None or not available():
        return []
    prefix = _prefix(database_id, population_id)
    shape = re.compile(re.escape(prefix) + r"(?:[0-9]+-[0-9]+-[0-9a-f]{32}|t[0-9a-f]{32})")
    try:
        names = [n for n in os.listdir(ROOT) if n.startswith(prefix) and shape.fullmatch(n)]
    except OSError:
        return []
    removed = []
    for name in names:
        if not _ours(name) or _writer_alive(name):
            continue
        _unlink(name)
        removed.append(name)
    if removed:
        log.info("Removed %d shared-memory segment(s) left by killed workers.", len(removed))
    return removed


def _writer_alive(name: str) -> bool:
    """Whether the process that wrote segment ``name`` still runs (as its header says)."""
    try:
        fd = os.open(_path(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        head = os.pread(fd, _FIELDS.size, 0)
    except OSError:
        return False
    finally:
        os.close(fd)
    if len(head) < _FIELDS.size:
        return False
    magic, pid, start, _, _ = _FIELDS.unpack(head)
    if magic != _MAGIC or pid <= 0:
        return False
    return start != 0 and _process_start(pid) == start
