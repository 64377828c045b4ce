//! The command line's grammar (clap derive): every subcommand and flag, with the help
//! text `rollgate --help` prints. No behaviour here; `cli::run` dispatches.

use std::path::PathBuf;

use anyhow::Result;

use super::default_state_dir;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "rollgate",
    version,
    about = "GitOps rollout reconciler: plans in Git, staged rollouts, judged on live metrics, written back to Git"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

/// What `rollgate history` writes.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum HistoryOutput {
    Text,
    Json,
    /// One rollout's timeline picture (an SVG document).
    Svg,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
    /// A local job check's keeper (started by the local target's job runner): runs the
    /// job described in DIR/job.json, enforces its timeout, records how it ended in
    /// DIR/result.json; it outlives the daemon that started it.
    #[command(hide = true)]
    JobRun { dir: std::path::PathBuf },
    /// Run the canary-versus-baseline judge offline on numbers, to replay or explain a verdict.
    Judge(JudgeArgs),
    /// Every transition of every rollout, from the commit trailers alone; `--output svg
    /// PLAN` draws one rollout as a timeline picture.
    History {
        /// Only this plan (needed for `--output svg`).
        plan: Option<String>,
        #[arg(long, default_value = ".")]
        repo: String,
        #[arg(long)]
        branch: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        output: HistoryOutput,
        /// With `--output svg`: which rollout of the plan, 1 the first (default: the last).
        #[arg(long)]
        rollout: Option<usize>,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// A read-only web dashboard of every plan, from Git alone (no daemon needed).
    Dashboard {
        /// A repository on this machine (a checkout or a bare repository).
        #[arg(long, default_value = ".")]
        repo: String,
        #[arg(long)]
        branch: Option<String>,
        /// Where to serve it.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
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
pub enum DataplaneCommand {
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
pub struct PlanArgs {
    /// The repository (a checkout or a bare repository).
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// The revision the change goes into (a sha, a branch, `HEAD~1`): its settings,
    /// policies and statuses judge the change.
    #[arg(long)]
    pub base: String,
    /// The change's revision.
    #[arg(long, default_value = "HEAD")]
    pub head: String,
    #[arg(long, value_enum, default_value = "text")]
    pub output: PlanOutput,
    /// Evaluate at this time (RFC 3339) instead of now; for tests.
    #[arg(long, hide = true)]
    pub now: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum PlanOutput {
    Text,
    Markdown,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The GitOps repository: a path (a bare repository or a checkout's remote) or a URL.
    #[arg(long)]
    pub repo: String,
    /// The branch to watch and write to.
    #[arg(long, default_value = "main")]
    pub branch: String,
    /// Work until every rollout is finished or waiting on a human, a change window or a
    /// pause longer than 10 minutes, then exit: 0, or 1 when a plan could not be
    /// reconciled, 2 when a pass failed (the remote).
    #[arg(long)]
    pub once: bool,
    /// How often to fetch when nothing else wakes the loop.
    #[arg(long, default_value = "30s")]
    pub interval: String,
    /// Where rollgate keeps its private clone and target state (default: the user's
    /// state folder, $XDG_STATE_HOME/rollgate or ~/.local/state/rollgate).
    #[arg(long, env = "ROLLGATE_STATE_DIR", default_value_os_t = default_state_dir())]
    pub state_dir: PathBuf,
    /// The only namespaces rollgate may touch (comma-separated). Plans for others are
    /// rejected at validation; `namespaces:` on a Kubernetes target in rollgate.yaml can
    /// narrow this further, never widen it.
    #[arg(long, env = "ROLLGATE_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Option<Vec<String>>,
    /// Change nothing anywhere: targets only journal what they would do (in
    /// `STATE_DIR/dry-run/`), nothing is committed or pushed (the statuses it would write
    /// are logged and kept in memory), and the GitHub side stays off.
    #[arg(long)]
    pub dry_run: bool,
    /// Targets journal what they would do, while Git is written as in a real run (a
    /// rehearsal of the write-back against a scratch remote; used by the tests).
    #[arg(long, hide = true)]
    pub journal_targets: bool,
    /// Log lines as text or JSON.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: Output,
    /// Serve `/healthz`, `/readyz` and `/metrics` here (e.g. `127.0.0.1:9464`).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Also serve the read-only dashboard at `/` on `--listen`. It has no login: anyone
    /// who reaches that address reads every plan's state, so it is off unless asked for
    /// (`rollgate dashboard` serves it on its own address from a clone instead).
    #[arg(long, requires = "listen")]
    pub dashboard: bool,
    /// One of several replicas: act only while holding a coordination.k8s.io Lease;
    /// the others stand by and take over when it lapses.
    #[arg(long, conflicts_with = "once")]
    pub leader_elect: bool,
    /// One of several replicas sharing the plans: each plan belongs to one of N shards
    /// (a stable hash of its name), and each replica reconciles only the plans of the
    /// shards whose coordination.k8s.io Lease it holds, about N / replicas of them. N
    /// must be the same on every replica; 1 is leader election with every replica
    /// standing by but one. Not with `--leader-elect`, nor `--dry-run` (a dry run would
    /// hold shards, and their plans would go unreconciled by the real replicas).
    #[arg(
        long,
        value_name = "N",
        conflicts_with_all = ["once", "leader_elect", "dry_run"],
        value_parser = clap::value_parser!(u32).range(1..=1024)
    )]
    pub shards: Option<u32>,
    /// The Lease's name (with `--shards`, the prefix of the shard and member Leases:
    /// `<name>-shard-<i>-of-<N>`, `<name>-member-<k>-of-<N>`).
    #[arg(long, default_value = "rollgate")]
    pub lease_name: String,
    /// The Lease's namespace (default: `POD_NAMESPACE`, else the pod's own, else `default`).
    #[arg(long)]
    pub lease_namespace: Option<String>,
    /// Report to this GitHub repository (OWNER/NAME) and serve `POST /webhooks/github` on
    /// `--listen` (default: from `--repo` when it is a GitHub URL and a GitHub flag is given).
    #[arg(long)]
    pub github_repo: Option<String>,
    /// The GitHub API; for GitHub Enterprise Server `https://HOST/api/v3`.
    #[arg(long, default_value = crate::github::DEFAULT_API_URL)]
    pub github_url: String,
    /// A file holding the GitHub token (else the `GITHUB_TOKEN` environment variable).
    #[arg(long)]
    pub github_token_file: Option<PathBuf>,
    /// Authenticate as this GitHub App (with `--github-app-key-file`) instead of a token.
    #[arg(long)]
    pub github_app_id: Option<u64>,
    /// The GitHub App's private key (PEM).
    #[arg(long)]
    pub github_app_key_file: Option<PathBuf>,
    /// A file holding the webhook secret (else `ROLLGATE_WEBHOOK_SECRET`); the endpoint
    /// is never served without one.
    #[arg(long)]
    pub webhook_secret_file: Option<PathBuf>,
    #[command(flatten)]
    pub git: GitArgs,
}

/// How rollgate reaches the GitOps repository over https and ssh (README: "Git remotes").
/// A token is read from a file or `ROLLGATE_GIT_TOKEN`, never from a flag's value.
#[derive(Debug, clap::Args)]
pub struct GitArgs {
    /// A file holding the token (or password) for Git over https (else `ROLLGATE_GIT_TOKEN`).
    #[arg(long, env = "ROLLGATE_GIT_TOKEN_FILE")]
    pub git_token_file: Option<PathBuf>,
    /// The user name sent with the token (default `x-access-token`; GitLab: `oauth2`).
    #[arg(long, env = "ROLLGATE_GIT_USERNAME")]
    pub git_username: Option<String>,
    /// The private key for Git over ssh (else the ssh agent).
    #[arg(long, env = "ROLLGATE_GIT_SSH_KEY")]
    pub git_ssh_key: Option<PathBuf>,
    /// A file holding the ssh key's passphrase.
    #[arg(long, env = "ROLLGATE_GIT_SSH_PASSPHRASE_FILE")]
    pub git_ssh_passphrase_file: Option<PathBuf>,
    /// The known_hosts file the ssh host key must be in (default `~/.ssh/known_hosts`).
    #[arg(long, env = "ROLLGATE_GIT_KNOWN_HOSTS")]
    pub git_known_hosts: Option<PathBuf>,
    /// CA certificates (PEM) for Git over https, e.g. a corporate CA (else `SSL_CERT_FILE`,
    /// else the system's).
    #[arg(long, env = "ROLLGATE_GIT_CA_FILE")]
    pub git_ca_file: Option<PathBuf>,
}

impl GitArgs {
    /// The credentials: the flags, over the environment, with a password taken out of
    /// `url` (which then holds none).
    pub fn auth(
        &self,
        url: &mut crate::source::remote::RemoteUrl,
    ) -> Result<crate::source::remote::GitAuth> {
        let mut auth = crate::source::remote::GitAuth::from_env();
        auth.absorb_userinfo(url);
        if let Some(file) = &self.git_token_file {
            auth.token = crate::github::Secret::load(Some(file), "ROLLGATE_GIT_TOKEN")?;
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
pub enum JudgeKind {
    /// Raw samples (latencies, durations): one number per line.
    Continuous,
    /// Counts: one line `successes total` per file.
    Ratio,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum DirectionArg {
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
pub struct JudgeArgs {
    #[arg(long)]
    pub baseline: PathBuf,
    #[arg(long)]
    pub canary: PathBuf,
    #[arg(long, value_enum, default_value = "continuous")]
    pub kind: JudgeKind,
    /// Which change is harmful (default: increase for continuous, decrease for a success ratio).
    #[arg(long, value_enum)]
    pub direction: Option<DirectionArg>,
    /// Largest allowed canary/baseline ratio (the effect size).
    #[arg(long)]
    pub max_ratio: Option<f64>,
    /// Largest allowed absolute difference.
    #[arg(long)]
    pub max_increase: Option<f64>,
    #[arg(long, default_value_t = 0.05)]
    pub alpha: f64,
    #[arg(long, default_value_t = 1)]
    pub min_samples: u64,
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(Debug, clap::Args)]
pub struct CommandArgs {
    /// The plan to act on.
    pub plan: String,
    /// A checkout of the GitOps repository.
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// Push the command commit to `origin`.
    #[arg(long)]
    pub push: bool,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Run every `test_*` rule in `*_test.rego` files, like `opa test`.
    Test {
        /// Folders of policies and their tests (default: `policies`).
        dirs: Vec<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum SchemaKind {
    Plan,
    Settings,
}
