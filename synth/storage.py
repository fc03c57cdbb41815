"""Where a build lives: a local directory or a prefix on any pyarrow filesystem.

`--out` is a *location*: a local path (`builds/demo`), or a URI (`s3://bucket/prefix`,
`gs://bucket/prefix`, any scheme `pyarrow.fs.FileSystem.from_uri` knows). Every file the
runner, the request cache and the lock write under it goes through this module, as a
location string (`join(out, "stages", name)`), so a Ray task on any node writes to the
same store: the filesystem is resolved from the URI in the process that uses it, with
credentials and endpoint from the standard environment (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, ...). Credentials never go into a location,
a message, the manifest or a log line.

Atomicity. A local file is written under a temporary name and renamed (`os.replace`),
as before. An object store has no rename, but one PUT is atomic (an object is whole or
absent), so an object is written in place; what needed a directory rename (a stage's
output) becomes write-then-marker: the runner deletes the marker, writes the objects,
then writes the marker, and readers trust only a marked directory.

Local paths behave exactly as they did: `Path` in, the same files out.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from synth.errors import BadInput

CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_SCHEMES = ("s3", "s3a")
GCS_SCHEMES = ("gs", "gcs")


def is_remote(location: str | Path) -> bool:
    """A URI with a scheme other than file:// (a Windows drive letter is no scheme)."""
    text = str(location)
    scheme, sep, _ = text.partition("://")
    return bool(sep) and len(scheme) > 1 and scheme != "file"


def location(text: str | Path) -> str | Path:
    """A location as synth passes it around: a Path when local, the URI string when remote."""
    return str(text) if is_remote(text) else Path(text)


def join(location: str | Path, *parts: str) -> str | Path:
    """`location/parts…`: a Path for a local location, a URI string for a remote one."""
    if not is_remote(location):
        return Path(location, *parts)
    return "/".join([str(location).rstrip("/"), *(p.strip("/") for p in parts if p)])


def name(location: str | Path) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def display(location: str | Path) -> str:
    """A location as messages show it (a URI never carries credentials: see `resolve`)."""
    return str(location)


def inside(base: str | Path, *parts: str) -> str | Path:
    """`base/parts…`, refusing any path that would leave `base` (names come from configs):
    a `BadInput` naming the path."""
    if is_remote(base):
        if any(p in ("", ".", "..") or "/" in p or "\0" in p for p in parts):
            raise BadInput(f"path {'/'.join(parts)!r} would escape {base}")
        return join(base, *parts)
    try:
        path = Path(base, *parts).resolve()
    except (OSError, ValueError) as e:  # e.g. a NUL byte: no such path can exist
        raise BadInput(f"path {'/'.join(parts)!r} under {base} is not usable: {e}") from None
    if not path.is_relative_to(Path(base).resolve()):
        raise BadInput(f"path {'/'.join(parts)!r} would escape {base}")
    return path


def make_dirs(location: str | Path) -> None:
    """The directory and its parents, on a local disk (an object store has no directories)."""
    if not is_remote(location):
        Path(location).mkdir(parents=True, exist_ok=True)


@functools.lru_cache(maxsize=None)
def _filesystem(scheme_and_bucket: str) -> pafs.FileSystem:
    uri = scheme_and_bucket
    scheme = uri.partition("://")[0]
    if scheme in S3_SCHEMES:
        _check_credentials(uri)
        kwargs = {"connect_timeout": float(os.environ.get("SYNTH_S3_CONNECT_TIMEOUT", 5)),
                  "request_timeout": float(os.environ.get("SYNTH_S3_REQUEST_TIMEOUT", 60)),
                  "retry_strategy": pafs.AwsStandardS3RetryStrategy(
                      max_attempts=int(os.environ.get("SYNTH_S3_MAX_ATTEMPTS", 3)))}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            kwargs["endpoint_override"] = endpoint
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs)
    if scheme in GCS_SCHEMES:
        # Credentials: Google's application default (GOOGLE_APPLICATION_CREDENTIALS, or the
        # instance's service account). STORAGE_EMULATOR_HOST, the variable Google's own clients
        # read, points at an emulator (no credentials).
        gcs: dict = {"retry_time_limit": timedelta(seconds=float(os.environ.get("SYNTH_GCS_RETRY_SECONDS", 15)))}
        emulator = os.environ.get("STORAGE_EMULATOR_HOST")
        if emulator:
            emulator_scheme, sep, host = emulator.partition("://")
            gcs.update(anonymous=True, scheme=emulator_scheme if sep else "http",
                       endpoint_override=(host if sep else emulator).rstrip("/"))
        return pafs.GcsFileSystem(**gcs)
    return _from_uri(uri)[0]


@functools.lru_cache(maxsize=256)
def _from_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as e:
        raise _StoreError(f"not a usable filesystem URI ({_first_line(e)}); use a local path, s3://bucket/prefix, "
                          "gs://bucket/prefix or another pyarrow filesystem") from None
    except OSError as e:
        raise _StoreError(f"cannot open the store ({_first_line(e)})") from None


