//! docs/api.md documents every function and procedure the extension installs, and
//! nothing it does not (the drift pg_jsonschema's README suffered).
use lease_sched_integration::*;

#[test]
fn every_installed_routine_is_documented_and_every_documented_one_exists() {
    let mut c = connect();
    let installed: Vec<String> = c
        .query(
            "SELECT DISTINCT p.proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = 'lease_sched' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api.md")).unwrap();
    let documented: Vec<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("### ").or_else(|| l.strip_prefix("## ")))
        .map(|h| h.trim().to_string())
        .filter(|h| h.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'))
        .collect();
    for name in &installed {
        assert!(documented.contains(name), "{name} is installed but has no section in docs/api.md");
    }
    for name in &documented {
        assert!(installed.contains(name), "docs/api.md documents {name}, which is not installed");
    }
}

/// The counters `stats()` returns are the ones docs/api.md lists, in the same order
/// (src/stats.rs names each once; this keeps the reference in step with it).
#[test]
fn the_documented_counters_are_the_ones_stats_returns() {
    let mut c = connect();
    let returned: Vec<String> =
        c.query("SELECT name FROM lease_sched.stats()", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api.md")).unwrap();
    let section = doc.split("### stats").nth(1).expect("a stats section").split("###").next().unwrap();
    let paragraph = section
        .split("Counters since server start")
        .nth(1)
        .expect("the counter list")
        .split(" (1 when")
        .next()
        .unwrap();
    let documented: Vec<String> = paragraph.split('`').skip(1).step_by(2).map(str::to_string).collect();
    assert_eq!(documented, returned, "docs/api.md's stats section and lease_sched.stats() disagree");
}
