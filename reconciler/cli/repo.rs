//! Subcommands over a repository and its history: `promote|abort|retry` (command
//! commits), `history`, `plan` (a pull request's preview) and `status`.

use super::*;

pub(super) fn command(c: crate::engine::Command, a: CommandArgs) -> Result<ExitCode> {
    let repo = git2::Repository::discover(&a.repo)
        .with_context(|| format!("{} is not in a Git checkout", a.repo.display()))?;
    let id = match crate::commands::commit(&repo, c, &a.plan, a.push) {
        Ok(id) => id,
        Err(e) if e.downcast_ref::<crate::commands::Refused>().is_some() => {
            eprintln!("refused: {e}");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e),
    };
    println!(
        "{} {}: commit {}{}",
        crate::commands::word(c),
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

pub(super) struct HistoryArgs<'a> {
    pub repo: &'a str,
    pub branch: Option<&'a str>,
    pub plan: Option<&'a str>,
    pub output: HistoryOutput,
    pub rollout: Option<usize>,
    pub out: Option<&'a Path>,
}

pub(super) fn history(a: &HistoryArgs<'_>) -> Result<ExitCode> {
    if a.output != HistoryOutput::Svg && a.rollout.is_some() {
        anyhow::bail!("--rollout is for --output svg");
    }
    let r = crate::history::open(a.repo)?;
    let head = crate::history::resolve(&r, a.branch)?;
    let entries = crate::history::collect(&r, head, a.plan)?;
    let text = match a.output {
        HistoryOutput::Text => crate::history::render_text(&entries),
        HistoryOutput::Json => format!("{}\n", serde_json::to_string_pretty(&entries)?),
        HistoryOutput::Svg => {
            let Some(plan) = a.plan else {
                anyhow::bail!(
                    "--output svg draws one plan: name it (rollgate history --output svg PLAN)"
                );
            };
            let timeline =
                crate::timeline::for_plan(&entries, plan, a.rollout).map_err(anyhow::Error::msg)?;
            crate::timeline::svg::render(&timeline)
        }
    };
    match a.out {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `rollgate dashboard`: the daemon's dashboard, served from a repository alone.
pub(super) fn dashboard(
    repo: &str,
    branch: Option<&str>,
    listen: std::net::SocketAddr,
) -> Result<ExitCode> {
    init_logging(Output::Text);
    let source = crate::dashboard::GitBoard::open(repo, branch)?;
    let server = crate::dashboard::serve(listen, std::sync::Arc::new(source))
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!("dashboard: http://{}/ (Ctrl-C to stop)", server.addr);
    crate::dashboard::wait_for_ctrl_c();
    Ok(ExitCode::SUCCESS)
}

/// `rollgate plan`: 0 when every touched plan passes (or none is touched), 1 when any
/// is rejected or denied, 2 on a usage or I/O error (like `validate`).
pub(super) fn plan(a: &PlanArgs) -> Result<ExitCode> {
    let now = match &a.now {
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .with_context(|| format!("--now `{t}` is not an RFC 3339 time"))?
            .with_timezone(&chrono::Utc),
        None => chrono::Utc::now(),
    };
    let p = crate::preview::preview(&a.repo, &a.base, &a.head, now)?;
    match a.output {
        PlanOutput::Text => print!("{}", p.text()),
        PlanOutput::Markdown => print!("{}", p.markdown()),
        PlanOutput::Json => println!("{}", serde_json::to_string_pretty(&p)?),
    }
    Ok(match p.conclusion() {
        crate::preview::Conclusion::Failure => ExitCode::from(1),
        crate::preview::Conclusion::Success | crate::preview::Conclusion::Neutral => {
            ExitCode::SUCCESS
        }
    })
}

pub(super) fn status(repo: &str, branch: Option<&str>, output: Output) -> Result<ExitCode> {
    let r = crate::history::open(repo)?;
    let head = crate::history::resolve(&r, branch)?;
    let statuses = crate::history::statuses(&r, head)?;
    match output {
        Output::Text => print!("{}", crate::history::render_status(&statuses)),
        Output::Json => {
            let docs: Vec<_> = statuses.iter().map(crate::gate::status_doc).collect();
            println!("{}", serde_json::to_string_pretty(&docs)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
