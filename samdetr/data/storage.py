"""Where data lives: local paths or URIs of any pyarrow filesystem (``s3://``, ``gs://``, ...).

:func:`resolve_fs` turns a path or URI into ``(pyarrow filesystem, path on it)``. Nothing here
is specific to one object store: a URI is resolved by ``pyarrow.fs.FileSystem.from_uri``, which
reads the store's usual configuration (S3: ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION`` ...; GCS: application default credentials), and the
bucket is checked when a URI is resolved (one metadata request), so a missing bucket or an
unreachable server fails at once with a clear message instead of deep inside a read or write.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

__all__ = ["absolute", "file_sizes", "is_local", "is_uri", "list_files", "read_bytes", "read_file",
           "resolve_fs"]

# Signs of a refused bucket-level request (S3 HeadBucket needs s3:ListBucket, GCS bucket
# metadata needs storage.buckets.get): object-level rights may still suffice, so go on. Error
# names and an HTTP status only: the message also holds the endpoint, whose port may contain
# any digits (a server on port 40312 is not a "403").
_DENIED = re.compile(
    r"ACCESS_DENIED|AccessDenied|PERMISSION_DENIED|Forbidden|"
    r"(?:HTTP (?:status|response)(?: code)?|status code):?\s*403\b",
    re.IGNORECASE,
)
# Signs that no answer came at all (connection refused, DNS, timeout): never a verdict on
# rights, whatever else the message holds.
_UNREACHABLE = re.compile(
    r"NETWORK_CONNECTION|curlCode|Could not connect|Couldn't connect|Connection refused|"
    r"UNAVAILABLE|DEADLINE_EXCEEDED|Could not resolve|timed out",
    re.IGNORECASE,
)


def is_local(fs: pafs.FileSystem) -> bool:
    """Whether ``fs`` is the local filesystem (possibly under a SubTreeFileSystem)."""
    if isinstance(fs, pafs.SubTreeFileSystem):
        return is_local(fs.base_fs)
    return isinstance(fs, pafs.LocalFileSystem)


def is_uri(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a URI (``scheme://...``) rather than a local path."""
    return "://" in os.fspath(path)


def absolute(path: str | os.PathLike[str], base: str | os.PathLike[str] | None = None) -> str:
    """A URI unchanged; a local path made absolute against ``base`` (default: the cwd).

    Resolve paths once, where they were given: processes started elsewhere (Ray workers chdir
    into their own folders) would read a relative path against another folder.
    """
    path = os.fspath(path)
    if is_uri(path):
        return path
    return os.path.abspath(os.path.join(os.fspath(base), path) if base is not None else path)


