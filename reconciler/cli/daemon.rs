//! `rollgate run`: logging, the GitHub side's options, and the daemon wired together
//! (leadership, remote, webhooks, the reconciler with adapters from settings, the HTTP
//! server, the watcher, `daemon::run`).
//!
//! Invariants: nothing touches Git or a target before the first fetch succeeded and the
//! settings at head are valid; a dry run writes to no remote and to no GitHub.

use super::*;

/// Colour only on a terminal, and never with `NO_COLOR` set (https://no-color.org).
pub(super) fn colour_on_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

pub(super) fn init_logging(format: Output) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The AWS SDK's own debug and trace events print access key ids and request headers
    // (session tokens): never below info, whatever RUST_LOG asks.
    for target in crate::aws::SDK_LOG_TARGETS {
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
pub(super) fn work_dir(state: &Path, url: &str) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    url.hash(&mut h);
    state.join("git").join(format!("{:016x}", h.finish()))
}

/// A campaign ended: exit, so that a restart resumes from Git (2: the lease was lost).
pub(super) fn leader_stopped(why: crate::leader::Stopped) {
    match why {
        crate::leader::Stopped::Lost => std::process::exit(2),
        crate::leader::Stopped::Terminated => std::process::exit(0),
    }
}

/// The GitHub integration, when a GitHub flag is given. A half configuration is an
/// error: no repository, no credentials, no `--listen`, or no webhook secret (the
/// endpoint is never served unauthenticated).
pub(super) fn github_options(
    args: &RunArgs,
    url: &str,
) -> Result<Option<crate::github::handle::Options>> {
    use crate::github::{Auth, Config, RepoName, Secret, handle::Options};
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
        max_body: crate::github::webhook::MAX_BODY,
        scratch_budget: crate::github::handle::SCRATCH_BUDGET,
    }))
}

