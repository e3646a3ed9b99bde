#!/usr/bin/env python3
"""Generate spec/endpoints.tsv, the endpoint half of Plait's conformance map.

Reads every OpenAPI file (``*.yaml``) of the Matrix specification's
client-server, server-server and application-service APIs and lists each
operation as one row: ``api  method  path  status  test  note``.

* ``api`` is ``client-server``, ``federation`` (the server-server directory,
  which includes the key API and ``/.well-known/matrix/server``) or
  ``application-service``.
* ``path`` is the full path: the prefix from the file's ``servers[].url``
  (its ``{variables}`` replaced by their defaults, scheme and host dropped,
  or a Swagger 2 ``basePath``) followed by the path key.  Path parameters
  keep the spelling of the spec, e.g. ``{roomId}``.
* ``status`` (``implemented``, ``partial`` or ``missing``), ``test`` and
  ``note`` are edited by hand.  Regenerating keeps them for every row that
  still exists; new rows start as ``missing``.  Rows that disappeared from
  the spec are dropped and reported on stderr.
* Deprecated operations stay listed; the generator makes sure their note
  contains ``deprecated``.

Usage (from the repository root)::

    python3 spec/gen_endpoints.py            # rewrite spec/endpoints.tsv
    python3 spec/gen_endpoints.py --check    # exit 1 if it is out of date

``tests/it/spec_map.rs`` compares this file with the router.
"""

import argparse
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

try:
    import yaml
except ImportError:
    sys.exit("gen_endpoints.py needs PyYAML: pip install pyyaml")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SPEC_DIR = REPO.parent / "shared" / "matrix-spec" / "data" / "api"
DEFAULT_OUT = REPO / "spec" / "endpoints.tsv"

# Spec directory -> value of the `api` column, in the order rows are written.
APIS = {
    "client-server": "client-server",
    "server-server": "federation",
    "application-service": "application-service",
}
COLUMNS = ["api", "method", "path", "status", "test", "note"]
STATUSES = ("implemented", "partial", "missing")
HTTP_METHODS = ("get", "put", "post", "delete", "head", "options", "patch")
DEPRECATED = "deprecated"


def server_prefixes(document, source):
    """Return the path prefixes that the document's servers (or basePath) give."""
    prefixes = []
    for server in document.get("servers") or []:
        variables = server.get("variables") or {}

        def substitute(match):
            name = match.group(1)
            if name not in variables or "default" not in variables[name]:
                raise ValueError(f"{source}: server variable {{{name}}} has no default")
            return str(variables[name]["default"])

        url = re.sub(r"\{([^}]+)\}", substitute, server["url"])
        prefixes.append(urlsplit(url).path.rstrip("/"))
    if not prefixes and "basePath" in document:
        prefixes.append(str(document["basePath"]).rstrip("/"))
    if not prefixes:
        raise ValueError(f"{source}: neither servers nor basePath gives a path prefix")
    return list(dict.fromkeys(prefixes))


def spec_operations(spec_dir):
    """Yield (api, METHOD, full path, deprecated) for every operation in the spec."""
    for directory, api in APIS.items():
        files = sorted((spec_dir / directory).glob("*.yaml"))
        if not files:
            raise FileNotFoundError(f"no *.yaml files in {spec_dir / directory}")
        for source in files:
            with open(source, encoding="utf-8") as handle:
                document = yaml.safe_load(handle)
            paths = document.get("paths") or {}
            if not paths:
                continue
            for prefix in server_prefixes(document, source):
                for path, item in paths.items():
                    for method, operation in item.items():
                        if method not in HTTP_METHODS:
                            continue
                        deprecated = bool((operation or {}).get("deprecated", False))
                        yield api, method.upper(), prefix + path, deprecated


def read_tsv(path):
    """Return the existing rows keyed by (method, path); empty if there is no file."""
    rows = {}
    if not path.exists():
        return rows
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    if not lines or lines[0].split("\t") != COLUMNS:
        raise ValueError(f"{path}: first line must be the header {COLUMNS}")
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        fields += [""] * (len(COLUMNS) - len(fields))
        if len(fields) != len(COLUMNS):
            raise ValueError(f"{path}:{number}: expected {len(COLUMNS)} columns")
        row = dict(zip(COLUMNS, fields))
        if row["status"] not in STATUSES:
            raise ValueError(f"{path}:{number}: unknown status {row['status']!r}")
        rows[(row["method"], row["path"])] = row
    return rows


def mark_deprecated(note, deprecated):
    """Make the note mention deprecation exactly when the spec deprecates the endpoint."""
    words = [part.strip() for part in note.split(";") if part.strip()]
    has_mark = DEPRECATED in words
    if deprecated and not has_mark:
        words.insert(0, DEPRECATED)
    elif not deprecated and has_mark:
        words.remove(DEPRECATED)
    return "; ".join(words)


def build_rows(operations, existing):
    """Merge the spec's operations with the hand-edited columns of existing rows."""
    rows = {}
    for api, method, path, deprecated in operations:
        key = (method, path)
        if key in rows:
            if rows[key]["api"] != api:
                raise ValueError(f"{method} {path} appears in both {rows[key]['api']} and {api}")
            continue
        old = existing.get(key, {})
        rows[key] = {
            "api": api,
            "method": method,
            "path": path,
            "status": old.get("status", "missing"),
            "test": old.get("test", ""),
            "note": mark_deprecated(old.get("note", ""), deprecated),
        }
    order = {api: index for index, api in enumerate(APIS.values())}
    return sorted(rows.values(), key=lambda row: (order[row["api"]], row["path"], row["method"]))


def render_tsv(rows):
    lines = ["\t".join(COLUMNS)]
    for row in rows:
        fields = [row[column].replace("\t", " ").replace("\n", " ") for column in COLUMNS]
        lines.append("\t".join(fields))
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec-dir", type=Path, default=DEFAULT_SPEC_DIR,
                        help="the matrix-spec data/api directory (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="the TSV file to write (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if the file is out of date")
    args = parser.parse_args()

    existing = read_tsv(args.out)
    rows = build_rows(spec_operations(args.spec_dir), existing)

    kept = {(row["method"], row["path"]) for row in rows}
    for key, row in sorted(existing.items()):
        if key not in kept:
            claim = "" if row["status"] == "missing" else f" (was {row['status']})"
            print(f"dropped {row['method']} {row['path']}: no longer in the spec{claim}",
                  file=sys.stderr)

    text = render_tsv(rows)
    current = args.out.read_text(encoding="utf-8") if args.out.exists() else None
    if args.check:
        if text != current:
            sys.exit(f"{args.out} is out of date: run python3 spec/gen_endpoints.py")
        return
    if text != current:
        args.out.write_text(text, encoding="utf-8")
    counts = {}
    for row in rows:
        counts[row["api"]] = counts.get(row["api"], 0) + 1
    summary = ", ".join(f"{api} {count}" for api, count in counts.items())
    print(f"{args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}: "
          f"{len(rows)} endpoints ({summary})")


if __name__ == "__main__":
    main()