class _StoreError(Exception):
    """Why a location's filesystem cannot be had; `resolve` names the whole location."""


def _check_credentials(uri: str) -> None:
    """Fail early (exit 2) when no credentials can be found, instead of the SDK's slow search
    of instance metadata. The message names the variables, never their values."""
    if all(os.environ.get(v) for v in CREDENTIAL_VARS):
        return
    if os.environ.get("AWS_PROFILE") or os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE") \
            or os.environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI") \
            or os.environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") \
            or Path(os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")).expanduser().is_file():
        return
    raise _StoreError(f"no credentials for the store: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                   "(or AWS_PROFILE), and AWS_ENDPOINT_URL for an S3-compatible server")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return _redact(text[0] if text else type(e).__name__)


def _redact(text: str) -> str:
    for var in CREDENTIAL_VARS:
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def resolve(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) of a location; a local one resolves to the local filesystem."""
    if not is_remote(location):
        return pafs.LocalFileSystem(), str(Path(location).absolute())
    text = str(location)
    scheme, _, rest = text.partition("://")
    try:
        if scheme not in S3_SCHEMES + GCS_SCHEMES:  # any other pyarrow filesystem: its own idea of the path
            fs, path = _from_uri(text.rstrip("/"))
            return fs, path.rstrip("/")
        bucket = rest.split("/", 1)[0]
        if not bucket:
            raise _StoreError(f"no bucket in the URI (expected {scheme}://bucket/prefix)")
        return _filesystem(f"{scheme}://{bucket}"), rest.rstrip("/")
    except _StoreError as e:
        raise BadInput(f"{text}: {e}") from None


def check_reachable(location: str | Path) -> None:
    """BadInput (exit 2) naming the location when its store cannot be reached or its bucket is missing."""
    if not is_remote(location):
        return
    fs, path = resolve(location)
    bucket = path.split("/", 1)[0]
    try:
        info = fs.get_file_info(bucket)
    except OSError as e:
        raise BadInput(f"{display(location)}: the store is unreachable ({_first_line(e)})") from None
    if info.type == pafs.FileType.NotFound:
        raise BadInput(f"{display(location)}: bucket {bucket!r} does not exist")


# --- files --------------------------------------------------------------------------


def exists(location: str | Path) -> bool:
    if not is_remote(location):
        return Path(location).exists()
    fs, path = resolve(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(location: str | Path) -> bytes:
    """The file's bytes; FileNotFoundError when there is none."""
    if not is_remote(location):
        return Path(location).read_bytes()
    fs, path = resolve(location)
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise FileNotFoundError(display(location))
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(location: str | Path, data: bytes) -> None:
    """The whole file at once: a local one under a temporary name, then renamed; an object in one PUT."""
    if not is_remote(location):
        path = Path(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return
    fs, path = resolve(location)
    with fs.open_output_stream(path) as f:
        f.write(data)


def write_table(location: str | Path, table: pa.Table) -> None:
    """A parquet file, atomically (see `write_bytes`)."""
    if not is_remote(location):
        path = Path(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # unique: two writers of one name never mix
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return
    fs, path = resolve(location)
    pq.write_table(table, path, filesystem=fs)


def delete(location: str | Path) -> None:
    if not is_remote(location):
        Path(location).unlink(missing_ok=True)
        return
    fs, path = resolve(location)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


def delete_dir(location: str | Path) -> None:
    """The directory and everything under it (nothing if it does not exist)."""
    if not is_remote(location):
        shutil.rmtree(location, ignore_errors=True)
        return
    fs, path = resolve(location)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir_contents(path, missing_dir_ok=True)
        try:
            fs.delete_dir(path)
        except OSError:  # a "directory" that was only its objects' common prefix (GCS): gone with them
            if fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True)):
                raise


def files(location: str | Path, suffix: str = ".parquet") -> list[str | Path]:
    """The files directly in a directory whose name ends with `suffix` (not hidden ones), sorted by name."""
    if not is_remote(location):
        return sorted(p for p in Path(location).glob(f"*{suffix}"))
    fs, path = resolve(location)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    names = sorted(i.base_name for i in infos
                   if i.type == pafs.FileType.File and i.base_name.endswith(suffix) and not i.base_name.startswith("."))
    return [join(location, n) for n in names]


def subdirs(location: str | Path) -> list[str]:
    """Names of the directories directly in a directory, sorted."""
    if not is_remote(location):
        return sorted(p.name for p in Path(location).iterdir() if p.is_dir()) if Path(location).is_dir() else []
    fs, path = resolve(location)
    # from the objects below it: a store without directory objects (GCS) lists no directories
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted({i.path[len(path):].strip("/").split("/", 1)[0] for i in infos
                   if "/" in i.path[len(path):].strip("/")})


def parquet_file(location: str | Path) -> pq.ParquetFile:
    fs, path = resolve(location)
    return pq.ParquetFile(fs.open_input_file(path)) if is_remote(location) else pq.ParquetFile(location)


def read_table(location: str | Path, columns: list[str] | None = None) -> pa.Table:
    if not is_remote(location):
        return pq.read_table(location, columns=columns)
    fs, path = resolve(location)
    return pq.read_table(path, columns=columns, filesystem=fs)


def ray_paths(locations: Iterable[str | Path]) -> tuple[list[str], pafs.FileSystem | None]:
    """Arguments for `ray.data.read_parquet(paths, filesystem=...)`."""
    locations = list(locations)
    if not locations or not is_remote(locations[0]):
        return [str(p) for p in locations], None
    fs, _ = resolve(locations[0])
    return [resolve(p)[1] for p in locations], fs


def read_dataset(location: str | Path):
    """The parquet files under `location` as a Ray Dataset (read lazily, on any node)."""
    import ray.data

    paths, fs = ray_paths([location])
    return ray.data.read_parquet(paths[0], filesystem=fs)


@contextlib.contextmanager
def replacing_dir(location: str | Path) -> Iterator[str | Path]:
    """A directory to write whose content then replaces `location`'s. Local: a sibling
    `.NAME.tmp` renamed over it when the block succeeds (a crash leaves the old one whole).
    Object store (no rename): `location` itself, emptied first; the caller writes a marker
    last, and readers trust only a marked directory (write-then-marker)."""
    if is_remote(location):
        delete_dir(location)
        yield location
        return
    path = Path(location)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


# --- a local copy for the driver's exports and report ------------------------------


def download(location: str | Path, local: Path, *, skip: tuple[str, ...] = ()) -> None:
    """Copy the tree under `location` into the local directory `local` (top-level names in `skip` left out)."""
    fs, path = resolve(location)
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True)):
        if info.type != pafs.FileType.File:
            continue
        relative = info.path[len(path):].lstrip("/")
        if relative.split("/", 1)[0] in skip:
            continue
        target = local / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)