pub(super) fn run_daemon(args: RunArgs) -> Result<ExitCode> {
    init_logging(args.log_format);
    let leadership = if args.leader_elect {
        let namespace = args
            .lease_namespace
            .clone()
            .unwrap_or_else(crate::leader::default_namespace);
        let cfg = crate::leader::LeaseConfig::default();
        Some(
            crate::leader::Leadership::connect(
                &namespace,
                &args.lease_name,
                cfg,
                Box::new(leader_stopped),
            )
            .context("cannot start leader election")?,
        )
    } else if args.shards.is_none() {
        crate::telemetry::global().set_leader(true);
        None
    } else {
        None
    };
    let interval = crate::model::duration::parse(&args.interval)
        .with_context(|| format!("--interval `{}` is not a duration like 30s", args.interval))?;
    let mut remote = crate::source::remote::RemoteUrl::parse(&args.repo)?;
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
        .is_some_and(|o| matches!(o.github.auth, crate::github::Auth::App { .. }));
    // Wakes the loop: a file event on a local remote, or a verified push webhook.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    // `--shards N`: plans of the shards this replica holds; a shard taken wakes the loop.
    let sharding = match args.shards {
        Some(n) => {
            let namespace = args
                .lease_namespace
                .clone()
                .unwrap_or_else(crate::leader::default_namespace);
            let wake = tx.clone();
            Some(
                crate::leader::Sharding::connect(
                    &namespace,
                    &args.lease_name,
                    n,
                    crate::leader::LeaseConfig::default(),
                    Box::new(leader_stopped),
                    Box::new(move || {
                        let _ = wake.send(());
                    }),
                )
                .context("cannot start sharding")?,
            )
        }
        None => None,
    };
    // Only the leader acts on GitHub (#15): a stand-by's worker takes no job. Sharded,
    // the holder of shard 0 does.
    let leader = match (&leadership, &sharding) {
        (Some(l), _) => l.gate(),
        (None, Some(s)) => s.gate().github_gate(),
        (None, None) => crate::leader::Gate::always(),
    };
    // Started before the first fetch: with a GitHub App, the daemon's own Git over https
    // to GitHub's host (fetch, status commits) uses the installation token the worker
    // got at start and keeps fresh, when ROLLGATE_GIT_TOKEN is not set.
    let webhooks = github
        .map(|opts| crate::github::handle::Webhooks::start(opts, tx.clone(), leader))
        .transpose()?;
    if let Some(w) = webhooks.as_ref().filter(|_| app) {
        let token = w.git_token();
        crate::source::git::set_token_source(move |url| token.for_url(url))?;
    }
    let src =
        crate::source::git::GitSource::open(&url, &work_dir(&args.state_dir, &url), &args.branch)?;
    let head = crate::daemon::run::first_fetch(&src, args.once)?;
    // An invalid settings file at start is an error, said with its place; one that
    // turns invalid later keeps the targets built last (the gate rejects its plans).
    let snap = src.snapshot(head)?;
    if let Some(bytes) = snap.files.get(crate::source::SETTINGS_FILE) {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("{} is not UTF-8", crate::source::SETTINGS_FILE))?;
        if let Err(diagnostics) =
            crate::model::validate::parse_settings(crate::source::SETTINGS_FILE, text)
        {
            for d in &diagnostics {
                eprintln!("{d}");
            }
            anyhow::bail!(
                "{} at {head} is not valid: fix it first (`rollgate validate`)",
                crate::source::SETTINGS_FILE
            );
        }
    }
    // Targets and metrics sources are built from the settings at head, and rebuilt
    // when a later head changes their entry.
    let adapters = crate::targets::factory::Options {
        state_dir: args.state_dir.clone(),
        journal: (args.dry_run || args.journal_targets).then(|| args.state_dir.join("dry-run")),
    };
    let health = std::sync::Arc::new(crate::server::Health::default());
    let _server = match args.listen {
        Some(addr) => {
            // The read-only dashboard at `/` (#20), read from the daemon's own clone, only
            // when asked for: the port also faces GitHub's webhooks and the probes.
            let mut routes = args.dashboard.then(|| {
                let board = crate::dashboard::GitBoard::clone_of(
                    &work_dir(&args.state_dir, &url),
                    &args.branch,
                    &url,
                );
                crate::dashboard::router(std::sync::Arc::new(board))
            });
            if let Some(w) = webhooks.as_ref() {
                routes = Some(match routes {
                    Some(r) => r.merge(w.router()),
                    None => w.router(),
                });
            }
            let server = crate::server::start_with(addr, health.clone(), routes)
                .with_context(|| format!("cannot listen on {addr}"))?;
            if args.dashboard {
                tracing::info!(url = %format!("http://{}/", server.addr), "dashboard");
            }
            Some(server)
        }
        None => None,
    };
    let loader: crate::daemon::PolicyLoader = Box::new(crate::gate::repository_policies(
        args.state_dir.join("policies"),
    ));
    let watch_paths = src.local_ref_paths();
    // A dry run writes no commit, so it announces none.
    let notify = match args.dry_run {
        false => crate::notify::start(&src, head, &args.state_dir)?,
        true => None,
    };
    let mut rec = crate::daemon::Reconciler::new(src, None, Default::default(), Default::default())
        .with_adapters(adapters)
        .with_policy_loader(loader);
    if let Some(outbox) = notify {
        rec = rec.with_notifications(outbox);
    }
    if let Some(ns) = &args.namespaces {
        rec.set_namespaces(ns.clone());
    }
    rec.set_dry_run(args.dry_run);
    if let Some(s) = &sharding {
        rec.set_shards(s.gate());
    }

    // A local remote is watched: a push wakes the loop within milliseconds.
    let _watcher =
        watch_paths.and_then(|paths| crate::source::watch::local_refs(&paths, tx.clone()));
    tracing::info!(repo = %url, branch = %args.branch, dry_run = args.dry_run, leader_elect = args.leader_elect, shards = args.shards, "rollgate running");
    let options = crate::daemon::run::Options {
        once: args.once,
        interval,
        leadership: leadership.as_ref(),
        health: &health,
        wake: &rx,
    };
    let finished = crate::daemon::run::run(&mut rec, &options, &mut |rec, report| {
        if let Some(w) = &webhooks {
            w.report(rec, report);
        }
    })?;
    Ok(match finished {
        crate::daemon::run::Finished::Idle => ExitCode::SUCCESS,
        crate::daemon::run::Finished::PlansFailed(n) => {
            eprintln!(
                "error: {n} plan{} could not be reconciled: an error, or a target that refused (see the log)",
                plural(n)
            );
            ExitCode::from(1)
        }
    })
}
