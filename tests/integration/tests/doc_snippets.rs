//! Every SQL and Python snippet in README.md and docs/*.md runs as written.
//!
//! Each file's snippets run in order, in a fresh database named `app` (the name the docs use)
//! on the test cluster, SQL with psql (`ON_ERROR_STOP`) as the superuser, Python with the
//! suite's virtualenv and the Python client from clients/python, connecting with the
//! conninfo the snippet itself gives (the server's host and port come from PGHOST/PGPORT).
//! The roles the docs grant to, `runner` and `reader`, exist (LOGIN). Not run:
//!
//! - a block marked just above with `<!-- docs-test: skip (why) -->`, for the few that
//!   need what a scratch cluster has not (pg_cron's database, PL/Proxy, another database);
//! - a signature: an `sql` block that declares a function (`RETURNS`, no `;`).
//!
//! `<!-- docs-test: setup: SQL -->` runs SQL before the next block, unseen by readers (what
//! an earlier page told them to do, e.g. CREATE EXTENSION and the grants).
use std::path::{Path, PathBuf};
use std::process::Command;

use lease_sched_integration::*;

#[derive(Debug)]
enum Step {
    Sql { line: usize, text: String },
    Python { line: usize, text: String },
    Setup { line: usize, text: String },
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The runnable steps of one markdown file, in order.
fn steps(markdown: &str) -> Vec<Step> {
    let mut out = Vec::new();
    let mut skip_next = false;
    let mut lines = markdown.lines().enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("<!-- docs-test:") {
            let rest = rest.trim_end_matches("-->").trim();
            if rest.starts_with("skip") {
                skip_next = true;
            } else if let Some(sql) = rest.strip_prefix("setup:") {
                out.push(Step::Setup { line: i + 1, text: sql.trim().to_string() });
            }
            continue;
        }
        let Some(lang) = t.strip_prefix("```") else {
            if !t.is_empty() {
                skip_next = false;
            }
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        let mut body = String::new();
        for (_, l) in lines.by_ref() {
            if l.trim() == "```" {
                break;
            }
            body.push_str(l.get(indent.min(l.len() - l.trim_start().len())..).unwrap_or(l));
            body.push('\n');
        }
        let skip = std::mem::take(&mut skip_next);
        match lang.trim() {
            _ if skip => {}
            "sql" if body.contains("RETURNS") && !body.contains(';') => {}
            "sql" => out.push(Step::Sql { line: i + 1, text: body }),
            "python" => out.push(Step::Python { line: i + 1, text: body }),
            _ => {}
        }
    }
    out
}

fn conn_env() -> Vec<(String, String)> {
    let dsn = dsn();
    let get =
        |k: &str| dsn.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{k}="))).unwrap_or("").to_string();
    vec![("PGHOST".into(), get("host")), ("PGPORT".into(), get("port"))]
}

fn psql(db: &str, sql: &str) -> Result<String, String> {
    let out = Command::new(format!("{}/psql", pgbin()))
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", db, "-c", sql])
        .envs(conn_env())
        .output()
        .expect("run psql");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

fn python(code: &str) -> Result<String, String> {
    let py = std::env::var("LEASE_SCHED_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(py)
        .args(["-c", code])
        .env("PYTHONPATH", repo().join("clients/python/src"))
        .envs(conn_env())
        .current_dir(repo())
        .output()
        .expect("run python");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

#[test]
fn the_snippet_parser_finds_blocks_markers_and_signatures() {
    let md = "x\n```sql\nSELECT 1;\n```\n<!-- docs-test: skip (no) -->\n```sql\nSELECT 2;\n```\n\
              ```sql\nlease_sched.f(a int) RETURNS void\n```\n<!-- docs-test: setup: SELECT 3; -->\n   ```python\n   print(1)\n   ```\n";
    let s = steps(md);
    assert_eq!(s.len(), 3, "{s:?}");
    assert!(matches!(&s[0], Step::Sql { text, .. } if text == "SELECT 1;\n"));
    assert!(matches!(&s[1], Step::Setup { text, .. } if text == "SELECT 3;"));
    assert!(matches!(&s[2], Step::Python { text, .. } if text == "print(1)\n"));
}

#[test]
fn every_sql_and_python_snippet_in_the_docs_runs() {
    let mut failures = Vec::new();
    let mut ran = 0;
    for role in ["runner", "reader"] {
        psql(
            "postgres",
            &format!("DO $$ BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"),
        )
        .unwrap();
    }
    for file in markdown_files() {
        let name = file.strip_prefix(repo()).unwrap_or(&file).display().to_string();
        let steps = steps(&std::fs::read_to_string(&file).unwrap());
        if steps.is_empty() {
            continue;
        }
        psql("postgres", "DROP DATABASE IF EXISTS app WITH (FORCE)").unwrap();
        psql("postgres", "CREATE DATABASE app").unwrap();
        for step in &steps {
            let (line, result) = match step {
                Step::Sql { line, text } | Step::Setup { line, text } => (line, psql("app", text)),
                Step::Python { line, text } => (line, python(text)),
            };
            ran += 1;
            if let Err(output) = result {
                failures.push(format!("{name}:{line}: {step:?}\n{output}"));
                break; // later snippets of the file build on this one
            }
        }
    }
    psql("postgres", "DROP DATABASE IF EXISTS app WITH (FORCE)").unwrap();
    assert!(ran > 10, "found the snippets ({ran})");
    assert!(failures.is_empty(), "snippets that do not run as written:\n{}", failures.join("\n\n"));
}