def upload(local: Path, location: str | Path) -> None:
    """Replace the tree (or file) at `location` with the local directory (or file) `local`."""
    fs, path = resolve(location)
    local = Path(local)
    if local.is_file():
        with open(local, "rb") as src, fs.open_output_stream(path) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        return
    delete_dir(location)
    for file in sorted(p for p in local.rglob("*") if p.is_file()):
        with open(file, "rb") as src, fs.open_output_stream(f"{path}/{file.relative_to(local).as_posix()}") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)


def sync_back(local: Path, location: str | Path, names: Iterable[str]) -> None:
    """Put the named files or directories of a local mirror (`local_mirror`) back at `location`
    (nothing to do when the mirror is `location` itself)."""
    if not is_remote(location):
        return
    for entry in names:
        if (local / entry).exists():
            upload(local / entry, join(location, entry))


@contextlib.contextmanager
def local_mirror(location: str | Path, *, skip: tuple[str, ...] = ("cache", ".synth.lock")) -> Iterator[Path]:
    """A local directory holding the build at `location`: itself when local, else a temporary
    copy (without the request cache) that is deleted afterwards. For the driver's exports and
    report, which read and write local files; `upload` puts what they wrote back."""
    if not is_remote(location):
        yield Path(location)
        return
    check_reachable(location)
    with tempfile.TemporaryDirectory(prefix="synth-mirror-") as tmp:
        local = Path(tmp) / name(location)
        local.mkdir()
        download(location, local, skip=skip)
        yield local


@contextlib.contextmanager
def local_target(location: str | Path) -> Iterator[Path]:
    """A local path to write an output for `location` (a file or a directory): itself when local,
    else a temporary one uploaded to `location` when the block succeeds."""
    if not is_remote(location):
        yield Path(location)
        return
    check_reachable(location)
    with tempfile.TemporaryDirectory(prefix="synth-out-") as tmp:
        local = Path(tmp) / name(location)
        yield local
        if local.exists():
            upload(local, location)


def local_log_dir(location: str | Path) -> Path:
    """Where build.log of a remote build is written while it runs (uploaded at its end):
    `~/.cache/synth/remote-builds/<scheme>/<bucket>/<prefix>/`. A local build's own directory."""
    if not is_remote(location):
        return Path(location)
    scheme, _, rest = str(location).partition("://")
    safe = "/".join(p for p in rest.split("/") if p not in ("", ".", ".."))
    return Path(os.environ.get("SYNTH_CACHE", "~/.cache/synth")).expanduser() / "remote-builds" / scheme / safe


def write_json(location: Path | str, data: Any) -> None:
    """`data` as indented UTF-8 JSON at `location` (a path or a URI), written whole."""
    import json

    write_bytes(location, (json.dumps(data, ensure_ascii=False, indent=2, sort_keys=False) + "\n").encode("utf-8"))
