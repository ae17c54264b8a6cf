#!/usr/bin/env python3
"""Static check: no PL/pgSQL or SQL function that lease_sched installs (sql/*.sql, the
newest upgrade script and the portable edition in sql/portable) resolves a type through the
caller's search_path. (An SQL-standard body, `RETURN ...` or `BEGIN ATOMIC`, is parsed when
the function is created, its names bound then: only string bodies are checked.)

A function that pins `SET search_path = pg_catalog, pg_temp` resolves every name in
pg_catalog first. One that does not (run(): it must run the caller's command with the
caller's path) resolves its declarations and casts through that path, pg_temp first, and
PL/pgSQL runs a domain's CHECK when it initialises a variable: a look-alike domain planted
under a type's name would run as the caller. So in every function body without a pinned
search_path, this check requires:
  - each DECLAREd variable's type to be schema-qualified (pg_catalog.text, not text);
  - each cast `::type` to be schema-qualified;
  - no typed literal `type 'value'` of a type whose name is not an SQL keyword (text, uuid,
    timestamptz, jsonb...; keywords such as interval or boolean always mean pg_catalog's).
Operators and functions are covered by tests/integration/tests/search_path.rs and
tests/regress/sql/search_path.sql, which plant look-alikes and call everything.
Exit status 1 with one line per finding.
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Type names the grammar maps to pg_catalog by itself (SystemTypeName), so `interval '1 s'`
# or `x::int` cannot be redirected; everything else must be qualified.
KEYWORD_TYPES = {
    "int", "integer", "smallint", "bigint", "real", "float", "double", "decimal", "numeric", "boolean",
    "char", "character", "varchar", "nchar", "national", "bit", "interval", "time", "timestamp", "dec",
}
START = re.compile(r"CREATE\s+(?:OR\s+REPLACE\s+)?(?:FUNCTION|PROCEDURE)\s+([\w.]+)\s*\(", re.I)


def functions(text: str):
    """(name, header, body or None) of every CREATE FUNCTION/PROCEDURE: the header is what
    follows the argument list up to AS; the body is the dollar-quoted text (None for C)."""
    for m in START.finditer(text):
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        a = re.compile(r"\bAS\s+(\$\w*\$|')|\b(RETURN|BEGIN\s+ATOMIC)\b", re.I).search(text, i)
        if not a:
            continue
        header = text[i:a.start()]
        if a.group(2):  # an SQL-standard body: parsed at CREATE, its names bound then
            yield m.group(1), header, None
            continue
        if a.group(1) == "'":
            yield m.group(1), header, None
            continue
        end = text.index(a.group(1), a.end())
        yield m.group(1), header, text[a.end():end]


def strip_comments(text: str) -> str:
    return re.sub(r"--[^\n]*", "", text)


def findings_in(path: pathlib.Path):
    text = strip_comments(path.read_text())
    for name, header, body in functions(text):
        if body is None or not re.search(r"LANGUAGE\s+(plpgsql|sql)\b", header, re.I):
            continue
        if re.search(r"SET\s+search_path\s*=\s*pg_catalog\s*,\s*pg_temp", header, re.I):
            continue
        # Strip string literals (commands, messages) so their contents are not checked.
        code = re.sub(r"'(?:[^']|'')*'", "''", body)
        declare = re.search(r"\bDECLARE\b(.*?)\bBEGIN\b", code, re.S | re.I)
        if declare:
            for line in declare.group(1).split(";"):
                d = re.match(r"\s*(\w+)\s+(?:CONSTANT\s+)?([\w.\"]+)", line, re.I)
                if d and "." not in d.group(2) and d.group(2).lower() not in KEYWORD_TYPES:
                    yield f"{path.name}: {name}: variable {d.group(1)} is declared with unqualified type {d.group(2)}"
        for c in re.finditer(r"::\s*([\w\"]+)(\s*\.)?", code):
            if not c.group(2) and c.group(1).lower() not in KEYWORD_TYPES:
                yield f"{path.name}: {name}: cast to unqualified type ::{c.group(1)}"
        for t in re.finditer(r"\b(\w+)\s+''", code):
            word = t.group(1).lower()
            if word in {"text", "uuid", "timestamptz", "jsonb", "json", "date", "name", "bytea", "regclass", "regtype"}:
                yield f"{path.name}: {name}: typed literal {word} '...' resolves {word} through the search_path"


def scripts() -> list:
    """The fresh-install files and the upgrade script to the current version: what a
    database runs today. Older upgrade scripts are released history; whatever they create
    the newest upgrade script replaces."""
    cargo = (ROOT / "Cargo.toml").read_text()
    version = re.search(r'^version\s*=\s*"([^"]+)"', cargo, re.M).group(1)
    current = [p for p in sorted((ROOT / "sql").glob("*.sql")) if "--" not in p.name or p.name.endswith(f"--{version}.sql")]
    # The portable edition (sql/portable, installed without the library) is held to the same rule.
    return current + sorted((ROOT / "sql" / "portable").glob("*.sql"))


def main() -> int:
    found = [f for p in scripts() for f in findings_in(p)]
    for f in found:
        print(f)
    checked = [(n, h) for p in scripts() for n, h, b in functions(strip_comments(p.read_text())) if b]
    unpinned = sum(1 for _, h in checked if not re.search(r"SET\s+search_path", h, re.I))
    print(f"check_search_path: {len(checked)} PL/pgSQL and SQL functions and procedures in sql/ "
          f"({unpinned} without a pinned search_path), {len(found)} findings")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
