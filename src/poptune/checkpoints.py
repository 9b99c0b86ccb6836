"""Where member states live: one immutable, checksummed file per (member, step, attempt).

A checkpoint is written to a temporary file, flushed and renamed into place, so a reader never
sees a partial file. Its path, size and checksum are committed to the storage together with the
interval that produced it; a checkpoint is always found through that row, never by listing a
folder, and its checksum is verified before its contents are decoded. Decoding uses poptune's
own format (:mod:`poptune.serialization`), which never executes code from the file.

Disk use stays bounded because the storage's ``collect_garbage`` drops the rows no one needs
(see :meth:`poptune.storage.Storage.collect_garbage`) and the worker then deletes their files.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import mmap
import os
import re
import stat
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import xxhash

from . import handover, serialization
from ._redact import redact_text, redact_url
from ._validation import check_int, invalid
from .errors import CheckpointCorrupt, CheckpointError, CheckpointMissing, UnsafeCheckpointPath
from .records import CheckpointRef

log = logging.getLogger(__name__)

#: Checkpoints of at least this many bytes are written and read with direct I/O (``O_DIRECT``)
#: when the filesystem allows it: their bytes go between the process and the disk without a
#: copy in the page cache. For a 200 MB state this takes the kernel's CPU time per save from
#: 25 ms (a recycled file) or 450-650 ms (a new one, whose page-cache pages must be allocated)
#: to about 10 ms, which matters because a background save competes for the cores training
#: uses; and writing checkpoints no longer evicts the page cache that data loading relies on.
DIRECT_BYTES = 16 * 2**20
_ALIGN = 4096  # offsets, lengths and addresses of direct I/O: a multiple of any block size
_STAGING = 1 * 2**20  # the aligned buffer that direct writes go through
#: Checkpoints under this size are laid out in memory and written in one call: for them a
#: file's Python overhead (a write or two per array) costs more than the bytes. Their files
#: are recycled by the store that collected them (:data:`SMALL_SPARES`), from its own list:
#: the shared pool's directory listing would cost more than the file. Above it, the pool is
#: shared by the population's workers: a new 1 MB file costs 0.4 ms of CPU here, an
#: overwritten one 0.1 ms.
PACKED_BYTES = 256 * 2**10

__all__ = [
    "CheckpointCorrupt",
    "CheckpointError",
    "CheckpointMissing",
    "CheckpointStore",
    "FsspecCheckpoints",
    "LocalCheckpoints",
    "UnsafeCheckpointPath",
    "confined",
    "open_checkpoints",
    "population_folder",
    "population_folders",
    "sweep_orphans",
]


#: The folder of a population written by this poptune: ``db-<database id>/population-<id>``.
#: Populations written before databases had an id used ``population-<id>`` alone, which two
#: databases sharing a checkpoint folder both used; their recorded files are still read and
#: deleted through their rows, but never swept by listing the folder.
_FOLDER = re.compile(r"(?:db-[0-9a-f]{16}/)?population-[0-9]+")
_COMPONENT = re.compile(r"[A-Za-z0-9_.-]+")


def population_folder(database_id: str, population_id: int) -> str:
    """The folder, relative to the checkpoint root, that new checkpoints of a population go to.

    It names the database (an id its storage created once, see
    :meth:`poptune.storage.Storage.database_id`) and the population, so that databases sharing
    one checkpoint folder (``runs/a.db`` and ``runs/b.db`` beside each other) never share a
    population folder, and a sweep of the folder only ever sees files of its own population.

    Example:
        >>> population_folder("0123456789abcdef", 3)
        'db-0123456789abcdef/population-3'
    """
    folder = f"db-{database_id}/population-{population_id}"
    if _FOLDER.fullmatch(folder) is None:
        raise invalid(
            "database_id",
            "16 hexadecimal digits",
            database_id,
            "population_folder",
            hint="This database id was not written by poptune.",
        )
    return folder


def population_folders(database_id: str | None, population_id: int) -> tuple[str, ...]:
    """The folders a population's recorded checkpoints may lie in: its own, and the one its
    checkpoints used before databases had an id (``population-<id>``)."""
    legacy = f"population-{population_id}"
    if database_id is None:
        return (legacy,)
    return (population_folder(database_id, population_id), legacy)


def confined(path: str, folders: Sequence[str]) -> str:
    """``path`` if it is a plain relative path inside one of ``folders``, else refuse it.

    Every checkpoint path read from the storage goes through this before a file is read,
    swept or deleted: a row written by anyone who can write to a shared database must not
    reach a file outside the population's folder.

    Raises:
        UnsafeCheckpointPath: for ``..``, ``.``, empty or absolute components, backslashes,
            control characters, or a path in no folder of ``folders``.

    Example:
        >>> confined("population-1/member-0000/step-000001-ab.ckpt", ["population-1"])
        'population-1/member-0000/step-000001-ab.ckpt'
    """
    parts = path.split("/") if isinstance(path, str) else [""]
    safe = all(_COMPONENT.fullmatch(part) and part not in (".", "..") for part in parts) and any(
        len(parts) > folder.count("/") + 1 and "/".join(parts[: folder.count("/") + 1]) == folder
        for folder in folders
    )
    if not safe:
        raise UnsafeCheckpointPath(
            f"The checkpoint path {_shown(path)} read from the storage is not inside the "
            f"population's checkpoint folder ({' or '.join(folders) or 'population-<id>'}): "
            "refusing to read or delete it. The storage's rows were changed by something other "
            "than poptune; check who can write to the database."
        )
    return path


def _shown(path: object) -> str:
    """A path for a message: quoted, control characters escaped, at most 200 characters."""
    text = repr(path)
    return text if len(text) <= 200 else f"{text[:200]}...'"


def _layout(path: str) -> str:
    """``path`` if it has the shape of a checkpoint path in some population folder; the
    stores' own last line of defence, for callers that do not know the population."""
    parts = path.split("/")
    folder = "/".join(parts[:2]) if parts[0].startswith("db-") else parts[0]
    return confined(path, [folder] if _FOLDER.fullmatch(folder) else [])


