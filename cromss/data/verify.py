"""``cromss data verify``: check LMDBs against their own metadata and their per-value checksums.

For users who copy the (hundreds of GB) SSL4EO-S12 / NoL LMDBs between machines: a copy cut short is
caught by the size check of every reader (:func:`cromss.data.readers._check_lmdb_size`), but flipped
bytes inside a value only by comparing checksums. :func:`cromss.data.readers.write_lmdb` stores the
SHA-256 of every value in ``<name>.lmdb/checksums.sha256``; for LMDBs made elsewhere (the official
release) ``--write-checksums`` computes them once on the source machine, to be verified on the copy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cromss.data.readers import (
    _open_env,
    decode_lmdb_value,
    format_checksums,
    lmdb_checksum_file,
    read_checksums,
    value_checksum,
)
from cromss.errors import DataError

__all__ = ["LmdbCheck", "find_lmdbs", "verify_lmdb"]


@dataclass
class LmdbCheck:
    """Outcome of :func:`verify_lmdb` for one LMDB."""

    path: Path
    entries: int = 0
    checksums: str = "absent"  # 'verified', 'written' or 'absent'
    mismatched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the checksum file, not in the LMDB
    extra: list[str] = field(default_factory=list)  # in the LMDB, not in the checksum file
    undecodable: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.mismatched or self.missing or self.extra or self.undecodable)

    def problem(self) -> str:
        """One line describing what is wrong (empty when ok)."""
        parts = []
        for name, keys in (("differ from their checksums", self.mismatched),
                           ("are listed in the checksums but absent", self.missing),
                           ("have no checksum", self.extra), ("cannot be decoded", self.undecodable)):
            if keys:
                parts.append(f"{len(keys)} value(s) {name} (keys {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''})")
        return "; ".join(parts)


def find_lmdbs(paths: list[str | Path]) -> list[Path]:
    """LMDBs named by ``paths``: an ``*.lmdb`` path itself, or every ``*.lmdb`` below a folder."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise DataError(f"not found: {path}")
        if path.suffix == ".lmdb" or (path / "data.mdb").is_file():
            found.append(path)
        else:
            found += sorted(p for p in path.rglob("*.lmdb"))
    if not found:
        raise DataError(f"no LMDB (*.lmdb) found in {', '.join(str(p) for p in paths)}")
    return found


def verify_lmdb(path: str | Path, write_checksums: bool = False,
                progress: Callable[[int, int], None] | None = None) -> LmdbCheck:
    """Read every value of LMDB ``path``: sizes against the metadata, structure, and the checksums.

    With ``write_checksums`` and no checksum file yet, the file is written from the values read (the
    LMDB is then the reference). An existing checksum file is never replaced.
    """
    from cromss.outputs import atomic_write_text

    path = Path(path)
    env = _open_env(path)  # raises DataError for a truncated data file (before any page is read)
    check = LmdbCheck(path)
    sums_path = lmdb_checksum_file(path)
    expected = read_checksums(sums_path) if sums_path.is_file() else None
    computed: list[tuple[str, str]] = []
    with env.begin(write=False) as txn:
        total = int(txn.stat()["entries"])
        for index, (raw_key, value) in enumerate(txn.cursor()):
            key = bytes(raw_key).decode(errors="replace")
            data = bytes(value)
            computed.append((key, value_checksum(data)))
            try:
                decode_lmdb_value(data, file=path, key=key)
            except DataError:
                check.undecodable.append(key)
            if progress is not None and (index + 1) % 1000 == 0:
                progress(index + 1, total)
    check.entries = len(computed)
    if expected is not None:
        check.checksums = "verified"
        seen = set()
        for key, digest in computed:
            seen.add(key)
            if key not in expected:
                check.extra.append(key)
            elif expected[key] != digest:
                check.mismatched.append(key)
        check.missing = [key for key in expected if key not in seen]
    elif write_checksums and not check.undecodable:
        # index order, as write_lmdb writes them (the cursor walks keys as bytes: '0', '1', '10', ...)
        computed.sort(key=lambda item: (0, int(item[0]), "") if item[0].isdigit() else (1, 0, item[0]))
        atomic_write_text(sums_path, format_checksums(computed), "LMDB checksums")
        check.checksums = "written"
    return check
