"""Paths on any filesystem pyarrow supports (local, s3://, gs://, hdfs://, file://).

This module owns turning a user's path or URI into a (filesystem, path) pair and the
few file operations the pipeline needs on top of it: read bytes, write bytes
atomically (and the name of the temp files that writing leaves if killed), create a
file only if it does not exist, move, list (names, or sizes), exists. It knows nothing
about manifests, models or Ray. A path or URI that no filesystem can serve (an unknown
scheme, a bucket-less `s3://`) is a `StoreError` naming it.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from dataclasses import dataclass
from typing import Iterable

import pyarrow as pa
import pyarrow.fs as pafs

from synth.store.errors import StoreError

TEMP_INFIX = ".tmp-"  # write_bytes_atomic's temp file: <name>.tmp-<8 hex>, renamed to <name> once whole


def temp_name(name: str, tag: str | None = None) -> str:
    """The temp file `write_bytes_atomic` writes before renaming it to `name` (random `tag` unless given)."""
    return f"{name}{TEMP_INFIX}{tag or uuid.uuid4().hex[:8]}"


_TEMP = re.compile(r"(.+)" + re.escape(TEMP_INFIX) + r"[0-9a-f]{8}")


def is_temp(name: str) -> bool:
    """Whether a file name is one of `write_bytes_atomic`'s temp files (a killed write leaves it behind)."""
    return temp_target(name) is not None


def temp_target(name: str) -> str | None:
    """The name a temp file of `write_bytes_atomic` was to be renamed to; None for any other name."""
    match = _TEMP.fullmatch(name)
    return match.group(1) if match else None


@dataclass(frozen=True)
class Location:
    """A directory or file on some filesystem; `path` is in that filesystem's own syntax."""

    fs: pafs.FileSystem
    path: str
    uri: str  # what the user wrote, for messages

    def join(self, *parts: str) -> "Location":
        path = "/".join([self.path.rstrip("/"), *parts])
        uri = "/".join([self.uri.rstrip("/"), *parts])
        return Location(self.fs, path, uri)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)


def resolve(path_or_uri: str) -> Location:
    """Resolve a local path (relative paths against the cwd) or a URI with a scheme; a URI no
    filesystem serves is a StoreError naming it."""
    if "://" in path_or_uri:
        try:
            fs, path = pafs.FileSystem.from_uri(path_or_uri)
        except (pa.ArrowException, ValueError, OSError) as e:
            raise StoreError(f"{path_or_uri}: not a path or URI synth can read or write ({e}); give a local path "
                             "or a URI of a filesystem pyarrow serves (s3://bucket/path, gs://bucket/path, "
                             "hdfs://...)") from None
        if not path.strip("/"):
            raise StoreError(f"{path_or_uri}: names no bucket or directory; give s3://bucket/path or the like")
        return Location(fs, path, path_or_uri)
    path = os.path.abspath(os.path.expanduser(path_or_uri))
    return Location(pafs.LocalFileSystem(), path, path_or_uri)


def exists(loc: Location) -> bool:
    return loc.fs.get_file_info(loc.path).type != pafs.FileType.NotFound


def is_dir(loc: Location) -> bool:
    return loc.fs.get_file_info(loc.path).type == pafs.FileType.Directory


def read_bytes(loc: Location) -> bytes:
    # compression=None: the bytes as stored (pyarrow would otherwise decompress a `.gz` by its suffix)
    with loc.fs.open_input_stream(loc.path, compression=None) as f:
        return f.read()


def makedirs(loc: Location) -> None:
    loc.fs.create_dir(loc.path, recursive=True)


