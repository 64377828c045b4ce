//! `rollgate.yaml`: `parse_settings` and its helpers: targets, metrics sources and
//! write-back, notifiers, and which variables no setting may send (`is_reserved_secret`).
//!
//! Invariants: pure (a variable is judged by its name, never read); the same three
//! passes as a plan (YAML, structure, meaning), every problem reported in the order
//! found; `builtin` is reserved for rollgate's own proxy metrics; a credential named by
//! `authHeaderEnv` is never one of rollgate's own and never crosses plain http except
//! to a loopback address; a `web` source's headers follow the same rules.

use std::time::Duration;

use crate::model::diagnostics::{Code, Diagnostic};
use crate::model::schema::settings_schema;
use crate::model::settings::{self, BUILTIN_SOURCE, Settings};
use crate::model::wire;

use super::{Ctx, P, Structured, is_aws_region, structured};

/// Parse and validate `rollgate.yaml`.
pub fn parse_settings(file: &str, text: &str) -> Result<Settings, Vec<Diagnostic>> {
    use P::K;
    let Structured {
        root,
        wire: w,
        diags,
        ..
    } = structured::<wire::SettingsFile>(file, text, settings_schema())?;
    let mut cx = Ctx {
        file,
        root: &root,
        diags,
    };
    cx.header(&w.api_version, &w.kind, "Settings", "rollgate.yaml");
    let mut out = Settings::default();
    for (name, t) in &w.targets {
        cx.name(name, "target name", &[K("targets"), K(name)]);
        out.targets.insert(
            name.clone(),
            match t {
                wire::Target::Local(l) => settings::Target::Local {
                    state_dir: l.state_dir.clone(),
                },
                wire::Target::Kubernetes(k) => settings::Target::Kubernetes {
                    context: k.context.clone(),
                    in_cluster: k.in_cluster.unwrap_or(false),
                    namespaces: k.namespaces.clone(),
                },
                wire::Target::Lambda(l) => {
                    if let Some(e) = &l.endpoint
                        && let Some(problem) = settings::endpoint_problem(e)
                    {
                        cx.err(
                            &[K("targets"), K(name), K("lambda"), K("endpoint")],
                            Code::InvalidValue,
                            problem,
                        );
                    }
                    settings::Target::Lambda {
                        endpoint: l.endpoint.clone(),
                        profile: l.profile.clone(),
                    }
                }
            },
        );
    }
    for (name, m) in &w.metrics {
        if name == BUILTIN_SOURCE {
            cx.err(
                &[K("metrics"), K(name)],
                Code::InvalidValue,
                "`builtin` is reserved for rollgate's own proxy metrics",
            );
        }
        let p = match m {
            wire::MetricsSource::Prometheus(p) => p,
            wire::MetricsSource::Cloudwatch(c) => {
                let at = |k: &'static str| [K("metrics"), K(name), K("cloudwatch"), K(k)];
                if !is_aws_region(&c.region) {
                    cx.err(
                        &at("region"),
                        Code::InvalidValue,
                        format!("`{}` is not an AWS region", c.region),
                    );
                }
                if let Some(e) = &c.endpoint
                    && let Some(problem) = settings::endpoint_problem(e)
                {
                    cx.err(&at("endpoint"), Code::InvalidValue, problem);
                }
                let timeout = cx.dur(
                    c.timeout.as_deref(),
                    Duration::from_secs(10),
                    &at("timeout"),
                );
                out.metrics.insert(
                    name.clone(),
                    settings::MetricsSource::Cloudwatch {
                        region: c.region.clone(),
                        endpoint: c.endpoint.clone(),
                        profile: c.profile.clone(),
                        timeout,
                    },
                );
                continue;
            }
            wire::MetricsSource::Web(web) => {
                let source = web_source(&mut cx, name, web);
                out.metrics.insert(name.clone(), source);
                continue;
            }
        };
        if !(p.url.starts_with("http://") || p.url.starts_with("https://")) {
            cx.err(
                &[K("metrics"), K(name), K("prometheus"), K("url")],
                Code::InvalidValue,
                format!("`{}` is not an http(s) URL", p.url),
            );
        }
        if let Some(var) = &p.auth_header_env {
            let at = [K("metrics"), K(name), K("prometheus"), K("authHeaderEnv")];
            if is_reserved_secret(var) {
                cx.err(
                    &at,
                    Code::InvalidValue,
                    format!(
                        "{var} holds one of rollgate's own credentials (Git, GitHub, webhook or AWS); a metrics source may not send it anywhere"
                    ),
                );
            } else if let Some(host) = p
                .url
                .strip_prefix("http://")
                .map(|r| r.split('/').next().unwrap_or(r))
                .map(|a| a.rsplit_once(':').map_or(a, |(h, _)| h))
                && !crate::metrics::prometheus::is_loopback_host(host)
            {
                cx.err(
                    &at,
                    Code::InvalidValue,
                    format!(
                        "the credential in {var} would go over plain http to `{host}`; send it only to a loopback address (e.g. a local auth proxy)"
                    ),
                );
            }
        }
        let timeout = cx.dur(
            p.timeout.as_deref(),
            Duration::from_secs(5),
            &[K("metrics"), K(name), K("prometheus"), K("timeout")],
        );
        out.metrics.insert(
            name.clone(),
            settings::MetricsSource::Prometheus {
                url: p.url.clone(),
                timeout,
                auth_header_env: p.auth_header_env.clone(),
            },
        );
    }
    if let Some(wb) = &w.write_back {
        let d = settings::WriteBack::default();
        out.write_back = settings::WriteBack {
            branch: wb.branch.clone().unwrap_or(d.branch),
            author: wb.author.as_ref().map_or(d.author, |i| settings::Identity {
                name: i.name.clone(),
                email: i.email.clone(),
            }),
            committer: wb
                .committer
                .as_ref()
                .or(wb.author.as_ref())
                .map_or(d.committer, |i| settings::Identity {
                    name: i.name.clone(),
                    email: i.email.clone(),
                }),
            skip_ci: wb.skip_ci.unwrap_or(false),
            signing: wb.signing.as_ref().map(|s| match s {
                wire::Signing::Ssh(k) => settings::Signing::Ssh { key: k.key.clone() },
                wire::Signing::Gpg(k) => settings::Signing::Gpg { key: k.key.clone() },
            }),
            status_layout: match wb.status_layout {
                None | Some(wire::StatusLayout::Auto) => settings::LayoutSetting::Auto,
                Some(wire::StatusLayout::Flat) => {
                    settings::LayoutSetting::Fixed(settings::StatusLayout::Flat)
                }
                Some(wire::StatusLayout::Sharded) => {
                    settings::LayoutSetting::Fixed(settings::StatusLayout::Sharded)
                }
            },
        };
    }
    out.notify = notifiers(&mut cx, &w.notify);
    if cx.diags.iter().any(Diagnostic::is_error) {
        return Err(cx.diags);
    }
    Ok(out)
}