def resolve_fs(path: str | os.PathLike[str], fs: pafs.FileSystem | None = None) -> tuple[Any, str]:
    """``(filesystem, path)`` for a local path or a URI.

    With ``fs`` given, ``path`` is a path on it and is returned unchanged. A URI
    (``s3://bucket/prefix``, ``gs://bucket/prefix``, ``file:///abs/path``) is resolved by
    pyarrow; a plain path becomes an absolute local one. On an object store the bucket is
    checked (one request): ValueError when it does not exist, OSError naming the URI when the
    store cannot be reached (after pyarrow's own retries: ~6 s for S3).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if fs is not None:
        if not isinstance(fs, pafs.FileSystem):
            raise TypeError(f"fs must be a pyarrow.fs.FileSystem, got {type(fs).__name__}")
        return fs, path
    if not path:
        raise ValueError("empty path: expected a local path or a URI such as s3://bucket/prefix")
    if not is_uri(path):
        return pafs.LocalFileSystem(), absolute(path)
    try:
        rfs, rpath = pafs.FileSystem.from_uri(path)
    except pa.ArrowInvalid as exc:  # unknown scheme, bad query parameter, malformed URI
        raise ValueError(
            f"cannot open {path!r}: {exc} (expected a local path or a URI such as "
            "s3://bucket/prefix, gs://bucket/prefix or file:///absolute/path)"
        ) from exc
    except OSError as exc:  # e.g. S3 region lookup or a missing HDFS client
        raise OSError(f"cannot open {path!r}: {exc}") from exc
    if not is_local(rfs):
        if not rpath.strip("/"):
            raise ValueError(f"{path!r} names no bucket: expected scheme://bucket/prefix")
        _check_bucket(rfs, rpath, path)
    return rfs, rpath


def _check_bucket(fs: pafs.FileSystem, path: str, uri: str) -> None:
    """Fail clearly if the bucket of ``path`` (its first component) is missing or unreachable."""
    if path.startswith("/"):  # a hierarchical store (HDFS): no bucket to check
        return
    bucket = path.split("/", 1)[0]
    try:
        info = fs.get_file_info(bucket)
    except OSError as exc:
        text = str(exc)
        denied = isinstance(exc, PermissionError) or _DENIED.search(text)
        if denied and not _UNREACHABLE.search(text):
            return  # no bucket-level rights; the object requests themselves will tell
        raise OSError(
            f"cannot reach the {fs.type_name} store for {uri!r}: {text}. Check that the server "
            "is up, the endpoint (S3-compatible stores: AWS_ENDPOINT_URL) and the network"
        ) from exc
    if info.type == pafs.FileType.NotFound:
        raise ValueError(
            f"{uri!r}: bucket {bucket!r} does not exist (or these credentials cannot see it); "
            "create it first"
        )


def file_sizes(
    fs: pafs.FileSystem, folder: str, names: Iterable[str], list_above: int = 256
) -> dict[str, int]:
    """``{name: size in bytes}`` of the files ``folder/name``; 0 for a missing one.

    Few names: one metadata request each. More than ``list_above`` on an object store: one
    recursive listing of ``folder`` instead (a HEAD request per image of COCO would take many
    minutes on S3; a listing returns 1000 files per request).
    """
    names = list(names)
    root = folder.rstrip("/")
    if len(names) <= list_above or is_local(fs):
        infos = fs.get_file_info([f"{root}/{n}" for n in names])
        return {
            n: (i.size or 0) if i.type == pafs.FileType.File else 0
            for n, i in zip(names, infos, strict=True)
        }
    selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    listed = {
        info.path[len(root) + 1 :]: info.size or 0
        for info in fs.get_file_info(selector)
        if info.type == pafs.FileType.File and info.path.startswith(root + "/")
    }
    return {n: listed.get(n.lstrip("/"), 0) for n in names}


#: File name endings :func:`list_files` takes as images by default.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_GLOB = re.compile(r"[*?\[]")


def list_files(
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    suffixes: Sequence[str] = IMAGE_SUFFIXES,
) -> list[str]:
    """The files that ``sources`` name, local or at URIs, in a stable order.

    Each source is a file (taken whatever its name), a folder (its files ending in one of
    ``suffixes``, case-insensitive, not recursing), or a glob (``*``, ``?``, ``[...]`` in the
    last part, e.g. ``s3://bucket/photos/*.jpg``; ``**`` is not supported). Paths come back as
    given (URIs stay URIs; local paths made absolute); duplicates are dropped. ValueError for a
    source that names nothing.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    out: dict[str, None] = {}  # ordered, without duplicates
    for source in sources:
        source = os.fspath(source)
        found = _expand(source, tuple(s.lower() for s in suffixes))
        if not found:
            raise ValueError(f"{source!r} names no file (no such file or folder, or no "
                             f"{'/'.join(suffixes)} file in it)")
        out.update(dict.fromkeys(found))
    return list(out)


def _expand(source: str, suffixes: tuple[str, ...]) -> list[str]:
    head, _, tail = source.rpartition("/")
    if _GLOB.search(tail) and not _GLOB.search(head):
        pattern = tail
    elif _GLOB.search(source):
        raise ValueError(f"{source!r}: only the last part of a path may hold a wildcard")
    else:
        head, pattern = source, None
    fs, path = resolve_fs(head or ".")
    prefix = head.rstrip("/") if is_uri(head) else path.rstrip("/")
    info = fs.get_file_info(path)
    if pattern is None and info.type == pafs.FileType.File:
        return [source if is_uri(source) else path]
    if info.type != pafs.FileType.Directory:
        return []
    names = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path))
                   if i.type == pafs.FileType.File)
    if pattern is not None:
        return [f"{prefix}/{n}" for n in names if fnmatch.fnmatchcase(n, pattern)]
    return [f"{prefix}/{n}" for n in names if n.lower().endswith(suffixes)]


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    """The bytes of ``path`` on ``fs`` (``FileNotFoundError`` when there is none)."""
    with fs.open_input_stream(path) as stream:
        return stream.read()


def read_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a local file or of an object at a URI."""
    fs, resolved = resolve_fs(path)
    with fs.open_input_file(resolved) as stream:
        return stream.read()
