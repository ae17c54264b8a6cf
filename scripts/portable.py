#!/usr/bin/env python3
"""Assemble the portable edition's install script (docs/portable.md).

    scripts/portable.py [OUTPUT]            # default: dist/lease_sched_portable--<version>.sql
    scripts/portable.py --pg-tle [OUTPUT]   # the same as a pg_tle extension (untested here):
                                            # dist/lease_sched_portable--<version>.pg_tle.sql

The portable edition is the native extension's SQL with every function the native edition
implements in Rust (`LANGUAGE c ... AS 'MODULE_PATHNAME', '..._wrapper'`) replaced by its
PL/pgSQL twin. The shared files are read in the order src/lib.rs lists them and copied
verbatim; the twins live beside them, one file per concern, in sql/portable/<concern>.sql,
whose other statements (tables and helpers only the portable edition needs) follow the
shared file of the same name.

It refuses to write anything when the two editions could drift: a C function without a
twin, a twin without a C function, or a twin whose signature (arguments, defaults, return
type: everything between CREATE FUNCTION and LANGUAGE) differs from its C original's.
Only the Python standard library is needed: a user builds the script with python3 alone.
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def die(message):
    sys.stderr.write(f"portable.py: {message}\n")
    sys.exit(1)


def statements(text):
    """Split SQL text into statements, each with the comments and blank lines before it.

    Quotes, quoted identifiers, dollar quotes and comments are skipped while looking for
    the `;` that ends a statement. The texts joined again are the input, byte for byte."""
    out, start, i, n = [], 0, 0, len(text)
    while i < n:
        c = text[i]
        if c == "-" and text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
        elif c == "/" and text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c in ("'", '"'):
            j = i + 1
            while True:
                j = text.find(c, j)
                if j < 0:
                    die("unterminated quote")
                if text.startswith(c + c, j):
                    j += 2
                    continue
                break
            i = j + 1
        elif c == "$":
            m = re.match(r"\$([A-Za-z_][A-Za-z_0-9]*)?\$", text[i:])
            if m:
                tag = m.group(0)
                j = text.find(tag, i + len(tag))
                if j < 0:
                    die(f"unterminated dollar quote {tag}")
                i = j + len(tag)
            else:
                i += 1
        elif c == ";":
            out.append(text[start:i + 1])
            start = i = i + 1
        else:
            i += 1
    if text[start:].strip():
        out.append(text[start:])  # trailing comments
    return out


def split_leading(stmt):
    """(comments and blank lines before the statement, the statement itself)."""
    lines = stmt.split("\n")
    k = 0
    while k < len(lines) and (not lines[k].strip() or lines[k].lstrip().startswith("--")):
        k += 1
    return "\n".join(lines[:k]) + ("\n" if k else ""), "\n".join(lines[k:])


def code_only(stmt):
    """The statement without comments, for matching."""
    return re.sub(r"--[^\n]*", "", stmt)


FUNCTION = re.compile(r"CREATE\s+(?:OR\s+REPLACE\s+)?(FUNCTION|PROCEDURE)\s+lease_sched\.(\w+)\s*\(", re.I)


def c_function(stmt):
    """The name of the function a statement declares in C, or None."""
    code = code_only(stmt)
    m = FUNCTION.search(code)
    if m and re.search(r"\bLANGUAGE\s+c\b", code, re.I) and "MODULE_PATHNAME" in code:
        return m.group(2)
    return None


def declared_function(stmt):
    m = FUNCTION.search(code_only(stmt))
    return m.group(2) if m else None


def signature(stmt):
    """Everything between CREATE FUNCTION and LANGUAGE, whitespace-normalised."""
    code = code_only(stmt)
    m = FUNCTION.search(code)
    end = re.search(r"\bLANGUAGE\b", code[m.start():], re.I)
    return " ".join(code[m.start():m.start() + end.start()].split())


def shared_files():
    """The sql/*.sql files in the order src/lib.rs loads them (finalize last)."""
    lib = open(os.path.join(ROOT, "src", "lib.rs")).read()
    # (rustfmt may break a long call over lines: the path can follow on the next one)
    files = re.findall(r'^extension_sql_file!\(\s*"\.\./sql/([\w]+)\.sql"', lib, re.M)
    if not files or files[-1] != "finalize":
        die("src/lib.rs: no extension_sql_file! list ending with finalize")
    # Every DDL file the extension is built from must be in the script: one the pattern
    # above missed would leave its functions out of the portable edition, silently.
    on_disk = {f[:-4] for f in os.listdir(os.path.join(ROOT, "sql")) if f.endswith(".sql") and not f.startswith("lease_sched--")}
    if on_disk - set(files):
        die(f"src/lib.rs: found no extension_sql_file! for sql/{', sql/'.join(sorted(on_disk - set(files)))}.sql")
    return files


def version():
    cargo = open(os.path.join(ROOT, "Cargo.toml")).read()
    m = re.search(r'^version\s*=\s*"([^"]+)"', cargo, re.M)
    return m.group(1)


def assemble(for_extension=False):
    ver = version()
    portable_dir = os.path.join(ROOT, "sql", "portable")
    # Every twin, by function name, and the file it lives in.
    twins, extras, seen_files = {}, {}, set()
    for name in sorted(os.listdir(portable_dir)):
        if not name.endswith(".sql"):
            continue
        concern = name[:-4]
        seen_files.add(concern)
        extras[concern] = []
        for stmt in statements(open(os.path.join(portable_dir, name)).read()):
            fn = declared_function(stmt)
            if fn and re.search(r"^\s*--\s*twin:", split_leading(stmt)[0], re.M):
                if fn in twins:
                    die(f"sql/portable/{name}: a second twin of {fn}")
                twins[fn] = (concern, stmt)
            else:
                extras[concern].append(stmt)

    files = shared_files()
    for concern in seen_files:
        if concern not in files and concern != "prologue":
            die(f"sql/portable/{concern}.sql has no shared sql/{concern}.sql in src/lib.rs")

    out = []
    out.append(f"""-- lease_sched {ver}, portable edition: SQL and PL/pgSQL only (docs/portable.md).
-- GENERATED by scripts/portable.py (`make portable`) from sql/*.sql and sql/portable/*.sql;
-- do not edit. Run it as the role that will own lease_sched (a non-superuser is enough:
-- CREATE on the database), in the database that will use it:
--     psql -v ON_ERROR_STOP=1 -d <database> -f lease_sched_portable--{ver}.sql
""")
    if "prologue" in extras:
        out.extend(extras.pop("prologue"))
    used = set()
    for concern in files:
        text = open(os.path.join(ROOT, "sql", f"{concern}.sql")).read()
        out.append(f"\n-- ===== sql/{concern}.sql =====\n")
        for stmt in statements(text):
            fn = c_function(stmt)
            code = code_only(stmt)
            if fn:
                if fn not in twins:
                    die(f"sql/{concern}.sql: {fn} is implemented in C and has no PL/pgSQL twin in sql/portable/")
                twin_concern, twin = twins[fn]
                if twin_concern != concern:
                    die(f"the twin of {fn} is in sql/portable/{twin_concern}.sql, its original in sql/{concern}.sql")
                if signature(twin) != signature(stmt):
                    die(f"the twin of {fn} does not have the signature of its C original:\n"
                        f"  C:        {signature(stmt)}\n  portable: {signature(twin)}")
                leading, _ = split_leading(stmt)
                out.append(leading)
                out.append(twin.lstrip("\n"))
                used.add(fn)
            elif re.search(r"pg_extension_config_dump", code) and not for_extension:
                # Only CREATE EXTENSION may mark tables for pg_dump; a plain script's tables
                # are dumped anyway.
                leading, body = split_leading(stmt)
                out.append(leading + "-- (native only) " + " ".join(body.split()) + "\n")
            else:
                out.append(stmt)
        out.extend(extras.pop(concern, []))
    unused = set(twins) - used
    if unused:
        die(f"twins without a C original: {', '.join(sorted(unused))}")
    body = "".join(out)
    return ver, (pg_tle(ver, body) if for_extension else wrap(ver, body))


def wrap(ver, body):
    head, _, rest = body.partition("\n-- ===== ")
    return (head + "\n"
            "-- One transaction: a failure leaves nothing behind. Names resolve in pg_catalog only\n"
            "-- while it runs, whatever a co-tenant planted on the installing role's search_path.\n"
            "BEGIN;\n"
            "SET LOCAL search_path = pg_catalog, pg_temp;\n"
            "-- Bodies are checked when first run, not now: a twin may call a helper defined\n"
            "-- after it (beside the shared file of its concern), as pg_dump's scripts do.\n"
            "SET LOCAL check_function_bodies = off;\n"
            "CREATE SCHEMA lease_sched;\n"
            "\n-- ===== " + rest.rstrip() + "\n\nCOMMIT;\n")


def pg_tle(ver, body):
    """The same SQL as a pg_tle extension (RDS, Aurora, Supabase): CREATE EXTENSION
    lease_sched after running this script once. UNTESTED here (pg_tle cannot be installed
    on the test machines); docs/portable.md says so."""
    head, _, rest = body.partition("\n-- ===== ")
    ext = ("SET LOCAL check_function_bodies = off;\nCREATE SCHEMA lease_sched;\n\n-- ===== " + rest.rstrip() + "\n")
    if "$_pgtle_$" in ext:
        die("the script contains the pg_tle quote $_pgtle_$")
    return (head.replace("Run it as the role that will own lease_sched", "pg_tle packaging (UNTESTED). Run it as the role that will own lease_sched")
            + "\n-- Registers the portable edition with pg_tle; then: CREATE EXTENSION lease_sched;\n"
            f"SELECT pgtle.install_extension('lease_sched', '{ver}',\n"
            "    'Job-execution leases inside PostgreSQL (portable edition: SQL and PL/pgSQL only)',\n"
            "$_pgtle_$\n" + ext + "$_pgtle_$);\n")


def main():
    args = sys.argv[1:]
    for_extension = "--pg-tle" in args
    args = [a for a in args if a != "--pg-tle"]
    ver, script = assemble(for_extension)
    suffix = ".pg_tle.sql" if for_extension else ".sql"
    target = args[0] if args else os.path.join(ROOT, "dist", f"lease_sched_portable--{ver}{suffix}")
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    tmp = target + ".tmp"
    with open(tmp, "w") as f:
        f.write(script)
    os.replace(tmp, target)
    print(target)


if __name__ == "__main__":
    main()
