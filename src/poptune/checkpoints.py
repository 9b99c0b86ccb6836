"""Where member states live: one immutable, checksummed file per (member, step, attempt).

A checkpoint is written to a temporary file, flushed and renamed into place, so a reader never
sees a partial file. Its path, size and SHA-256 are committed to the storage together with the
interval that produced it; a checkpoint is always found through that row, never by listing a
folder, and its checksum is verified before its contents are decoded. Decoding uses poptune's
own format (:mod:`poptune.serialization`), which never executes code from the file.

Disk use stays bounded because the storage's ``collect_garbage`` drops the rows no one needs
(see :meth:`poptune.storage.Storage.collect_garbage`) and the worker then deletes their files.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from . import serialization
from .records import CheckpointRef

__all__ = [
    "CheckpointCorrupt",
    "CheckpointStore",
    "FsspecCheckpoints",
    "LocalCheckpoints",
    "open_checkpoints",
    "sweep_orphans",
]


class CheckpointCorrupt(RuntimeError):
    """A checkpoint file is missing, truncated or does not match its recorded checksum."""


class CheckpointStore(Protocol):
    """Saves, loads and deletes member states; paths in refs are relative to the store."""

    url: str

    def save(self, population_id: int, member: int, step: int, state: Any) -> CheckpointRef:
        """Write ``state`` atomically and return its reference (path, size, sha256)."""
        ...

    def load(self, ref: CheckpointRef) -> Any:
        """Read, verify and decode the checkpoint. Raises :class:`CheckpointCorrupt`."""
        ...

    def delete(self, ref: CheckpointRef) -> None:
        """Delete the checkpoint's file (or keep it to overwrite later, under another name, so
        that no reader finds it again); a file already gone is fine."""
        ...

    def files(self, population_id: int) -> dict[str, float]:
        """Every file stored for the population (relative path -> modification time)."""
        ...

    def close(self) -> None:
        """Release what the store keeps between calls (spare files); it stays usable."""
        ...

    def remove(self, path: str) -> None:
        """Delete a stored file by its relative path; a file already gone is fine."""
        ...


class _HashingWriter:
    """A file wrapper that hashes and counts what passes through it."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.digest.update(view)
        self.size += len(view)
        return self._file.write(view)


