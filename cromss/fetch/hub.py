"""Download one artefact through the Hugging Face Hub cache and verify it.

huggingface_hub does the transfer: its cache (``HF_HOME`` / ``HF_HUB_CACHE``), the endpoint
(``HF_ENDPOINT``), offline mode (``HF_HUB_OFFLINE``), tokens (``HF_TOKEN`` or ``hf auth login``) and
resuming a transfer the network cut (HTTP ``Range``, up to 5 retries). The environment is read at call
time, not when huggingface_hub was imported, so a changed ``HF_ENDPOINT`` or ``HF_HUB_OFFLINE``
applies to the next fetch.

Verification: the sha256 of the file must equal the sha256 the hub reports for the resolved commit
(``X-Linked-Etag`` of an LFS file); for a small non-LFS file the hub's etag is the git blob id, checked
as such. A mismatch removes the file from the cache. Every verified fetch is recorded in
``<hub cache>/cromss-fetch.json`` (requested revision, resolved commit, sha256, size); later fetches
and name lookups ask for the recorded commit, so a name keeps meaning the same bytes.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cromss.errors import CromssError
from cromss.fetch.registry import Artefact

MANIFEST_NAME = "cromss-fetch.json"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")


class FetchError(CromssError):
    """A published artefact cannot be fetched, verified or unpacked."""


@dataclass
class Fetched:
    """A verified file in the hub cache."""

    name: str
    path: str
    repo_id: str
    filename: str
    revision_requested: str
    commit: str | None
    sha256: str
    size: int
    endpoint: str


# ----------------------------------------------------------------------------- environment
def _env_true(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def is_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now."""
    return _env_true(os.environ.get("HF_HUB_OFFLINE")) or _env_true(os.environ.get("TRANSFORMERS_OFFLINE"))


def hub_cache_dir() -> Path:
    """HF_HUB_CACHE, else HF_HOME/hub, else huggingface_hub's default (~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_endpoint() -> str:
    """HF_ENDPOINT as set now, else https://huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


# ----------------------------------------------------------------------------- manifest
def manifest_path() -> Path:
    return hub_cache_dir() / MANIFEST_NAME


