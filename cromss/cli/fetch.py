"""``cromss fetch``: published NoLDO-S12 data and CromSS weights by name, verified, into cromss layouts."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Download published artefacts of the CromSS release (Hugging Face dataset repo vikki23/NoLDO-S12)
through the Hugging Face cache, verify each file against the sha256 the hub reports for the
resolved commit, unpack archives atomically into DEST/<folder> in the layout `data.kind` expects,
run the `cromss data inspect` check on it and print the config lines to use next.

Weights stay in the hub cache; afterwards their names work wherever a weight path is accepted
(`--encoder cromss/13b-midf`, `export-encoder`, `analyze`, cromss.weights.load_into).

Environment (read by huggingface_hub): HF_HOME / HF_HUB_CACHE (cache folder), HF_ENDPOINT (mirror),
HF_HUB_OFFLINE=1 (cache only), HF_TOKEN (gated/private repos). Revisions: the first fetch records
the commit the branch resolved to (<cache>/cromss-fetch.json); later fetches ask for that commit
unless --revision is given.
"""

EPILOG = """\
examples:
  cromss fetch --list
  cromss fetch noldo-s12/dw --dest data          # -> data/ssl4eo_s12_dw/{train,test}/{s1,s2,label}
  cromss fetch cromss/13b-midf cromss/13b-latef
  HF_HUB_OFFLINE=1 cromss fetch cromss/13b-midf  # verify what is cached, never download
"""


def _size_text(size: int | None) -> str:
    if size is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return "?"


def run_list(args: argparse.Namespace) -> int:
    """Print the registry: name, file, size (cached record, else the hub's HEAD answer), description."""
    from cromss.fetch import ARTEFACTS, SSL4EO_NOTE, is_offline, read_manifest
    from cromss.fetch.hub import remote_size

    manifest = read_manifest()
    ask_hub = not is_offline() and not args.no_sizes
    print(f"{'name':<22}{'size':>10}  {'file':<46}  description")
    for name, art in ARTEFACTS.items():
        record = manifest.get(name)
        size, where = None, ""
        if isinstance(record, dict) and record.get("size") is not None:
            size, where = int(record["size"]), " (cached)"
        elif ask_hub:
            size, ask_hub = remote_size(art)  # unreachable once: stop asking
        print(f"{name:<22}{_size_text(size):>10}  {art.filename:<46}  {art.description}{where}")
    print("\nsize '?' = not cached and the hub was not asked (offline, --no-sizes) or not reachable.")
    print("licence: MIT (NoLDO-S12 dataset card); DW labels CC BY 4.0, OSM labels ODbL; cite CromSS "
          "(docs/data.md, docs/weights.md).\n")
    print(SSL4EO_NOTE)
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    """Fetch every NAME; print file, commit, checksum, layout check and next steps."""
    from cromss.errors import ConfigError
    from cromss.fetch import fetch, known_names, next_steps

    if args.list:
        return run_list(args)
    if not args.names:
        raise ConfigError(f"name the artefacts to fetch, or --list; known: {', '.join(known_names())}")
    for name in args.names:
        result = fetch(name, args.dest, args.revision)
        file = result.file
        print(f"{name}: {file.filename} @ {file.commit or file.revision_requested} "
              f"({_size_text(file.size)}, sha256 {file.sha256} verified)")
        print(f"  file   {file.path}")
        if result.layout is not None:
            summary = result.summary
            if "counts" in summary:
                counts = ", ".join(f"{split}: {n}" for split, n in summary["counts"].items())
                bands = ", ".join(f"{m}: {n}" for m, n in summary.get("bands", {}).items())
                print(f"  layout {result.layout} ({summary['kind']} tiles; {counts}; bands {bands}) - check passed")
            else:
                print(f"  layout {result.layout} ({summary.get('ids_complete')} ids with 4 label seasons, "
                      f"{summary.get('ids_incomplete')} incomplete) - label check passed")
        print("  next:")
        for line in next_steps(result):
            print("    " + line.replace("\n", "\n    "))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``fetch`` command."""
    parser = subparsers.add_parser(
        "fetch", help="download published NoLDO-S12 data / CromSS weights by name, verified",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="artefact names (see --list)")
    parser.add_argument("--list", action="store_true", help="list the names, files, sizes and where SSL4EO-S12 is")
    parser.add_argument("--dest", default=None, help="folder for unpacked datasets (default: ./data)")
    parser.add_argument("--revision", default=None,
                        help="branch, tag or commit to fetch (default: the recorded commit, else main)")
    parser.add_argument("--no-sizes", action="store_true", help="--list without asking the hub for sizes")
    parser.set_defaults(func=run_fetch)
