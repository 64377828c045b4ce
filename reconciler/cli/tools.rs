//! Subcommands that stand alone: `validate`, `policy test`, `schema`, `judge`,
//! `dataplane` and `load`.

use super::*;

pub(super) fn validate(repo: &Path, output: Output, no_policy: bool) -> Result<ExitCode> {
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
    crate::model::diagnostics::sort(&mut report.diagnostics);
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
        .any(|d| d.code == crate::model::diagnostics::Code::Io);
    Ok(if io {
        ExitCode::from(2)
    } else if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub(super) fn policy_test(dirs: Vec<PathBuf>) -> Result<ExitCode> {
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

pub(super) fn schema(which: SchemaKind, write: Option<&Path>) -> Result<ExitCode> {
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

pub(super) fn schema_text(kind: SchemaKind) -> String {
    match kind {
        SchemaKind::Plan => crate::model::schema::plan_schema_text(),
        SchemaKind::Settings => crate::model::schema::settings_schema_text(),
    }
}

/// The Rego engine with the built-in policies and the repo's own (when the folder exists).
pub(super) fn load_policy_engine(dir: &Path) -> Result<Box<dyn PolicyEngine>, Vec<Diagnostic>> {
    let dir = dir.is_dir().then_some(dir);
    Ok(Box::new(crate::gate::Rego::new(
        crate::policy::PolicySet::load(dir)?,
    )))
}

pub(super) fn run_policy_tests(
    dirs: &[PathBuf],
) -> Result<crate::policy::TestReport, Vec<Diagnostic>> {
    let dirs = if dirs.is_empty() {
        vec![PathBuf::from("policies")]
    } else {
        dirs.to_vec()
    };
    crate::policy::run_tests(&dirs)
}

pub(super) fn read_numbers(path: &Path) -> Result<Vec<f64>> {
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

pub(super) fn judge(a: &JudgeArgs) -> Result<ExitCode> {
    use crate::model::plan::{Direction, Judge};
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
            crate::engine::compare::judge_continuous(
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
                crate::engine::compare::judge_ratio(
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

pub(super) fn dataplane(command: DataplaneCommand) -> Result<ExitCode> {
    use crate::dataplane;
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
pub(super) fn load(url: &str, rps: u32, duration: Option<&str>) -> Result<ExitCode> {
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
            crate::model::duration::parse(d)
                .with_context(|| format!("--duration `{d}` is not a duration like 30s"))
        })
        .transpose()?;
    let generator = crate::demo::load::Generator::start(addr, rps);
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