def read_manifest() -> dict[str, Any]:
    """name -> record of the last verified fetch (empty if none or unreadable)."""
    path = manifest_path()
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):  # UnicodeDecodeError too: an unreadable manifest is an empty one
        return {}
    return data if isinstance(data, dict) else {}


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file in the same folder and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _record(fetched: Fetched) -> dict[str, Any]:
    from huggingface_hub import __version__ as hub_version

    from cromss import __version__

    record = asdict(fetched)
    record["fetched_at"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    record["cromss_version"] = __version__
    record["huggingface_hub_version"] = hub_version
    return record


# ----------------------------------------------------------------------------- hashing
def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def git_blob_sha1(path: Path, chunk: int = 1 << 20) -> str:
    """The git object id of a file (what the hub reports as etag of a non-LFS file)."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())  # noqa: S324 - git's object id
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _remove_cached(path: Path) -> None:
    """Remove a cache entry: the blob and the snapshot pointer to it."""
    blob = Path(os.path.realpath(path))
    blob.unlink(missing_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink(missing_ok=True)


def _commit_of(path: Path) -> str | None:
    """The commit folder name of ``.../snapshots/<commit>/<filename>``."""
    parts = path.parts
    if "snapshots" in parts:
        index = len(parts) - 1 - parts[::-1].index("snapshots")
        if index + 1 < len(parts) and _SHA1.fullmatch(parts[index + 1]):
            return parts[index + 1]
    return None


def _verify(art: Artefact, path: Path, hub_etag: str | None, recorded_sha: str | None, commit: str | None
            ) -> str:
    """sha256 of ``path`` after checking it against every expected hash; removes the file on mismatch."""
    actual = file_sha256(path)
    checks: list[tuple[str, str, str]] = []  # (what, expected, actual)
    if art.sha256:
        checks.append(("sha256 pinned in cromss", art.sha256, actual))
    if hub_etag and _SHA256.fullmatch(hub_etag):
        checks.append(("sha256 reported by the hub", hub_etag, actual))
    elif hub_etag and _SHA1.fullmatch(hub_etag):
        checks.append(("git blob id reported by the hub", hub_etag, git_blob_sha1(path)))
    if recorded_sha:
        checks.append(("sha256 recorded at the first fetch", recorded_sha, actual))
    if not checks:
        _remove_cached(path)
        raise FetchError(
            f"{art.name}: the hub reported no checksum for {art.filename} (etag {hub_etag!r}) and none is "
            "recorded; refusing an unverified file"
        )
    for what, expected, got in checks:
        if expected != got:
            _remove_cached(path)
            raise FetchError(
                f"{art.name}: checksum mismatch for {art.filename} at revision {commit or art.revision}: "
                f"expected ({what}) {expected}, got {got}; the file was removed from the cache "
                f"{hub_cache_dir()}, fetch it again"
            )
    return actual


# ----------------------------------------------------------------------------- fetch
def fetch_file(art: Artefact, revision: str | None = None, local_only: bool | None = None) -> Fetched:
    """Download (or find in the cache) and verify ``art``; record it in the manifest.

    Args:
        revision: branch, tag or commit to ask for; default: the commit recorded at the first fetch,
            else ``art.revision``.
        local_only: never touch the network; default: ``HF_HUB_OFFLINE``.

    Raises:
        FetchError: offline with a cold cache, server unreachable and nothing cached, unknown
            file/revision, failed transfer, checksum mismatch.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RevisionNotFoundError

    manifest = read_manifest()
    recorded = manifest.get(art.name) if isinstance(manifest.get(art.name), dict) else None
    if recorded and (recorded.get("repo_id"), recorded.get("filename")) != (art.repo_id, art.filename):
        recorded = None
    requested = revision or (recorded or {}).get("commit") or art.revision
    offline = is_offline() if local_only is None else local_only
    cache, endpoint = hub_cache_dir(), hub_endpoint()
    where = f"{art.filename} from {art.repo_id}@{requested}"

    hub_etag: str | None = None
    commit: str | None = None
    unreachable: str | None = None
    if not offline and _SHA1.fullmatch(requested) and _cached(art, requested, cache):
        offline = True  # a pinned commit already in the cache: no network needed
    if not offline:
        url = hf_hub_url(art.repo_id, art.filename, repo_type=art.repo_type, revision=requested,
                         endpoint=endpoint)
        try:
            meta = get_hf_file_metadata(url, endpoint=endpoint)
            hub_etag, commit = meta.etag, meta.commit_hash
        except (RevisionNotFoundError, EntryNotFoundError) as err:
            raise FetchError(f"{art.name}: {where} not found on {endpoint}: {_first_line(err)}") from None
        except HfHubHTTPError as err:
            status = getattr(getattr(err, "response", None), "status_code", None)
            if status is not None and status < 500:
                raise FetchError(f"{art.name}: {endpoint} refused {where} (HTTP {status}): "
                                 f"{_first_line(err)}; a gated or private repo needs HF_TOKEN") from None
            unreachable = _first_line(err)
        except Exception as err:  # noqa: BLE001 - httpx connection/timeout errors: fall back to the cache
            unreachable = f"{type(err).__name__}: {_first_line(err)}"

    try:
        if offline or unreachable:
            path = Path(hf_hub_download(art.repo_id, art.filename, repo_type=art.repo_type, revision=requested,
                                        cache_dir=str(cache), local_files_only=True))
        else:
            path = Path(hf_hub_download(art.repo_id, art.filename, repo_type=art.repo_type,
                                        revision=commit or requested, cache_dir=str(cache), endpoint=endpoint))
    except EntryNotFoundError as err:  # LocalEntryNotFoundError included
        if offline:
            reason = "HF_HUB_OFFLINE=1 forbids downloading"
        elif unreachable:
            reason = f"{endpoint} cannot be reached ({unreachable})"
        else:
            reason = _first_line(err)
        raise FetchError(
            f"{art.name}: {art.filename} is not in the cache {cache} and {reason}; run 'cromss fetch "
            f"{art.name}' where the hub is reachable (or point HF_HOME at a cache that holds it)"
        ) from None
    except (OSError, HfHubHTTPError) as err:
        raise FetchError(f"{art.name}: downloading {where} from {endpoint} failed: {_first_line(err)}") from None
    except Exception as err:  # noqa: BLE001 - httpx transfer errors after huggingface_hub's retries
        raise FetchError(
            f"{art.name}: downloading {where} from {endpoint} failed: {type(err).__name__}: {_first_line(err)}"
        ) from None

    commit = commit or _commit_of(path)
    blob = Path(os.path.realpath(path))
    recorded_sha = recorded.get("sha256") if recorded and recorded.get("commit") == commit else None
    if hub_etag is None and not recorded_sha and _SHA256.fullmatch(blob.name):
        hub_etag = blob.name  # offline: the cache names LFS blobs by the hub's sha256
    sha = _verify(art, path, hub_etag, recorded_sha, commit)
    fetched = Fetched(art.name, str(path), art.repo_id, art.filename, requested, commit, sha,
                      path.stat().st_size, endpoint)
    same = recorded and all(recorded.get(k) == v for k, v in
                            (("commit", commit), ("sha256", sha), ("path", str(path)), ("endpoint", endpoint)))
    if not same:  # a lookup of an unchanged file writes nothing (read-only shared caches work)
        manifest = read_manifest()
        manifest[art.name] = _record(fetched)
        try:
            write_json_atomic(manifest_path(), manifest)
        except OSError as err:
            warnings.warn(f"{art.name}: verified, but the fetch record {manifest_path()} cannot be written "
                          f"({err}); the commit is not pinned for later fetches", stacklevel=2)
    return fetched


def _cached(art: Artefact, revision: str, cache: Path) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(art.repo_id, art.filename, cache_dir=str(cache), revision=revision,
                                   repo_type=art.repo_type)
    return isinstance(found, str)


def remote_size(art: Artefact, timeout: float = 5.0) -> tuple[int | None, bool]:
    """(size the hub reports for ``art`` at its revision or None, whether the hub answered at all)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    endpoint = hub_endpoint()
    url = hf_hub_url(art.repo_id, art.filename, repo_type=art.repo_type, revision=art.revision,
                     endpoint=endpoint)
    try:
        return get_hf_file_metadata(url, endpoint=endpoint, timeout=timeout).size, True
    except (HfHubHTTPError, EntryNotFoundError):
        return None, True
    except Exception:  # noqa: BLE001 - a listing must work without network
        return None, False


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