/// A `web` source: its URL read strictly (placeholders in the path and query only), the
/// method, a body only with `POST`, each header under the `authHeaderEnv` rules, and
/// both JSONPaths in the subset `metrics::web` reads.
fn web_source(cx: &mut Ctx<'_>, name: &str, w: &wire::WebSource) -> settings::MetricsSource {
    use crate::metrics::web::{Endpoint, JsonPath, header_problem};
    use P::K;
    let at = |k: &'static str| [K("metrics"), K(name), K("web"), K(k)];
    let endpoint = match Endpoint::parse(&w.url) {
        Ok(e) => Some(e),
        Err(problem) => {
            cx.err(&at("url"), Code::InvalidValue, problem);
            None
        }
    };
    let method = match w.method.as_deref() {
        None | Some("GET") => settings::WebMethod::Get,
        Some("POST") => settings::WebMethod::Post,
        Some(other) => {
            cx.err(
                &at("method"),
                Code::InvalidValue,
                format!("`{other}` is not a method a web source sends"),
            )
            .help = Some("`GET` or `POST`".to_owned());
            settings::WebMethod::Get
        }
    };
    if w.body.is_some() && method != settings::WebMethod::Post {
        cx.err(
            &at("body"),
            Code::InvalidValue,
            "a body is sent only with `method: POST`",
        );
    }
    for (header, var) in &w.headers {
        let place = [K("metrics"), K(name), K("web"), K("headers"), K(header)];
        let problem = header_problem(header, var).or_else(|| {
            if is_reserved_secret(var) {
                Some(format!(
                    "{var} holds one of rollgate's own credentials (Git, GitHub, webhook or AWS); a metrics source may not send it anywhere"
                ))
            } else {
                endpoint
                    .as_ref()
                    .filter(|e| !e.https && !crate::metrics::prometheus::is_loopback_host(&e.host))
                    .map(|e| {
                        format!(
                            "the credential in {var} would go over plain http to `{}`; send it only to a loopback address (e.g. a local auth proxy)",
                            e.host
                        )
                    })
            }
        });
        if let Some(problem) = problem {
            cx.err(&place, Code::InvalidValue, problem);
        }
    }
    for (key, path) in [
        ("jsonPath", Some(&w.json_path)),
        ("samplesPath", w.samples_path.as_ref()),
    ] {
        if let Some(Err(problem)) = path.map(|p| JsonPath::parse(p)) {
            cx.err(&at(key), Code::InvalidValue, problem);
        }
    }
    let timeout = cx.dur(w.timeout.as_deref(), Duration::from_secs(5), &at("timeout"));
    settings::MetricsSource::Web {
        url: w.url.clone(),
        method,
        body: w.body.clone(),
        headers: w.headers.clone(),
        timeout,
        json_path: w.json_path.clone(),
        samples_path: w.samples_path.clone(),
    }
}