def _write_temp(path: str, chunks: Iterable[bytes]) -> tuple[str, int, str]:
    """Write chunks to a new temp file beside `path` (fsynced); (temp path, size, sha256). A
    failed write leaves no temp file behind (a full disk must not fill up with them)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = temp_name(path)
    digest, size = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return tmp, size, digest.hexdigest()


def write_stream_atomic(loc: Location, chunks: Iterable[bytes]) -> tuple[int, str]:
    """Write a file from byte chunks (memory: one chunk) so that readers see nothing or the
    whole file; returns its (size, sha256).

    Local: temp file in the same directory, fsync, os.replace. Object stores: one upload,
    which becomes visible only once complete."""
    if loc.is_local:
        tmp, size, sha = _write_temp(loc.path, chunks)
        try:
            os.replace(tmp, loc.path)
        except OSError:
            os.unlink(tmp)
            raise
        return size, sha
    loc.fs.create_dir(loc.path.rsplit("/", 1)[0], recursive=True)
    digest, size = hashlib.sha256(), 0
    with loc.fs.open_output_stream(loc.path) as f:
        for chunk in chunks:
            f.write(chunk)
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def write_bytes_atomic(loc: Location, data: bytes) -> None:
    """Write `data` so that readers see either nothing or the whole file (`write_stream_atomic`)."""
    write_stream_atomic(loc, [data])


def create_exclusive(loc: Location, data: bytes) -> bool:
    """Create the file with `data` unless it exists; True if this call created it.

    Local: the whole file is written to a temp name, then hard-linked to its name, which
    fails if the name exists: of two processes racing exactly one wins, and nobody ever
    sees the file half-written. Object stores have no such primitive here: the file is
    written if absent, and the caller must confirm ownership by reading it back (see
    `synth.store.lease`)."""
    if loc.is_local:
        tmp, _, _ = _write_temp(loc.path, [data])
        try:
            os.link(tmp, loc.path)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True
    if exists(loc):
        return False
    write_bytes_atomic(loc, data)
    return True


def sha256_of(loc: Location, chunk_bytes: int = 1 << 20) -> tuple[int, str]:
    """(size, sha256) of a file, read a chunk at a time."""
    digest, size = hashlib.sha256(), 0
    with loc.fs.open_input_stream(loc.path, compression=None) as f:  # as stored, a `.gz` too
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def move(src: Location, dst: Location) -> None:
    """Move a file (a rename locally; copy then delete on object stores), creating dst's parents."""
    dst.fs.create_dir(dst.path.rsplit("/", 1)[0], recursive=True)
    src.fs.move(src.path, dst.path)


def entries(loc: Location) -> list[str]:
    """Names directly under a directory (files and directories), sorted; [] if it does not exist."""
    selector = pafs.FileSelector(loc.path, recursive=False, allow_not_found=True)
    return sorted(i.path.rstrip("/").rsplit("/", 1)[-1] for i in loc.fs.get_file_info(selector))


def file_sizes(loc: Location) -> dict[str, int]:
    """Path (relative to `loc`) -> size in bytes of every file below `loc`, in one listing."""
    selector = pafs.FileSelector(loc.path, recursive=True, allow_not_found=True)
    base = loc.path.rstrip("/") + "/"
    return {i.path.removeprefix(base): i.size for i in loc.fs.get_file_info(selector) if i.type == pafs.FileType.File}


def file_stats(loc: Location) -> dict[str, tuple[int, int]]:
    """Path (relative to `loc`) -> (size in bytes, modification time in ns; 0 where the store has
    none) of every file below `loc`, in one listing."""
    selector = pafs.FileSelector(loc.path, recursive=True, allow_not_found=True)
    base = loc.path.rstrip("/") + "/"
    return {i.path.removeprefix(base): (i.size, i.mtime_ns or 0) for i in loc.fs.get_file_info(selector)
            if i.type == pafs.FileType.File}


def list_files(loc: Location, suffix: str = "") -> list[str]:
    """Paths of the files below `loc` (recursive) ending in `suffix`, sorted."""
    selector = pafs.FileSelector(loc.path, recursive=True, allow_not_found=True)
    infos = loc.fs.get_file_info(selector)
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix))
