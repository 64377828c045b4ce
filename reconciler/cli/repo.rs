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

pub(super) fn history(
    repo: &str,
    branch: Option<&str>,
    plan: Option<&str>,
    output: Output,
) -> Result<ExitCode> {
    let r = crate::history::open(repo)?;
    let head = crate::history::resolve(&r, branch)?;
    let entries = crate::history::collect(&r, head, plan)?;
    match output {
        Output::Text => print!("{}", crate::history::render_text(&entries)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&entries)?),
    }
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
