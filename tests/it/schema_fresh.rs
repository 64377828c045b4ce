//! The committed JSON Schemas under `schema/` must equal what the code generates:
//! editors read the files, rollgate validates with the code, and they must agree.

use std::path::Path;

#[test]
fn committed_schemas_are_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema");
    for (file, text) in [
        (
            "rollgate-plan.schema.json",
            rollgate::model::schema::plan_schema_text(),
        ),
        (
            "rollgate-settings.schema.json",
            rollgate::model::schema::settings_schema_text(),
        ),
    ] {
        let committed = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(
            committed == text,
            "schema/{file} is stale: run `cargo run -- schema --write schema` and commit the result"
        );
    }
}

#[test]
fn example_plans_point_editors_at_the_schema() {
    let plans = Path::new(env!("CARGO_MANIFEST_DIR")).join("example-repo/plans");
    let mut seen = 0;
    for entry in std::fs::read_dir(plans).expect("example-repo/plans exists") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("readable");
        assert!(
            text.starts_with("# yaml-language-server: $schema="),
            "{} does not start with a yaml-language-server $schema line",
            path.display()
        );
        seen += 1;
    }
    assert!(
        seen >= 4,
        "example-repo has at least four plans, found {seen}"
    );
}