/// `notify:`: unique DNS-label names (they name the `STATE/notify/<name>.acked` file),
/// exactly one kind each, and environment variable names that are names, and never one
/// of rollgate's own credentials.
fn notifiers(cx: &mut Ctx<'_>, list: &[wire::Notifier]) -> Vec<settings::Notifier> {
    use P::{I, K};
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (i, n) in list.iter().enumerate() {
        cx.name(&n.name, "notifier name", &[K("notify"), I(i), K("name")]);
        if !seen.insert(n.name.as_str()) {
            cx.err(
                &[K("notify"), I(i), K("name")],
                Code::InvalidValue,
                format!("notifier `{}` is named twice", n.name),
            );
        }
        let var = |cx: &mut Ctx<'_>, kind: &'static str, key: &'static str, v: &str| {
            let at = [K("notify"), I(i), K(kind), K(key)];
            if !is_env_name(v) {
                cx.err(
                    &at,
                    Code::InvalidValue,
                    format!("`{v}` is not an environment variable name"),
                );
            } else if is_reserved_secret(v) {
                cx.err(
                    &at,
                    Code::InvalidValue,
                    format!(
                        "{v} holds one of rollgate's own credentials (Git, GitHub, webhook or AWS); a notifier may not send it anywhere"
                    ),
                );
            }
        };
        let kind = match (&n.slack, &n.webhook) {
            (Some(s), None) => {
                var(cx, "slack", "webhookUrlEnv", &s.webhook_url_env);
                settings::NotifierKind::Slack {
                    webhook_url_env: s.webhook_url_env.clone(),
                }
            }
            (None, Some(h)) => {
                var(cx, "webhook", "urlEnv", &h.url_env);
                var(cx, "webhook", "signingKeyEnv", &h.signing_key_env);
                settings::NotifierKind::Webhook {
                    url_env: h.url_env.clone(),
                    signing_key_env: h.signing_key_env.clone(),
                }
            }
            _ => {
                cx.err(
                    &[K("notify"), I(i)],
                    Code::UnknownKind,
                    format!(
                        "notifier `{}` needs exactly one kind: `slack` or `webhook`",
                        n.name
                    ),
                );
                continue;
            }
        };
        out.push(settings::Notifier {
            name: n.name.clone(),
            kind,
            match_labels: n
                .plans
                .as_ref()
                .map(|p| p.match_labels.clone())
                .unwrap_or_default(),
        });
    }
    out
}

/// `[A-Za-z_][A-Za-z0-9_]*`: a name a shell could export.
fn is_env_name(v: &str) -> bool {
    let mut chars = v.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Variables that hold rollgate's own credentials: no repository setting may name them
/// as something to send (`authHeaderEnv`).
pub fn is_reserved_secret(var: &str) -> bool {
    const EXACT: &[&str] = &["GITHUB_TOKEN", "GH_TOKEN", "GIT_ASKPASS", "SSH_AUTH_SOCK"];
    const PREFIXES: &[&str] = &[
        "AWS_",
        "ROLLGATE_GIT",
        "ROLLGATE_GITHUB",
        "ROLLGATE_WEBHOOK",
    ];
    let upper = var.to_ascii_uppercase();
    EXACT.contains(&upper.as_str()) || PREFIXES.iter().any(|p| upper.starts_with(p))
}