class CheckpointStore(Protocol):
    """Saves, loads and deletes member states; paths in refs are relative to the store and
    lie in a population folder (:func:`population_folder`)."""

    url: str

    def save(self, folder: str, member: int, step: int, state: Any) -> CheckpointRef:
        """Write ``state`` atomically under ``folder`` (a population's folder) and return its
        reference (path, size, checksum)."""
        ...

    def load(self, ref: CheckpointRef) -> Any:
        """Read, verify and decode the checkpoint. Raises :class:`CheckpointCorrupt`."""
        ...

    def delete(self, ref: CheckpointRef) -> None:
        """Delete the checkpoint's file (or keep it to overwrite later, under another name, so
        that no reader finds it again); a file already gone is fine."""
        ...

    def files(self, folder: str) -> dict[str, float]:
        """Every file stored under a population's ``folder`` (relative path -> modification
        time)."""
        ...

    def close(self) -> None:
        """Release what the store keeps between calls (spare files); it stays usable."""
        ...

    def remove(self, path: str) -> None:
        """Delete a stored file by its relative path; a file already gone is fine."""
        ...


#: How new checkpoints are checksummed: XXH3 with 128 bits, which catches a torn or corrupted
#: file as surely as SHA-256 (nobody forges checkpoints) at a fifteenth of its CPU time: 7 ms
#: instead of 111 for 200 MB here. Recorded as ``"xxh3_128:<hex>"``; a bare 64-digit hex
#: checksum (checkpoints written before) is a SHA-256 and is still verified as one.
CHECKSUM = "xxh3_128"


def checksum(data: Any) -> str:
    """The checksum of ``data`` (bytes-like) as new checkpoints record it.

    Example:
        >>> checksum(b"poptune")[:9]
        'xxh3_128:'
    """
    return f"{CHECKSUM}:{xxhash.xxh3_128(data).hexdigest()}"


def _verify_checksum(data: Any, recorded: str) -> str | None:
    """``None`` if ``data`` matches the ``recorded`` checksum, else the checksum it has."""
    algorithm, _, _ = recorded.rpartition(":")
    if algorithm == CHECKSUM:
        actual = checksum(data)
    elif not algorithm and len(recorded) == 64:  # written before checksums were named
        actual = hashlib.sha256(data).hexdigest()
    else:
        actual = f"(a checksum this poptune cannot compute: {algorithm or recorded!r})"
    return None if actual == recorded else actual


