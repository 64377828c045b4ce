//! The `rollgate` command line, behind `main.rs` (which parses the arguments and prints
//! the error): `run` dispatches each subcommand to its module.
//!
//! Exit codes: 0 success, 1 the repository (or a test) is invalid, 2 usage or I/O error.
//! Errors print once, as a chain, in `main.rs` and nowhere else.
//!
//! `args.rs`: the grammar; `daemon.rs`: `rollgate run`; `repo.rs`: subcommands over a
//! repository; `tools.rs`: the ones that stand alone.

mod args;
mod daemon;
mod repo;
mod tools;

pub use args::*;
use daemon::*;
use repo::*;
use tools::*;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::gate::{self, Change, GateContext, PolicyEngine};
use crate::model::Diagnostic;
use crate::source;

pub fn run(cli: Cli) -> Result<ExitCode> {
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
        Command::Run(args) => run_daemon(*args),
        Command::Judge(args) => judge(&args),
        Command::Demo { fast, dir, rps } => {
            if std::env::var_os("RUST_LOG").is_some() {
                init_logging(Output::Text);
            }
            crate::demo::run(&crate::demo::DemoOptions { fast, dir, rps })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::DemoService {
            port,
            version,
            fail_version,
            fail_rate,
            work_ms,
        } => {
            let failing = fail_version.as_deref() == Some(version.as_str());
            let errors_per_mille = if failing {
                (fail_rate.clamp(0.0, 1.0) * 1000.0).round() as u64
            } else {
                0
            };
            crate::demo::service::serve(crate::demo::service::ServiceConfig {
                port,
                version,
                errors_per_mille,
                work_ms,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Promote(a) => command(crate::engine::Command::Promote, a),
        Command::Abort(a) => command(crate::engine::Command::Abort, a),
        Command::Retry(a) => command(crate::engine::Command::Retry, a),
        Command::History {
            plan,
            repo,
            branch,
            output,
            rollout,
            out,
        } => history(&HistoryArgs {
            repo: &repo,
            branch: branch.as_deref(),
            plan: plan.as_deref(),
            output,
            rollout,
            out: out.as_deref(),
        }),
        Command::Dashboard {
            repo,
            branch,
            listen,
        } => dashboard(&repo, branch.as_deref(), listen),
        Command::Status {
            repo,
            branch,
            output,
        } => status(&repo, branch.as_deref(), output),
        Command::Plan(args) => plan(&args),
        Command::Load { url, rps, duration } => load(&url, rps, duration.as_deref()),
        Command::Dataplane { command } => dataplane(command),
        Command::JobRun { dir } => {
            crate::targets::local_jobs::keep(&dir)?;
            Ok(ExitCode::SUCCESS)
        }
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

/// The daemon and the data plane hold a connection per client: take the hard limit on
/// open files as the soft one (a 1,024 default is a handful of slow clients away from
/// failing fetches, pushes and webhooks).
pub fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        let _ = setrlimit(Resource::Nofile, l);
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The per-user state folder (XDG Base Directory): `$XDG_STATE_HOME/rollgate`, else
/// `$HOME/.local/state/rollgate`; `.rollgate` only where neither is set (it would show
/// in `git status` of the folder it is started from).
pub fn default_state_dir() -> PathBuf {
    let from = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    from("XDG_STATE_HOME")
        .filter(|p| p.is_absolute())
        .map(|p| p.join("rollgate"))
        .or_else(|| from("HOME").map(|h| h.join(".local/state/rollgate")))
        .unwrap_or_else(|| PathBuf::from(".rollgate"))
}
