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
    /// Run the reconciler: watch the repository and roll out every plan change.
    Run(Box<RunArgs>),
    /// Promote a rollout past an untimed pause or a held analysis (a command commit).
    Promote(CommandArgs),
    /// Abort a rollout: traffic back to stable, the candidate removed (a command commit).
    Abort(CommandArgs),
    /// Retry a rolled-back rollout or a held analysis (a command commit).
    Retry(CommandArgs),
    /// A whole rollout story on this machine: real processes, real traffic, real Git.
    Demo {
        /// Short analysis stages: the story in under 90 seconds.
        #[arg(long)]
        fast: bool,
        /// Keep the GitOps repository and state here (default: a temporary folder).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Requests per second from the built-in load generator.
        #[arg(long, default_value_t = 200)]
        rps: u32,
    },
    /// Steady HTTP load on a service (the demo's load generator, on its own): builtin
    /// analysis on a local target judges real requests, so something must send them.
    Load {
        /// Where to send `GET /`: `127.0.0.1:8080` or `http://127.0.0.1:8080`.
        url: String,
        /// Requests per second.
        #[arg(long, default_value_t = 100)]
        rps: u32,
        /// How long; without it, until Ctrl-C.
        #[arg(long)]
        duration: Option<String>,
    },
    /// The demo's HTTP service (started by the local target in the demo).
    #[command(hide = true)]
    DemoService {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        version: String,
        /// This version answers a share of requests with 500.
        #[arg(long)]
        fail_version: Option<String>,
        /// The share of failing requests for `--fail-version` (0..1).
        #[arg(long, default_value_t = 0.2)]
        fail_rate: f64,
        /// Milliseconds of work per request.
        #[arg(long, default_value_t = 2)]
        work_ms: u64,
    },
    /// Run the canary-versus-baseline judge offline on numbers, to replay or explain a verdict.
    Judge(JudgeArgs),
    /// Every transition of every rollout, from the commit trailers alone.
    History {
        /// Only this plan.
        plan: Option<String>,
        #[arg(long, default_value = ".")]
        repo: String,
        #[arg(long)]
        branch: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Preview a change before it is merged: verdicts (judged by base's settings and
    /// policies), the diff and the dry run of every plan it touches.
    Plan(PlanArgs),
    /// The `local` target's data plane: proxies and workloads that outlive the daemon.
    Dataplane {
        #[command(subcommand)]
        command: DataplaneCommand,
    },
    /// The live table: every plan's status at the head of the branch.
    Status {
        #[arg(long, default_value = ".")]
        repo: String,
        #[arg(long)]
        branch: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
enum DataplaneCommand {
    /// Serve in the foreground (`rollgate run` starts one by itself when none answers).
    Serve {
        /// The local target's folder (default for `rollgate run`: STATE/local/<target>).
        #[arg(long)]
        dir: PathBuf,
        /// Stop (with every workload) when this process is gone (`rollgate demo`).
        #[arg(long, hide = true)]
        owner_pid: Option<u32>,
    },
    /// Stop everything: drain and stop every workload and proxy, then the data plane.
    Stop {
        /// A data plane's folder, or a `rollgate run --state-dir` (stops all under it).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Is a data plane running, and who is it.
    Status {
        /// A data plane's folder, or a `rollgate run --state-dir`.
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct PlanArgs {
    /// The repository (a checkout or a bare repository).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// The revision the change goes into (a sha, a branch, `HEAD~1`): its settings,
    /// policies and statuses judge the change.
    #[arg(long)]
    base: String,
    /// The change's revision.
    #[arg(long, default_value = "HEAD")]
    head: String,
    #[arg(long, value_enum, default_value = "text")]
    output: PlanOutput,
    /// Evaluate at this time (RFC 3339) instead of now; for tests.
    #[arg(long, hide = true)]
    now: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum PlanOutput {
    Text,
    Markdown,
    Json,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The GitOps repository: a path (a bare repository or a checkout's remote) or a URL.
    #[arg(long)]
    repo: String,
    /// The branch to watch and write to.
    #[arg(long, default_value = "main")]
    branch: String,
    /// Work until every rollout is finished or waiting on a human, a change window or a
    /// pause longer than 10 minutes, then exit: 0, or 1 when a plan could not be
    /// reconciled, 2 when a pass failed (the remote).
    #[arg(long)]
    once: bool,
    /// How often to fetch when nothing else wakes the loop.
    #[arg(long, default_value = "30s")]
    interval: String,
    /// Where rollgate keeps its private clone and target state (default: the user's
    /// state folder, $XDG_STATE_HOME/rollgate or ~/.local/state/rollgate).
    #[arg(long, env = "ROLLGATE_STATE_DIR", default_value_os_t = default_state_dir())]
    state_dir: PathBuf,
    /// The only namespaces rollgate may touch (comma-separated). Plans for others are
    /// rejected at validation; `namespaces:` on a Kubernetes target in rollgate.yaml can
    /// narrow this further, never widen it.
    #[arg(long, env = "ROLLGATE_NAMESPACES", value_delimiter = ',')]
    namespaces: Option<Vec<String>>,
    /// Change nothing anywhere: targets only journal what they would do (in
    /// `STATE_DIR/dry-run/`), nothing is committed or pushed (the statuses it would write
    /// are logged and kept in memory), and the GitHub side stays off.
    #[arg(long)]
    dry_run: bool,
    /// Targets journal what they would do, while Git is written as in a real run (a
    /// rehearsal of the write-back against a scratch remote; used by the tests).
    #[arg(long, hide = true)]
    journal_targets: bool,
    /// Log lines as text or JSON.
    #[arg(long, value_enum, default_value = "text")]
    log_format: Output,
    /// Serve `/healthz`, `/readyz` and `/metrics` here (e.g. `127.0.0.1:9464`).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// One of several replicas: act only while holding a coordination.k8s.io Lease;
    /// the others stand by and take over when it lapses.
    #[arg(long, conflicts_with = "once")]
    leader_elect: bool,
    /// The Lease's name.
    #[arg(long, default_value = "rollgate")]
    lease_name: String,
    /// The Lease's namespace (default: `POD_NAMESPACE`, else the pod's own, else `default`).
    #[arg(long)]
    lease_namespace: Option<String>,
    /// Report to this GitHub repository (OWNER/NAME) and serve `POST /webhooks/github` on
    /// `--listen` (default: from `--repo` when it is a GitHub URL and a GitHub flag is given).
    #[arg(long)]
    github_repo: Option<String>,
    /// The GitHub API; for GitHub Enterprise Server `https://HOST/api/v3`.
    #[arg(long, default_value = rollgate::github::DEFAULT_API_URL)]
    github_url: String,
    /// A file holding the GitHub token (else the `GITHUB_TOKEN` environment variable).
    #[arg(long)]
    github_token_file: Option<PathBuf>,
    /// Authenticate as this GitHub App (with `--github-app-key-file`) instead of a token.
    #[arg(long)]
    github_app_id: Option<u64>,
    /// The GitHub App's private key (PEM).
    #[arg(long)]
    github_app_key_file: Option<PathBuf>,
    /// A file holding the webhook secret (else `ROLLGATE_WEBHOOK_SECRET`); the endpoint
    /// is never served without one.
    #[arg(long)]
    webhook_secret_file: Option<PathBuf>,
    #[command(flatten)]
    git: GitArgs,
}

/// How rollgate reaches the GitOps repository over https and ssh (README: "Git remotes").
/// A token is read from a file or `ROLLGATE_GIT_TOKEN`, never from a flag's value.
#[derive(Debug, clap::Args)]
struct GitArgs {
    /// A file holding the token (or password) for Git over https (else `ROLLGATE_GIT_TOKEN`).
    #[arg(long, env = "ROLLGATE_GIT_TOKEN_FILE")]
    git_token_file: Option<PathBuf>,
    /// The user name sent with the token (default `x-access-token`; GitLab: `oauth2`).
    #[arg(long, env = "ROLLGATE_GIT_USERNAME")]
    git_username: Option<String>,
    /// The private key for Git over ssh (else the ssh agent).
    #[arg(long, env = "ROLLGATE_GIT_SSH_KEY")]
    git_ssh_key: Option<PathBuf>,
    /// A file holding the ssh key's passphrase.
    #[arg(long, env = "ROLLGATE_GIT_SSH_PASSPHRASE_FILE")]
    git_ssh_passphrase_file: Option<PathBuf>,
    /// The known_hosts file the ssh host key must be in (default `~/.ssh/known_hosts`).
    #[arg(long, env = "ROLLGATE_GIT_KNOWN_HOSTS")]
    git_known_hosts: Option<PathBuf>,
    /// CA certificates (PEM) for Git over https, e.g. a corporate CA (else `SSL_CERT_FILE`,
    /// else the system's).
    #[arg(long, env = "ROLLGATE_GIT_CA_FILE")]
    git_ca_file: Option<PathBuf>,
}

impl GitArgs {
    /// The credentials: the flags, over the environment, with a password taken out of
    /// `url` (which then holds none).
    fn auth(
        &self,
        url: &mut rollgate::source::remote::RemoteUrl,
    ) -> Result<rollgate::source::remote::GitAuth> {
        let mut auth = rollgate::source::remote::GitAuth::from_env();
        auth.absorb_userinfo(url);
        if let Some(file) = &self.git_token_file {
            auth.token = rollgate::github::Secret::load(Some(file), "ROLLGATE_GIT_TOKEN")?;
        }
        let set = |slot: &mut Option<PathBuf>, v: &Option<PathBuf>| {
            if v.is_some() {
                slot.clone_from(v);
            }
        };
        if self.git_username.is_some() {
            auth.username.clone_from(&self.git_username);
        }
        set(&mut auth.ssh_key, &self.git_ssh_key);
        set(&mut auth.ssh_passphrase_file, &self.git_ssh_passphrase_file);
        set(&mut auth.known_hosts, &self.git_known_hosts);
        set(&mut auth.ca_file, &self.git_ca_file);
        for (what, path) in [
            ("--git-ssh-key", &auth.ssh_key),
            ("--git-ssh-passphrase-file", &auth.ssh_passphrase_file),
            ("--git-known-hosts", &auth.known_hosts),
            ("--git-ca-file", &auth.ca_file),
        ] {
            if let Some(p) = path
                && !p.is_file()
            {
                anyhow::bail!(
                    "{what} {}: no such file (from the flag or its environment variable)",
                    p.display()
                );
            }
        }
        Ok(auth)
    }
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum JudgeKind {
    /// Raw samples (latencies, durations): one number per line.
    Continuous,
    /// Counts: one line `successes total` per file.
    Ratio,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum DirectionArg {
    Increase,
    Decrease,
    Either,
}

#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("effect")
        .required(true)
        .multiple(true)
        .args(["max_ratio", "max_increase"])
))]
struct JudgeArgs {
    #[arg(long)]
    baseline: PathBuf,
    #[arg(long)]
    canary: PathBuf,
    #[arg(long, value_enum, default_value = "continuous")]
    kind: JudgeKind,
    /// Which change is harmful (default: increase for continuous, decrease for a success ratio).
    #[arg(long, value_enum)]
    direction: Option<DirectionArg>,
    /// Largest allowed canary/baseline ratio (the effect size).
    #[arg(long)]
    max_ratio: Option<f64>,
    /// Largest allowed absolute difference.
    #[arg(long)]
    max_increase: Option<f64>,
    #[arg(long, default_value_t = 0.05)]
    alpha: f64,
    #[arg(long, default_value_t = 1)]
    min_samples: u64,
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

#[derive(Debug, clap::Args)]
struct CommandArgs {
    /// The plan to act on.
    plan: String,
    /// A checkout of the GitOps repository.
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Push the command commit to `origin`.
    #[arg(long)]
    push: bool,
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
    raise_open_files_limit();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The daemon and the data plane hold a connection per client: take the hard limit on
/// open files as the soft one (a 1,024 default is a handful of slow clients away from
/// failing fetches, pushes and webhooks).
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        let _ = setrlimit(Resource::Nofile, l);
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
        Command::Run(args) => run_daemon(*args),
        Command::Judge(args) => judge(&args),
        Command::Demo { fast, dir, rps } => {
            if std::env::var_os("RUST_LOG").is_some() {
                init_logging(Output::Text);
            }
            rollgate::demo::run(&rollgate::demo::DemoOptions { fast, dir, rps })?;
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
            rollgate::demo::service::serve(rollgate::demo::service::ServiceConfig {
                port,
                version,
                errors_per_mille,
                work_ms,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Promote(a) => command(rollgate::engine::Command::Promote, a),
        Command::Abort(a) => command(rollgate::engine::Command::Abort, a),
        Command::Retry(a) => command(rollgate::engine::Command::Retry, a),
        Command::History {
            plan,
            repo,
            branch,
            output,
        } => history(&repo, branch.as_deref(), plan.as_deref(), output),
        Command::Status {
            repo,
            branch,
            output,
        } => status(&repo, branch.as_deref(), output),
        Command::Plan(args) => plan(&args),
        Command::Load { url, rps, duration } => load(&url, rps, duration.as_deref()),
        Command::Dataplane { command } => dataplane(command),
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
        namespaces: None,
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
    // An I/O error (no rollgate.yaml, an unreadable file) is not a verdict on the plans.
    let io = report
        .diagnostics
        .iter()
        .any(|d| d.code == rollgate::model::diagnostics::Code::Io);
    Ok(if io {
        ExitCode::from(2)
    } else if errors == 0 {
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

fn command(c: rollgate::engine::Command, a: CommandArgs) -> Result<ExitCode> {
    let repo = git2::Repository::discover(&a.repo)
        .with_context(|| format!("{} is not in a Git checkout", a.repo.display()))?;
    let id = match rollgate::commands::commit(&repo, c, &a.plan, a.push) {
        Ok(id) => id,
        Err(e) if e.downcast_ref::<rollgate::commands::Refused>().is_some() => {
            eprintln!("refused: {e}");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e),
    };
    println!(
        "{} {}: commit {}{}",
        rollgate::commands::word(c),
        a.plan,
        &id.to_string()[..12],
        if a.push {
            " pushed"
        } else {
            " (push it, or use --push)"
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn history(
    repo: &str,
    branch: Option<&str>,
    plan: Option<&str>,
    output: Output,
) -> Result<ExitCode> {
    let r = rollgate::history::open(repo)?;
    let head = rollgate::history::resolve(&r, branch)?;
    let entries = rollgate::history::collect(&r, head, plan)?;
    match output {
        Output::Text => print!("{}", rollgate::history::render_text(&entries)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&entries)?),
    }
    Ok(ExitCode::SUCCESS)
}

/// `rollgate plan`: 0 when every touched plan passes (or none is touched), 1 when any
/// is rejected or denied, 2 on a usage or I/O error (like `validate`).
fn plan(a: &PlanArgs) -> Result<ExitCode> {
    let now = match &a.now {
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .with_context(|| format!("--now `{t}` is not an RFC 3339 time"))?
            .with_timezone(&chrono::Utc),
        None => chrono::Utc::now(),
    };
    let p = rollgate::preview::preview(&a.repo, &a.base, &a.head, now)?;
    match a.output {
        PlanOutput::Text => print!("{}", p.text()),
        PlanOutput::Markdown => print!("{}", p.markdown()),
        PlanOutput::Json => println!("{}", serde_json::to_string_pretty(&p)?),
    }
    Ok(match p.conclusion() {
        rollgate::preview::Conclusion::Failure => ExitCode::from(1),
        rollgate::preview::Conclusion::Success | rollgate::preview::Conclusion::Neutral => {
            ExitCode::SUCCESS
        }
    })
}

fn status(repo: &str, branch: Option<&str>, output: Output) -> Result<ExitCode> {
    let r = rollgate::history::open(repo)?;
    let head = rollgate::history::resolve(&r, branch)?;
    let statuses = rollgate::history::statuses(&r, head)?;
    match output {
        Output::Text => print!("{}", rollgate::history::render_status(&statuses)),
        Output::Json => {
            let docs: Vec<_> = statuses.iter().map(rollgate::gate::status_doc).collect();
            println!("{}", serde_json::to_string_pretty(&docs)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Colour only on a terminal, and never with `NO_COLOR` set (https://no-color.org).
fn colour_on_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn init_logging(format: Output) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The AWS SDK's own debug and trace events print access key ids and request headers
    // (session tokens): never below info, whatever RUST_LOG asks.
    for target in rollgate::aws::SDK_LOG_TARGETS {
        if let Ok(d) = format!("{target}=info").parse() {
            filter = filter.add_directive(d);
        }
    }
    // The watcher logs every inotify watch it drops at info (six lines per push).
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("notify"))
        && let Ok(d) = "notify=warn".parse()
    {
        filter = filter.add_directive(d);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour_on_stderr())
        .with_writer(std::io::stderr);
    match format {
        Output::Json => builder.json().init(),
        Output::Text => builder.init(),
    }
}

/// The private clone lives under the state dir, one per remote URL.
fn work_dir(state: &Path, url: &str) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    url.hash(&mut h);
    state.join("git").join(format!("{:016x}", h.finish()))
}

/// A campaign ended: exit, so that a restart resumes from Git (2: the lease was lost).
fn leader_stopped(why: rollgate::leader::Stopped) {
    match why {
        rollgate::leader::Stopped::Lost => std::process::exit(2),
        rollgate::leader::Stopped::Terminated => std::process::exit(0),
    }
}

/// The GitHub integration, when a GitHub flag is given. A half configuration is an
/// error: no repository, no credentials, no `--listen`, or no webhook secret (the
/// endpoint is never served unauthenticated).
fn github_options(args: &RunArgs, url: &str) -> Result<Option<rollgate::github::handle::Options>> {
    use rollgate::github::{Auth, Config, RepoName, Secret, handle::Options};
    let wanted = args.github_repo.is_some()
        || args.github_token_file.is_some()
        || args.github_app_id.is_some()
        || args.github_app_key_file.is_some()
        || args.webhook_secret_file.is_some();
    if !wanted {
        return Ok(None);
    }
    let repo: RepoName = match &args.github_repo {
        Some(r) => r.parse()?,
        None => RepoName::from_url(url)
            .context("--github-repo OWNER/NAME is needed (--repo is not a GitHub URL)")?,
    };
    let auth = Auth::load(
        args.github_token_file.as_deref(),
        args.github_app_id,
        args.github_app_key_file.as_deref(),
    )?
    .context(
        "GitHub needs credentials: GITHUB_TOKEN, --github-token-file, or --github-app-id with --github-app-key-file",
    )?;
    let secret = Secret::load(args.webhook_secret_file.as_deref(), "ROLLGATE_WEBHOOK_SECRET")?
        .context(
            "refusing to serve /webhooks/github without a secret: set ROLLGATE_WEBHOOK_SECRET or --webhook-secret-file",
        )?;
    if args.listen.is_none() {
        anyhow::bail!("the GitHub webhook endpoint needs --listen ADDR");
    }
    Ok(Some(Options {
        secret,
        github: Config {
            api_url: args.github_url.clone(),
            repo,
            auth,
        },
        repo_url: url.to_owned(),
        branch: args.branch.clone(),
        work_dir: work_dir(&args.state_dir.join("github"), url),
        max_body: rollgate::github::webhook::MAX_BODY,
        scratch_budget: rollgate::github::handle::SCRATCH_BUDGET,
    }))
}

fn run_daemon(args: RunArgs) -> Result<ExitCode> {
    init_logging(args.log_format);
    let leadership = if args.leader_elect {
        let namespace = args
            .lease_namespace
            .clone()
            .unwrap_or_else(rollgate::leader::default_namespace);
        let cfg = rollgate::leader::LeaseConfig::default();
        Some(
            rollgate::leader::Leadership::connect(
                &namespace,
                &args.lease_name,
                cfg,
                Box::new(leader_stopped),
            )
            .context("cannot start leader election")?,
        )
    } else {
        rollgate::telemetry::global().set_leader(true);
        None
    };
    let interval = rollgate::model::duration::parse(&args.interval)
        .with_context(|| format!("--interval `{}` is not a duration like 30s", args.interval))?;
    let mut remote = rollgate::source::remote::RemoteUrl::parse(&args.repo)?;
    args.git.auth(&mut remote)?.install()?;
    let url = remote.as_str().to_owned();
    let github = github_options(&args, &url)?;
    // A dry run writes to no remote: no check runs, comments, statuses or command commits.
    let github = match github {
        Some(_) if args.dry_run => {
            tracing::warn!(
                "a dry run writes nothing to GitHub: webhooks, previews and comment commands are off"
            );
            None
        }
        g => g,
    };
    let app = github
        .as_ref()
        .is_some_and(|o| matches!(o.github.auth, rollgate::github::Auth::App { .. }));
    // Wakes the loop: a file event on a local remote, or a verified push webhook.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    // Only the leader acts on GitHub (#15): a stand-by's worker takes no job.
    let leader = leadership.as_ref().map_or_else(
        rollgate::leader::Gate::always,
        rollgate::leader::Leadership::gate,
    );
    // Started before the first fetch: with a GitHub App, the daemon's own Git over https
    // to GitHub's host (fetch, status commits) uses the installation token the worker
    // got at start and keeps fresh, when ROLLGATE_GIT_TOKEN is not set.
    let webhooks = github
        .map(|opts| rollgate::github::handle::Webhooks::start(opts, tx.clone(), leader))
        .transpose()?;
    if let Some(w) = webhooks.as_ref().filter(|_| app) {
        let token = w.git_token();
        rollgate::source::git::set_token_source(move |url| token.for_url(url))?;
    }
    let src = rollgate::source::git::GitSource::open(
        &url,
        &work_dir(&args.state_dir, &url),
        &args.branch,
    )?;
    let head = rollgate::daemon::run::first_fetch(&src, args.once)?;
    // An invalid settings file at start is an error, said with its place; one that
    // turns invalid later keeps the targets built last (the gate rejects its plans).
    let snap = src.snapshot(head)?;
    if let Some(bytes) = snap.files.get(rollgate::source::SETTINGS_FILE) {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("{} is not UTF-8", rollgate::source::SETTINGS_FILE))?;
        if let Err(diagnostics) =
            rollgate::model::validate::parse_settings(rollgate::source::SETTINGS_FILE, text)
        {
            for d in &diagnostics {
                eprintln!("{d}");
            }
            anyhow::bail!(
                "{} at {head} is not valid: fix it first (`rollgate validate`)",
                rollgate::source::SETTINGS_FILE
            );
        }
    }
    // Targets and metrics sources are built from the settings at head, and rebuilt
    // when a later head changes their entry.
    let adapters = rollgate::targets::factory::Options {
        state_dir: args.state_dir.clone(),
        journal: (args.dry_run || args.journal_targets).then(|| args.state_dir.join("dry-run")),
    };
    let health = std::sync::Arc::new(rollgate::server::Health::default());
    let _server = match args.listen {
        Some(addr) => Some(
            rollgate::server::start_with(
                addr,
                health.clone(),
                webhooks.as_ref().map(|w| w.router()),
            )
            .with_context(|| format!("cannot listen on {addr}"))?,
        ),
        None => None,
    };
    let loader: rollgate::daemon::PolicyLoader = Box::new(rollgate::gate::repository_policies(
        args.state_dir.join("policies"),
    ));
    let watch_paths = src.local_ref_paths();
    let mut rec =
        rollgate::daemon::Reconciler::new(src, None, Default::default(), Default::default())
            .with_adapters(adapters)
            .with_policy_loader(loader);
    if let Some(ns) = &args.namespaces {
        rec.set_namespaces(ns.clone());
    }
    rec.set_dry_run(args.dry_run);

    // A local remote is watched: a push wakes the loop within milliseconds.
    let _watcher =
        watch_paths.and_then(|paths| rollgate::source::watch::local_refs(&paths, tx.clone()));
    tracing::info!(repo = %url, branch = %args.branch, dry_run = args.dry_run, leader_elect = args.leader_elect, "rollgate running");
    let options = rollgate::daemon::run::Options {
        once: args.once,
        interval,
        leadership: leadership.as_ref(),
        health: &health,
        wake: &rx,
    };
    let finished = rollgate::daemon::run::run(&mut rec, &options, &mut |rec, report| {
        if let Some(w) = &webhooks {
            w.report(rec, report);
        }
    })?;
    Ok(match finished {
        rollgate::daemon::run::Finished::Idle => ExitCode::SUCCESS,
        rollgate::daemon::run::Finished::PlansFailed(n) => {
            eprintln!(
                "error: {n} plan{} could not be reconciled: an error, or a target that refused (see the log)",
                plural(n)
            );
            ExitCode::from(1)
        }
    })
}

fn read_numbers(path: &Path) -> Result<Vec<f64>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.split_whitespace()
        .enumerate()
        .map(|(i, w)| {
            w.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .with_context(|| {
                    format!(
                        "{}: value {} (`{w}`) is not a number",
                        path.display(),
                        i + 1
                    )
                })
        })
        .collect()
}

fn judge(a: &JudgeArgs) -> Result<ExitCode> {
    use rollgate::model::plan::{Direction, Judge};
    let direction = match (a.direction, a.kind) {
        (Some(DirectionArg::Increase), _) => Direction::Increase,
        (Some(DirectionArg::Decrease), _) => Direction::Decrease,
        (Some(DirectionArg::Either), _) => Direction::Either,
        (None, JudgeKind::Continuous) => Direction::Increase,
        (None, JudgeKind::Ratio) => Direction::Decrease,
    };
    let spec = Judge::Baseline {
        direction,
        max_ratio: a.max_ratio,
        max_increase: a.max_increase,
        alpha: a.alpha,
    };
    let baseline = read_numbers(&a.baseline)?;
    let canary = read_numbers(&a.canary)?;
    let now = chrono::Utc::now();
    let (j, n) = match a.kind {
        JudgeKind::Continuous => (
            rollgate::engine::compare::judge_continuous(
                "offline",
                &canary,
                &baseline,
                &spec,
                a.min_samples,
                now,
            ),
            (canary.len() as u64, baseline.len() as u64),
        ),
        JudgeKind::Ratio => {
            let pair = |v: &[f64], p: &Path| -> Result<(u64, u64)> {
                match v {
                    [good, total]
                        if *good >= 0.0
                            && *total >= *good
                            && good.fract() == 0.0
                            && total.fract() == 0.0 =>
                    {
                        Ok((*good as u64, *total as u64))
                    }
                    _ => anyhow::bail!(
                        "{}: a ratio file holds `successes total` (two whole numbers, successes <= total)",
                        p.display()
                    ),
                }
            };
            let (cg, ct) = pair(&canary, &a.canary)?;
            let (bg, bt) = pair(&baseline, &a.baseline)?;
            (
                rollgate::engine::compare::judge_ratio(
                    "offline",
                    cg,
                    ct,
                    bg,
                    bt,
                    &spec,
                    a.min_samples,
                    now,
                ),
                (ct, bt),
            )
        }
    };
    match a.output {
        Output::Text => println!("{j}"),
        Output::Json => {
            let c = j.evidence.comparison.as_ref();
            let doc = serde_json::json!({
                "verdict": j.verdict.as_str(),
                "reason": j.verdict.reason(),
                "test": c.map(|c| c.test.clone()),
                "statistic": c.and_then(|c| c.statistic),
                "pValue": c.map(|c| c.p_value),
                "effect": c.map(|c| c.effect),
                "ci": c.map(|c| [c.ci_low, c.ci_high]),
                "ratio": c.and_then(|c| c.ratio),
                "n": { "canary": n.0, "baseline": n.1 },
                "trailer": j.to_string(),
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
    }
    // Like `diff`: 0 pass, 1 fail, 3 inconclusive (2 stays usage or I/O error).
    Ok(match j.verdict.as_str() {
        "pass" => ExitCode::SUCCESS,
        "fail" => ExitCode::from(1),
        _ => ExitCode::from(3),
    })
}

fn dataplane(command: DataplaneCommand) -> Result<ExitCode> {
    use rollgate::dataplane;
    match command {
        DataplaneCommand::Serve { dir, owner_pid } => {
            init_logging(Output::Text);
            dataplane::serve(&dir, owner_pid)?;
            Ok(ExitCode::SUCCESS)
        }
        DataplaneCommand::Stop { dir } => {
            let planes = dataplane::planes_under(&dir);
            if planes.is_empty() {
                println!("no data plane under {}", dir.display());
            }
            for p in planes {
                let was = dataplane::stop(&p, std::time::Duration::from_secs(60))?;
                println!(
                    "{}: {}",
                    p.display(),
                    if was { "stopped" } else { "was not running" }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DataplaneCommand::Status { dir } => {
            let planes = dataplane::planes_under(&dir);
            let mut all_up = !planes.is_empty();
            if planes.is_empty() {
                println!("no data plane under {}", dir.display());
            }
            for p in planes {
                match dataplane::client::hello(&p) {
                    Ok(h) => println!(
                        "{}: running (pid {}, rollgate {}, protocol {})",
                        p.display(),
                        h.identity.pid,
                        h.version,
                        h.protocol
                    ),
                    Err(e) => {
                        all_up = false;
                        println!("{}: not running ({e})", p.display());
                    }
                }
            }
            Ok(if all_up {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// `rollgate load`: the demo's generator against any address, a line per second.
fn load(url: &str, rps: u32, duration: Option<&str>) -> Result<ExitCode> {
    use std::net::ToSocketAddrs;
    let hostport = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or(url);
    let addr = hostport
        .to_socket_addrs()
        .with_context(|| format!("`{url}` is not host:port"))?
        .next()
        .with_context(|| format!("`{url}` resolves to no address"))?;
    let limit = duration
        .map(|d| {
            rollgate::model::duration::parse(d)
                .with_context(|| format!("--duration `{d}` is not a duration like 30s"))
        })
        .transpose()?;
    let generator = rollgate::demo::load::Generator::start(addr, rps);
    let started = std::time::Instant::now();
    println!("sending {rps} requests/s to http://{addr}/ (Ctrl-C stops)");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
        println!(
            "[{:>5.0}s] {}",
            started.elapsed().as_secs_f64(),
            generator.counts().summary()
        );
        if limit.is_some_and(|l| started.elapsed() >= l) {
            break;
        }
    }
    let counts = generator.stop();
    println!("total: {}", counts.summary());
    Ok(if counts.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The per-user state folder (XDG Base Directory): `$XDG_STATE_HOME/rollgate`, else
/// `$HOME/.local/state/rollgate`; `.rollgate` only where neither is set (it would show
/// in `git status` of the folder it is started from).
fn default_state_dir() -> PathBuf {
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