class _HashingWriter:
    """A file wrapper that checksums and counts what passes through it."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self.digest = xxhash.xxh3_128()
        self.size = 0

    @property
    def checksum(self) -> str:
        """The checksum of everything written, as :func:`checksum` gives it."""
        return f"{CHECKSUM}:{self.digest.hexdigest()}"

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.digest.update(view)
        self.size += len(view)
        return self._file.write(view)


_SPARES = ".spares"

#: The files of small collected checkpoints (under :data:`PACKED_BYTES`) one store keeps to
#: overwrite, per population: at most 64 MB of disk. A block of 64 members collects 64 at a
#: time; creating a file and deleting one cost 0.08 to 1 ms each on this machine's ext4 (it
#: varied by the minute), overwriting one 0.07 ms.
SMALL_SPARES = 256


class LocalCheckpoints:
    """Checkpoints in a local (or shared, POSIX) folder.

    Writes are atomic against crashed or killed processes (temporary file, then rename). With
    ``fsync=True`` (or ``POPTUNE_FSYNC=1`` in the environment, which reaches worker processes
    too) each file is also flushed to disk before the rename, so it survives a power loss; that
    costs about a millisecond per megabyte here, so it is off by default. A file torn by a power
    loss is caught by its checksum either way.

    Checkpoints of :data:`DIRECT_BYTES` (16 MB) and more are written and read with direct I/O
    (``O_DIRECT``), around the page cache, where the filesystem allows it (else the store falls
    back to ordinary I/O by itself); ``direct=False`` (or ``POPTUNE_DIRECT_IO=0``) turns it off.
    The files of collected checkpoints of :data:`PACKED_BYTES` (256 KB) and more go to a pool
    of up to ``spares`` files per population, shared by every worker writing to the folder, and
    later saves overwrite them instead of allocating new files; smaller ones are laid out in
    memory and written in one call, and their files, once collected, are kept by the store
    that collected them (up to :data:`SMALL_SPARES` per population) for its own next saves to
    overwrite.

    With ``shared_memory=True`` (what the workers of :class:`~poptune.LocalProcessRunner` use),
    a checkpoint of :data:`~poptune.handover.SHARED_BYTES` (16 MB) or more is laid out in a
    shared-memory segment and its file written from there, and a checkpoint is read from its
    segment, verified by its checksum, when one is on this machine: worker processes hand large
    donors over through memory (see :mod:`poptune.handover`). It takes ``POPTUNE_SHARED_MEMORY=1``
    as well, on Linux with a tmpfs ``/dev/shm``: off by default.

    Example:
        >>> store = LocalCheckpoints("runs/checkpoints")
        >>> ref = store.save("population-1", member=0, step=1, state={"w": [1.0]})
        >>> store.load(ref)
        {'w': [1.0]}
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        fsync: bool | None = None,
        spares: int = 4,
        direct: bool | None = None,
        shared_memory: bool = False,
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = str(self.root)
        self._real_root = os.path.realpath(self.root) + os.sep  # what every path must stay in
        if fsync is None:
            fsync = os.environ.get("POPTUNE_FSYNC", "0").lower() in ("1", "true", "yes")
        self.fsync = fsync
        if direct is None:
            direct = os.environ.get("POPTUNE_DIRECT_IO", "1").lower() not in ("0", "false", "no")
        self.direct = direct and hasattr(os, "O_DIRECT")
        self._stagings: list[mmap.mmap] = []
        # Files of collected checkpoints, kept to be overwritten by the next save instead of
        # deleted: writing into pages the page cache already holds costs a fraction of
        # allocating new ones (for a 200 MB state, about 25 ms of system time instead of 300 to
        # 650 here), and the filesystem does not allocate the blocks again. The spares of a
        # population are one pool in its folder, shared by every worker that writes there: the
        # worker that collects a file is often not the one that writes next.
        self.spares = check_int("spares", spares, 0, owner="LocalCheckpoints")
        self._mine: set[Path] = set()  # spares this store put in a pool, removed by close()
        self._small: dict[Path, list[Path]] = {}  # its small spares, by pool: no listing
        # The member folders this store made and found inside the root, by relative path, with
        # the folders from the root down to them: a save checks only those for a symbolic link
        # (a block saves 64 states at once: no mkdir and no walk from / per member).
        self._folders: dict[str, tuple[Path, ...]] = {}
        self._lock = threading.Lock()
        #: this process's shared-memory segments, if large checkpoints are handed over
        self.segments = handover.Segments() if shared_memory and handover.available() else None

    def save(self, folder: str, member: int, step: int, state: Any) -> CheckpointRef:
        """Write ``state`` to a unique file in ``folder``, renamed into place only once
        complete."""
        relative = _new_path(folder, member, step)
        parent, _, name = relative.rpartition("/")
        chain = self._folders.get(parent)
        try:
            if chain is None or any(os.path.islink(path) for path in chain):
                chain = self._made(relative)
            return self._save(folder, member, step, state, relative, chain[-1] / name)
        except FileNotFoundError:
            if self._folders.pop(parent, None) is None:
                raise
            final = self._made(relative)[-1] / name  # the folder went meanwhile: made again
            return self._save(folder, member, step, state, relative, final)

    def _made(self, relative: str) -> tuple[Path, ...]:
        """The folders from the root down to the new file ``relative``'s: checked to resolve
        inside the root (symbolic links followed, so a link out of it is refused), made, and
        remembered."""
        directory = self._resolve(relative).parent
        directory.mkdir(parents=True, exist_ok=True)
        parts = directory.relative_to(self.root).parts
        folders = tuple(self.root.joinpath(*parts[: i + 1]) for i in range(len(parts)))
        self._folders[relative.rpartition("/")[0]] = folders
        return folders

    def _save(
        self, folder: str, member: int, step: int, state: Any, relative: str, final: Path
    ) -> CheckpointRef:
        temporary = final.with_name(f".{final.name}.tmp")
        encoded = serialization.encode(state)
        direct = self.direct and encoded.size >= DIRECT_BYTES
        segment = None
        if self.segments is not None and encoded.size >= handover.SHARED_BYTES:
            segment = self.segments.reserve(folder, member, encoded.size)
        try:
            if segment is not None:
                digest = self._write_from_segment(temporary, encoded, segment, direct)
            else:
                try:
                    digest = self._write(temporary, encoded, direct)
                except _DirectRefused as refused:
                    self._refused(refused)
                    digest = self._write(temporary, encoded, direct=False)
            os.replace(temporary, final)
        except BaseException:
            temporary.unlink(missing_ok=True)
            if segment is not None and self.segments is not None:
                self.segments.abort(segment)
            raise
        ref = CheckpointRef(member, step, relative, encoded.size, digest)
        if segment is not None and self.segments is not None:
            self.segments.publish(segment, ref)
        return ref

    def _refused(self, refused: _DirectRefused) -> None:
        log.info(
            "Direct I/O refused in %s (%s); writing through the page cache.",
            self.root,
            refused.__cause__,
        )
        self.direct = False

    def _write_from_segment(
        self,
        temporary: Path,
        encoded: serialization.Encoded,
        segment: handover.Segment,
        direct: bool,
    ) -> str:
        """Lay ``encoded`` out in the shared-memory ``segment``, checksumming each piece while
        it is in the CPU's cache, then write ``temporary`` from there; return its checksum.
        The segment is the staging buffer: the state's memory is read once."""
        digest = _fill(segment.view, encoded)
        size = encoded.size
        recycled = self._take_spare(temporary) or temporary.exists()
        if direct:
            try:
                _write_direct(temporary, segment.view, size, self.fsync)
                return digest
            except _DirectRefused as refused:
                self._refused(refused)
        with self._buffered(temporary, recycled) as file:
            file.write(segment.view[:size])
        return digest

    def _write(self, temporary: Path, encoded: serialization.Encoded, direct: bool) -> str:
        """Write ``encoded`` into ``temporary`` (a recycled spare if there is one, for a large
        state); return its checksum."""
        if encoded.size < PACKED_BYTES:
            data = encoded.pack()
            with self._buffered(temporary, self._take_small(temporary)) as file:
                file.write(data)
            return checksum(data)
        recycled = self._take_spare(temporary) or temporary.exists()
        if direct:
            # The file checksums what it copies into its staging buffer, from there: the
            # state's memory is read once, not once to hash and once to copy.
            with self._staging() as staging, _DirectFile(temporary, staging) as direct_file:
                encoded.write(direct_file)  # type: ignore[arg-type]
                direct_file.finish()  # the last partial block, and the exact size
                if self.fsync:
                    os.fsync(direct_file.fileno())
            return direct_file.checksum
        with self._buffered(temporary, recycled) as file:
            writer = _HashingWriter(file)
            encoded.write(writer)  # type: ignore[arg-type]
        return writer.checksum

    @contextlib.contextmanager
    def _buffered(self, temporary: Path, recycled: bool) -> Iterator[BinaryIO]:
        """``temporary`` open for writing through the page cache (a recycled spare is
        overwritten in place); once written, cut to what was written (a spare may have been
        longer) and flushed, to the disk too with ``fsync``."""
        with open(temporary, "r+b" if recycled else "wb") as file:
            yield file
            file.truncate()
            file.flush()
            if self.fsync:
                os.fsync(file.fileno())

    @contextlib.contextmanager
    def _staging(self) -> Iterator[mmap.mmap]:
        """An aligned staging buffer (an anonymous mapping: page-aligned), kept for reuse."""
        with self._lock:
            staging = self._stagings.pop() if self._stagings else None
        if staging is None:
            staging = mmap.mmap(-1, _STAGING)
        try:
            yield staging
        finally:
            with self._lock:
                self._stagings.append(staging)

    def _take_spare(self, temporary: Path) -> bool:
        """Move a spare file of the population to ``temporary``, if there is one."""
        with contextlib.suppress(FileNotFoundError):
            for spare in self._pool(temporary).iterdir():
                try:
                    os.replace(spare, temporary)  # atomic: only one writer gets each spare
                except FileNotFoundError:  # taken by another writer, or swept as an orphan
                    continue
                with self._lock:
                    self._mine.discard(spare)
                return _fresh(temporary)
        return False

    def _take_small(self, temporary: Path) -> bool:
        """Move a small spare this store kept (:meth:`_keep_small`) to ``temporary``, if it
        has one left."""
        pool = self._pool(temporary)
        while True:
            with self._lock:
                spares = self._small.get(pool)
                if not spares:
                    return False
                spare = spares.pop()
                self._mine.discard(spare)
            try:
                os.replace(spare, temporary)
            except FileNotFoundError:  # swept as an orphan meanwhile
                continue
            return _fresh(temporary)

    def _keep_small(self, path: Path) -> None:
        """Keep the file of a collected small checkpoint as this store's spare (under a name
        nobody looks up), or delete it if the store keeps :data:`SMALL_SPARES` already (or
        ``spares=0``)."""
        pool = self._pool(path)
        with self._lock:
            kept = self._small.setdefault(pool, [])
            full = self.spares == 0 or len(kept) >= SMALL_SPARES
        if full:
            path.unlink(missing_ok=True)
            return
        spare = _into_pool(path, pool)
        if spare is not None:
            with self._lock:
                kept.append(spare)
                self._mine.add(spare)

    def _collected(self, relative: str) -> Path:
        """The file at ``relative`` (read from the storage) to delete: as :meth:`_resolve` finds
        it, but in a folder this store made, by checking the folders below the root and the
        file for a symbolic link instead of walking the path from /."""
        _layout(relative)
        parent, _, name = relative.rpartition("/")
        chain = self._folders.get(parent)
        if chain is None:
            return self._resolve(relative)
        path = chain[-1] / name
        if any(os.path.islink(folder) for folder in chain) or os.path.islink(path):
            return self._resolve(relative)  # refused if it leads out of the root
        return path

    def _pool(self, path: Path) -> Path:
        """The spare pool of the population that ``path`` (a member's file) belongs to."""
        return path.parent.parent / _SPARES

    def _resolve(self, relative: str) -> Path:
        """The file at ``relative`` (a path read from the storage), refused unless it has the
        shape of a checkpoint path and resolves, symbolic links followed, inside the root."""
        path = self.root / _layout(relative)
        if not os.path.realpath(path).startswith(self._real_root):
            raise UnsafeCheckpointPath(
                f"The checkpoint path {_shown(relative)} leads out of the checkpoint folder "
                f"{self.root} through a symbolic link: refusing to read or delete it. Remove "
                "the link, or check who can write to the folder."
            )
        return path

    def load(self, ref: CheckpointRef) -> Any:
        """Read the file (or its shared-memory segment, see ``shared_memory``), check its size
        and checksum, then decode it."""
        path = self._resolve(ref.path)
        if self.segments is not None and ref.size >= handover.SHARED_BYTES:
            shared = self.segments.open(ref)
            if shared is not None:
                try:
                    return _verified(shared, ref, f"in shared memory for {path}")
                except CheckpointCorrupt as error:  # never trusted: the file decides
                    log.warning("%s Reading its file instead.", error)
        try:
            if self.direct and ref.size >= DIRECT_BYTES:
                try:
                    data: bytearray | memoryview = _read_direct(path)
                except _DirectRefused:
                    self.direct = False
                    data = _read(path)
            else:
                data = _read(path)
        except FileNotFoundError:
            raise CheckpointMissing(
                f"Checkpoint of member {ref.member} at step {ref.step} is missing: {path}."
            ) from None
        return _verified(data, ref, str(path))

    def delete(self, ref: CheckpointRef) -> None:
        """Take the file of ``ref`` away (if it is still there): moved into the population's
        pool of spares, to be overwritten by a later save, while the pool holds fewer than
        ``spares`` files and it is of :data:`PACKED_BYTES` or more; else deleted."""
        path = self._collected(ref.path)
        if self.segments is not None and ref.size >= handover.SHARED_BYTES:
            self.segments.discard(ref)
        if ref.size < PACKED_BYTES:
            self._keep_small(path)
            return
        pool = self._pool(path)
        try:
            keep = sum(1 for _ in pool.iterdir()) < self.spares
        except FileNotFoundError:
            keep = self.spares > 0
        if keep:
            spare = _into_pool(path, pool)
            if spare is not None:
                with self._lock:
                    self._mine.add(spare)
            return
        path.unlink(missing_ok=True)

    def close(self) -> None:
        """Delete the spares this store added that no writer has taken since, and its
        shared-memory segments, and free its buffers."""
        if self.segments is not None:
            self.segments.close()
        with self._lock:
            spares, self._mine = self._mine, set()
            self._small.clear()
            self._stagings.clear()
        for spare in spares:
            spare.unlink(missing_ok=True)

    def files(self, folder: str) -> dict[str, float]:
        """Every regular file under a population's ``folder``, temporary ones included.
        Symbolic links are neither followed nor listed: only files really in the folder."""
        self._resolve(f"{folder}/_")  # refuses a folder that is no population's, or leads out
        found: dict[str, float] = {}
        for directory, _, names in os.walk(self.root / folder, followlinks=False):
            for name in names:
                path = Path(directory) / name
                try:
                    info = path.lstat()
                except FileNotFoundError:  # deleted meanwhile by a worker
                    continue
                if stat.S_ISREG(info.st_mode):
                    found[path.relative_to(self.root).as_posix()] = info.st_mtime
        return found

    def remove(self, path: str) -> None:
        """Delete a file by its path relative to the store."""
        self._resolve(path).unlink(missing_ok=True)


