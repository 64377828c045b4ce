//! The `rollgate` command line: the only place real adapters are built and wired.
//!
//! Exit codes: 0 success, 1 the repository (or a test) is invalid, 2 usage or I/O error.
//! Errors print once, as a chain, here and nowhere else.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use rollgate::gate::{self, Change, GateContext, PolicyEngine};
use rollgate::model::Diagnostic;
use rollgate::source;

#[derive(Debug, Parser)]
#[command(
    name = "rollgate",
    version,
    about = "GitOps rollout reconciler: plans in Git, staged rollouts, judged on live metrics, written back to Git"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a repository: every plan against the schema and the policies.
    Validate {
        /// The repository's root folder.
        #[arg(default_value = ".")]
        repo: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
        /// Check the schema only, without policies.
        #[arg(long)]
        no_policy: bool,
    },
    /// Work with Rego policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Print the JSON Schema of plans or settings, or write both files to a folder.
    Schema {
        #[arg(value_enum, default_value = "plan")]
        which: SchemaKind,
        /// Write `rollgate-plan.schema.json` and `rollgate-settings.schema.json` here.
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Run every `test_*` rule in `*_test.rego` files, like `opa test`.
    Test {
        /// Folders of policies and their tests (default: `policies`).
        dirs: Vec<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum SchemaKind {
    Plan,
    Settings,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Validate {
            repo,
            output,
            no_policy,
        } => validate(&repo, output, no_policy),
        Command::Policy {
            command: PolicyCommand::Test { dirs },
        } => policy_test(dirs),
        Command::Schema { which, write } => schema(which, write.as_deref()),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "rollgate",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn validate(repo: &Path, output: Output, no_policy: bool) -> Result<ExitCode> {
    let snap = source::fs::read_dir(repo)
        .with_context(|| format!("cannot read repository {}", repo.display()))?;
    let mut extra: Vec<Diagnostic> = Vec::new();
    let engine: Option<Box<dyn PolicyEngine>> = if no_policy {
        None
    } else {
        match load_policy_engine(&repo.join("policies")) {
            Ok(e) => Some(e),
            Err(d) => {
                extra.extend(d);
                None
            }
        }
    };
    let cx = GateContext {
        base: None,
        change: Change::default(),
        now: chrono::Utc::now(),
        only: None,
    };
    let mut report = gate::check(&snap, &cx, engine.as_deref());
    if !extra.is_empty() {
        // The policies could not be loaded, so no plan was checked against them.
        let names: Vec<String> = report.accepted.keys().cloned().collect();
        for name in names {
            if let Some(p) = report.accepted.remove(&name) {
                report
                    .rejected
                    .insert(format!("plans/{}.yaml", p.plan.name));
            }
        }
    }
    report.diagnostics.extend(extra);
    rollgate::model::diagnostics::sort(&mut report.diagnostics);
    let errors = report.errors();
    let warnings = report.diagnostics.len() - errors;
    match output {
        Output::Text => {
            for d in &report.diagnostics {
                println!("{d}");
            }
            println!(
                "checked {} plan{}: {} valid, {} invalid; {errors} error{}, {warnings} warning{}",
                report.plan_files,
                plural(report.plan_files),
                report.accepted.len(),
                report.rejected.len(),
                plural(errors),
                plural(warnings)
            );
        }
        Output::Json => {
            let doc = serde_json::json!({
                "valid": errors == 0,
                "plans": report.plan_files,
                "accepted": report.accepted.keys().collect::<Vec<_>>(),
                "rejected": report.rejected,
                "errors": errors,
                "warnings": warnings,
                "diagnostics": report.diagnostics,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
    }
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn policy_test(dirs: Vec<PathBuf>) -> Result<ExitCode> {
    let report = match run_policy_tests(&dirs) {
        Ok(r) => r,
        Err(diags) => {
            for d in diags {
                eprintln!("{d}");
            }
            return Ok(ExitCode::from(1));
        }
    };
    print!("{}", report.render());
    Ok(if report.failed() == 0 && report.passed() > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn schema(which: SchemaKind, write: Option<&Path>) -> Result<ExitCode> {
    if let Some(dir) = write {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for (kind, file) in [
            (SchemaKind::Plan, "rollgate-plan.schema.json"),
            (SchemaKind::Settings, "rollgate-settings.schema.json"),
        ] {
            let path = dir.join(file);
            std::fs::write(&path, schema_text(kind))
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", schema_text(which));
    Ok(ExitCode::SUCCESS)
}

fn schema_text(kind: SchemaKind) -> String {
    match kind {
        SchemaKind::Plan => rollgate::model::schema::plan_schema_text(),
        SchemaKind::Settings => rollgate::model::schema::settings_schema_text(),
    }
}

/// The Rego engine with the built-in policies and the repo's own (when the folder exists).
fn load_policy_engine(dir: &Path) -> Result<Box<dyn PolicyEngine>, Vec<Diagnostic>> {
    let dir = dir.is_dir().then_some(dir);
    Ok(Box::new(rollgate::gate::Rego::new(
        rollgate::policy::PolicySet::load(dir)?,
    )))
}

fn run_policy_tests(dirs: &[PathBuf]) -> Result<rollgate::policy::TestReport, Vec<Diagnostic>> {
    let dirs = if dirs.is_empty() {
        vec![PathBuf::from("policies")]
    } else {
        dirs.to_vec()
    };
    rollgate::policy::run_tests(&dirs)
}