class LocalCheckpoints:
    """Checkpoints in a local (or shared, POSIX) folder.

    Writes are atomic against crashed or killed processes (temporary file, then rename). With
    ``fsync=True`` (or ``POPTUNE_FSYNC=1`` in the environment, which reaches worker processes
    too) each file is also flushed to disk before the rename, so it survives a power loss; that
    costs about a millisecond per megabyte here, so it is off by default. A file torn by a power
    loss is caught by its checksum either way.

    Example:
        >>> store = LocalCheckpoints("runs/checkpoints")            # doctest: +SKIP
        >>> ref = store.save(1, member=0, step=1, state={"w": [1.0]})  # doctest: +SKIP
    """

    def __init__(
        self, root: str | os.PathLike[str], fsync: bool | None = None, spares: int = 2
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = str(self.root)
        if fsync is None:
            fsync = os.environ.get("POPTUNE_FSYNC", "0").lower() in ("1", "true", "yes")
        self.fsync = fsync
        # Files of collected checkpoints, kept to be overwritten by the next save instead of
        # deleted: writing into pages the page cache already holds costs a fraction of
        # allocating new ones (for a 200 MB state, about 30 ms of system time instead of 50 to
        # 500), and the filesystem does not allocate the blocks again.
        self.spares = spares
        self._spare: list[Path] = []
        self._lock = threading.Lock()

    def save(self, population_id: int, member: int, step: int, state: Any) -> CheckpointRef:
        """Write ``state`` to a unique file, renamed into place only once complete."""
        # A unique name per attempt: a late writer whose claim was taken over can never
        # overwrite a checkpoint that another worker already committed.
        relative = (
            f"population-{population_id}/member-{member:04d}/"
            f"step-{step:06d}-{uuid.uuid4().hex[:12]}.ckpt"
        )
        final = self.root / relative
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = final.with_name(f".{final.name}.tmp")
        try:
            with self._open_for_writing(temporary) as file:
                writer = _HashingWriter(file)
                serialization.dump(state, writer)  # type: ignore[arg-type]
                file.truncate()  # a recycled file may have been longer
                file.flush()
                if self.fsync:
                    os.fsync(file.fileno())
            os.replace(temporary, final)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return CheckpointRef(member, step, relative, writer.size, writer.digest.hexdigest())

    def _open_for_writing(self, temporary: Path) -> BinaryIO:
        """A new file at ``temporary``, or a spare one moved there to be overwritten."""
        while True:
            with self._lock:
                spare = self._spare.pop() if self._spare else None
            if spare is None:
                return open(temporary, "wb")
            try:
                os.replace(spare, temporary)
                return open(temporary, "r+b")
            except FileNotFoundError:  # swept meanwhile as an orphan
                continue

    def load(self, ref: CheckpointRef) -> Any:
        """Read the file, check its size and SHA-256, then decode it."""
        path = self.root / ref.path
        try:
            with open(path, "rb") as file:
                data = bytearray(os.fstat(file.fileno()).st_size)
                read = file.readinto(data)
        except FileNotFoundError:
            raise CheckpointCorrupt(
                f"Checkpoint of member {ref.member} at step {ref.step} is missing: {path}."
            ) from None
        del data[read:]  # in case the file shrank while it was read
        return _verified(data, ref, str(path))

    def delete(self, ref: CheckpointRef) -> None:
        """Take the file of ``ref`` away (if it is still there): kept under a spare name to be
        overwritten by a later save, while fewer than ``spares`` are kept, else deleted."""
        path = self.root / ref.path
        with self._lock:
            keep = len(self._spare) < self.spares
        if keep:
            spare = path.with_name(f".spare-{uuid.uuid4().hex[:12]}")
            try:
                os.replace(path, spare)
            except FileNotFoundError:
                return
            with self._lock:
                self._spare.append(spare)
            return
        path.unlink(missing_ok=True)

    def close(self) -> None:
        """Delete the spare files."""
        with self._lock:
            spares, self._spare = self._spare, []
        for spare in spares:
            spare.unlink(missing_ok=True)

    def files(self, population_id: int) -> dict[str, float]:
        """Every file under the population's folder, temporary ones included."""
        folder = self.root / f"population-{population_id}"
        found: dict[str, float] = {}
        if folder.is_dir():
            for path in folder.rglob("*"):
                try:
                    if path.is_file():
                        found[str(path.relative_to(self.root))] = path.stat().st_mtime
                except FileNotFoundError:  # deleted meanwhile by a worker
                    continue
        return found

    def remove(self, path: str) -> None:
        """Delete a file by its path relative to the store."""
        (self.root / path).unlink(missing_ok=True)


def sweep_orphans(
    store: CheckpointStore, population_id: int, committed: set[str], older_than: float
) -> list[str]:
    """Delete files of the population that no committed checkpoint row refers to.

    Such orphans are left by a worker killed between writing a checkpoint and committing it
    (or in the middle of writing it). Only files older than ``older_than`` seconds are touched,
    so a checkpoint that a live worker is about to commit is never taken away.
    """
    now = time.time()
    orphans = [
        path
        for path, mtime in store.files(population_id).items()
        if path not in committed and now - mtime > older_than
    ]
    for path in orphans:
        store.remove(path)
    return orphans


class FsspecCheckpoints:
    """Checkpoints on any fsspec URL: ``s3://bucket/prefix`` (s3fs), ``gs://``, ``memory://``...

    A checkpoint is uploaded in one put (S3 makes an object visible only once it is complete),
    so a reader never sees a partial one; its SHA-256 is checked on every load. Credentials and
    endpoints come from the usual places of the filesystem (for S3: the AWS environment or
    config, and ``FSSPEC_S3_ENDPOINT_URL`` for an S3-compatible server).

    Example:
        >>> store = FsspecCheckpoints("s3://my-bucket/poptune")    # doctest: +SKIP
    """

    def __init__(self, url: str, **storage_options: Any) -> None:
        try:
            import fsspec
        except ImportError:
            raise ImportError(
                f"Checkpoints at {url!r} need fsspec (and s3fs for s3://): "
                "pip install 'poptune[s3]'."
            ) from None
        self.url = url.rstrip("/")
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **storage_options)
        except (ValueError, ImportError) as error:
            raise ValueError(
                f"Cannot open the checkpoint location {url!r}: {error}. Check the URL, and "
                "install the filesystem it needs (s3fs for s3://: pip install 'poptune[s3]')."
            ) from error

    def _path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def save(self, population_id: int, member: int, step: int, state: Any) -> CheckpointRef:
        """Serialise, hash and upload ``state`` in a single put."""
        relative = (
            f"population-{population_id}/member-{member:04d}/"
            f"step-{step:06d}-{uuid.uuid4().hex[:12]}.ckpt"
        )
        buffer = io.BytesIO()
        writer = _HashingWriter(buffer)  # type: ignore[arg-type]
        serialization.dump(state, writer)  # type: ignore[arg-type]
        self.fs.pipe_file(self._path(relative), buffer.getvalue())
        return CheckpointRef(member, step, relative, writer.size, writer.digest.hexdigest())

    def load(self, ref: CheckpointRef) -> Any:
        """Download, check size and SHA-256, then decode."""
        try:
            data = bytearray(self.fs.cat_file(self._path(ref.path)))
        except FileNotFoundError:
            raise CheckpointCorrupt(
                f"Checkpoint of member {ref.member} at step {ref.step} is missing: "
                f"{self.url}/{ref.path}."
            ) from None
        return _verified(data, ref, f"{self.url}/{ref.path}")

    def delete(self, ref: CheckpointRef) -> None:
        """Delete the object of ``ref`` if it is still there."""
        self.remove(ref.path)

    def close(self) -> None:
        """Nothing to release: every object is uploaded in one put."""

    def files(self, population_id: int) -> dict[str, float]:
        """Every object under the population's prefix, with its modification time."""
        prefix = self._path(f"population-{population_id}")
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
            result[relative] = float(modified) if modified is not None else time.time()
        return result

    def remove(self, path: str) -> None:
        """Delete an object by its path relative to the store."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(path))


def _verified(data: bytearray, ref: CheckpointRef, where: str) -> Any:
    """Check size and checksum of ``data`` against ``ref``, then decode it."""
    if len(data) != ref.size:
        raise CheckpointCorrupt(
            f"Checkpoint {where} has {len(data)} bytes but {ref.size} were recorded: it was "
            "truncated or replaced."
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != ref.sha256:
        raise CheckpointCorrupt(
            f"Checkpoint {where} does not match its recorded SHA-256 ({digest} != "
            f"{ref.sha256}): it was corrupted or replaced."
        )
    try:
        # ``data`` is a fresh buffer that nobody else holds: decode arrays in place.
        return serialization.load(data, copy=False)
    except serialization.SerializationError as error:
        raise CheckpointCorrupt(f"Checkpoint {where} cannot be decoded: {error}") from error


def open_checkpoints(url: str | os.PathLike[str] | CheckpointStore) -> CheckpointStore:
    """Open a checkpoint store: a folder path or ``file://`` URL gives :class:`LocalCheckpoints`,
    any other URL (``s3://...``) :class:`FsspecCheckpoints`; a store passes through."""
    if not isinstance(url, str | os.PathLike):
        return url
    text = os.fspath(url)
    if text.startswith("file://"):
        return LocalCheckpoints(text[len("file://") :])
    if "://" in text:
        return FsspecCheckpoints(text)
    return LocalCheckpoints(text)