def _into_pool(path: Path, pool: Path) -> Path | None:
    """Move the file ``path`` into ``pool`` (made if need be) under a name nobody looks up;
    the spare's path, or ``None`` if the file was already gone."""
    spare = pool / uuid.uuid4().hex
    try:
        os.replace(path, spare)
    except FileNotFoundError:
        if not path.exists():
            return None
        pool.mkdir(exist_ok=True)
        try:
            os.replace(path, spare)
        except FileNotFoundError:
            return None
    return spare


def _fresh(taken: Path) -> bool:
    """Make a spare just taken (renamed to ``taken``) look new to the orphan sweep; ``False``
    (and it is removed) if it is a symbolic link, which a save must never write through: a
    file planted in the pool by someone who can write to the folder."""
    if os.path.islink(taken):
        taken.unlink(missing_ok=True)
        return False
    os.utime(taken)
    return True


def _new_path(folder: str, member: int, step: int) -> str:
    """A new checkpoint's path: unique per attempt, so a late writer whose claim was taken
    over can never overwrite a checkpoint that another worker already committed."""
    return f"{folder}/member-{member:04d}/step-{step:06d}-{uuid.uuid4().hex[:12]}.ckpt"


def sweep_orphans(
    store: CheckpointStore, folder: str, committed: set[str], older_than: float
) -> list[str]:
    """Delete files in a population's ``folder`` that no committed checkpoint row refers to.

    Such orphans are left by a worker killed between writing a checkpoint and committing it
    (or in the middle of writing it). Only files older than ``older_than`` seconds are touched,
    so a checkpoint that a live worker is about to commit is never taken away. Only pass the
    population's own folder (:func:`population_folder`), which names its database: files in
    a folder another database may share cannot be proven to be the population's.
    """
    now = time.time()
    orphans = [
        path
        for path, mtime in store.files(folder).items()
        if path not in committed and now - mtime > older_than
    ]
    for path in orphans:
        store.remove(path)
    return orphans


class FsspecCheckpoints:
    """Checkpoints on any fsspec URL: ``s3://bucket/prefix`` (s3fs), ``gs://``, ``memory://``...

    A checkpoint is uploaded in one put (S3 makes an object visible only once it is complete),
    so a reader never sees a partial one; its checksum is checked on every load. Credentials and
    endpoints come from the usual places of the filesystem (for S3: the AWS environment or
    config, and ``FSSPEC_S3_ENDPOINT_URL`` for an S3-compatible server).

    Example (skipped: needs a bucket and its credentials):
        >>> store = FsspecCheckpoints("s3://my-bucket/poptune")    # doctest: +SKIP
    """

    def __init__(self, url: str, **storage_options: Any) -> None:
        try:
            import fsspec
        except ImportError:
            raise ImportError(
                f"Checkpoints at {redact_url(url)!r} need fsspec (and s3fs for s3://): "
                "pip install 'poptune[s3]'."
            ) from None
        if redact_url(url) != url:
            # fsspec reads "s3://KEY:SECRET@bucket" as a bucket named so, and its errors (and
            # its libraries' logs) then quote the secret: refuse it before anything sees it.
            raise invalid(
                "url",
                "a URL without credentials",
                redact_url(url),
                "FsspecCheckpoints",
                hint="It carries credentials in its URL, which fsspec takes for part of the "
                "bucket's name: give them the filesystem's usual way instead, the environment "
                "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY for s3://) or its config file.",
            )
        self.url = url.rstrip("/")
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **storage_options)
        except ValueError as error:  # e.g. an unknown protocol
            raise invalid(
                "url",
                "a URL fsspec can open",
                redact_url(url),
                "FsspecCheckpoints",
                hint=f"{redact_text(str(error), url)}. Check the URL.",
            ) from error
        except ImportError as error:  # a known protocol whose library is missing: setup
            raise ValueError(
                f"Cannot open the checkpoint location {redact_url(url)!r}: "
                f"{redact_text(str(error), url)}. Check the URL, and "
                "install the filesystem it needs (s3fs for s3://: pip install 'poptune[s3]')."
            ) from error

    def _path(self, relative: str) -> str:
        """The full path of ``relative`` (read from the storage), refused unless it has the
        shape of a checkpoint path: object stores have no symbolic links to follow out."""
        return f"{self.root}/{_layout(relative)}"

    def save(self, folder: str, member: int, step: int, state: Any) -> CheckpointRef:
        """Serialise, hash and upload ``state`` in a single put."""
        relative = _new_path(folder, member, step)
        buffer = io.BytesIO()
        writer = _HashingWriter(buffer)
        serialization.dump(state, writer)  # type: ignore[arg-type]
        self.fs.pipe_file(self._path(relative), buffer.getvalue())
        return CheckpointRef(member, step, relative, writer.size, writer.checksum)

    def load(self, ref: CheckpointRef) -> Any:
        """Download, check size and checksum, then decode."""
        try:
            data = bytearray(self.fs.cat_file(self._path(ref.path)))
        except FileNotFoundError:
            raise CheckpointMissing(
                f"Checkpoint of member {ref.member} at step {ref.step} is missing: "
                f"{redact_url(self.url)}/{ref.path}."
            ) from None
        return _verified(data, ref, f"{redact_url(self.url)}/{ref.path}")

    def delete(self, ref: CheckpointRef) -> None:
        """Delete the object of ``ref`` if it is still there."""
        self.remove(ref.path)

    def close(self) -> None:
        """Nothing to release: every object is uploaded in one put."""

    def files(self, folder: str) -> dict[str, float]:
        """Every object under a population's ``folder``, with its modification time."""
        prefix = self._path(f"{folder}/_")[: -len("/_")]
        try:
            found = self.fs.find(prefix, detail=True)
        except FileNotFoundError:
            return {}
        result: dict[str, float] = {}
        for path, info in found.items():
            modified = info.get("mtime") or info.get("LastModified") or info.get("created")
            if hasattr(modified, "timestamp"):
                modified = modified.timestamp()
            relative = path[len(self.root) :].lstrip("/") if path.startswith(self.root) else path
            if not relative.startswith(f"{folder}/"):  # population-10 when listing population-1
                continue
            result[relative] = float(modified) if modified is not None else time.time()
        return result

    def remove(self, path: str) -> None:
        """Delete an object by its path relative to the store."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(path))


class _DirectRefused(Exception):
    """The filesystem does not do direct I/O (``EINVAL``); the cause is the OSError."""


class _DirectFile:
    """A file written with ``O_DIRECT``: the bytes are gathered in an aligned staging buffer
    and go from there to the disk in aligned blocks, around the page cache. What it received
    is checksummed as it leaves the staging buffer (:attr:`checksum`), while it is in the
    CPU's cache."""

    def __init__(self, path: Path, staging: mmap.mmap) -> None:
        self._fd = _open_direct(path, os.O_WRONLY | os.O_CREAT)
        self._staging = staging
        self._view = memoryview(staging)
        self._filled = 0  # bytes waiting in the staging buffer
        self._written = 0  # bytes written to the file
        self.size = 0  # bytes received
        self._digest = xxhash.xxh3_128()

    @property
    def checksum(self) -> str:
        """The checksum of every byte received (:func:`checksum`'s form), once finished."""
        return f"{CHECKSUM}:{self._digest.hexdigest()}"

    def write(self, data: Any) -> int:
        """Take ``data``; full staging buffers go to the disk."""
        view = memoryview(data).cast("B")
        position = 0
        while position < len(view):
            take = min(len(self._view) - self._filled, len(view) - position)
            self._view[self._filled : self._filled + take] = view[position : position + take]
            self._filled += take
            position += take
            if self._filled == len(self._view):
                self._digest.update(self._view[: self._filled])
                self._drain(self._filled)
        self.size += len(view)
        return len(view)

    def finish(self) -> None:
        """Write what waits in the staging buffer (zero-padded to a block), then cut the file
        to the exact size (a recycled file may also have been longer)."""
        if self._filled:
            self._digest.update(self._view[: self._filled])  # the padding is not the file's
            padded = -(-self._filled // _ALIGN) * _ALIGN
            self._view[self._filled : padded] = bytes(padded - self._filled)
            self._drain(padded)
        os.ftruncate(self._fd, self.size)

    def _drain(self, length: int) -> None:
        done = 0
        while done < length:
            try:
                done += os.write(self._fd, self._view[done:length])
            except OSError as error:
                if error.errno == errno.EINVAL and self._written == 0:
                    raise _DirectRefused(str(error)) from error
                raise
        self._written += length
        self._filled = 0

    def fileno(self) -> int:
        """The file descriptor."""
        return self._fd

    def __enter__(self) -> _DirectFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._view.release()
        os.close(self._fd)


def _open_direct(path: Path, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_DIRECT, 0o644)
    except OSError as error:
        if error.errno == errno.EINVAL:
            raise _DirectRefused(str(error)) from error
        raise


def _fill(view: memoryview, encoded: serialization.Encoded) -> str:
    """Copy ``encoded`` into ``view`` in pieces of at most a staging buffer, checksumming each
    piece right after its copy (from the cache); return the checksum."""
    digest = xxhash.xxh3_128()
    position = 0
    for part in encoded.parts():
        for start in range(0, part.nbytes, _STAGING):
            piece = part[start : start + _STAGING]
            end = position + piece.nbytes
            view[position:end] = piece
            digest.update(view[position:end])
            position = end
    return f"{CHECKSUM}:{digest.hexdigest()}"


def _write_direct(path: Path, view: memoryview, size: int, fsync: bool) -> None:
    """Write the first ``size`` bytes of ``view`` (page-aligned memory, at least ``size``
    rounded up to a block long) to ``path`` with direct I/O, straight from that memory."""
    padded = -(-size // _ALIGN) * _ALIGN
    view[size:padded] = bytes(padded - size)  # the last block's tail, cut off below
    fd = _open_direct(path, os.O_WRONLY | os.O_CREAT)
    try:
        done = 0
        while done < padded:
            try:
                done += os.write(fd, view[done : min(padded, done + 16 * _STAGING)])
            except OSError as error:
                if error.errno == errno.EINVAL and done == 0:
                    raise _DirectRefused(str(error)) from error
                raise
        os.ftruncate(fd, size)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: Path) -> bytearray:
    """The whole file, through the page cache."""
    with open(path, "rb") as file:
        data = bytearray(os.fstat(file.fileno()).st_size)
        read = file.readinto(data)
    del data[read:]  # in case the file shrank while it was read
    return data


def _read_direct(path: Path) -> memoryview:
    """The whole file, read with direct I/O into a new page-aligned buffer (which the returned
    view keeps alive: decoded arrays share its memory)."""
    fd = _open_direct(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        length = max(_ALIGN, -(-size // _ALIGN) * _ALIGN)  # reads are whole blocks
        view = memoryview(mmap.mmap(-1, length))
        done = 0
        while done < size:
            try:
                read = os.preadv(fd, [view[done:]], done)
            except OSError as error:
                if error.errno == errno.EINVAL and done == 0:
                    raise _DirectRefused(str(error)) from error
                raise
            if read == 0:  # the file shrank since fstat
                break
            done += read
        return view[: min(done, size)]
    finally:
        os.close(fd)


def _verified(data: bytearray | memoryview, ref: CheckpointRef, where: str) -> Any:
    """Check size and checksum of ``data`` against ``ref``, then decode it."""
    if len(data) != ref.size:
        raise CheckpointCorrupt(
            f"Checkpoint {where} has {len(data)} bytes but {ref.size} were recorded: it was "
            "truncated or replaced."
        )
    actual = _verify_checksum(data, ref.checksum)
    if actual is not None:
        raise CheckpointCorrupt(
            f"Checkpoint {where} does not match its recorded checksum ({actual} != "
            f"{ref.checksum}): it was corrupted or replaced."
        )
    try:
        # ``data`` is a fresh buffer that nobody else holds: decode arrays in place.
        return serialization.load(data, copy=False)
    except serialization.SerializationError as error:
        raise CheckpointCorrupt(f"Checkpoint {where} cannot be decoded: {error}") from error


def open_checkpoints(
    url: str | os.PathLike[str] | CheckpointStore, shared_memory: bool = False
) -> CheckpointStore:
    """Open a checkpoint store: a folder path or ``file://`` URL gives :class:`LocalCheckpoints`
    (handing large checkpoints over through shared memory with ``shared_memory``), any other URL
    (``s3://...``) :class:`FsspecCheckpoints`; a store passes through."""
    if not isinstance(url, str | os.PathLike):
        return url
    text = os.fspath(url)
    if text.startswith("file://"):
        return LocalCheckpoints(text[len("file://") :], shared_memory=shared_memory)
    if "://" in text:
        return FsspecCheckpoints(text)
    return LocalCheckpoints(text, shared_memory=shared_memory)
