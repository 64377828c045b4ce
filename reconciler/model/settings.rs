//! Domain types of the repository settings (`rollgate.yaml`).
//!
//! Invariant: secrets are never values here, only the names of the environment
//! variables or files that hold them.

use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Settings {
    pub targets: BTreeMap<String, Target>,
    pub metrics: BTreeMap<String, MetricsSource>,
    pub write_back: WriteBack,
    pub notify: Vec<Notifier>,
}

/// The plan label that opts a plan out of every notifier: `rollgate.dev/notify: "false"`.
pub const NOTIFY_LABEL: &str = "rollgate.dev/notify";

/// A named receiver of transitions (`notify:`); its secrets are environment variable names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notifier {
    pub name: String,
    pub kind: NotifierKind,
    /// A plan is announced when it has every one of these labels (empty: every plan),
    /// unless it is labelled [`NOTIFY_LABEL`]` = "false"`.
    pub match_labels: BTreeMap<String, String>,
}

impl Notifier {
    /// Whether a plan with `labels` is announced by this notifier.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        labels.get(NOTIFY_LABEL).map(String::as_str) != Some("false")
            && self
                .match_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifierKind {
    Slack {
        webhook_url_env: String,
    },
    Webhook {
        url_env: String,
        signing_key_env: String,
    },
}

impl NotifierKind {
    pub fn kind(&self) -> &'static str {
        match self {
            NotifierKind::Slack { .. } => "slack",
            NotifierKind::Webhook { .. } => "webhook",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Local {
        state_dir: Option<String>,
    },
    Kubernetes {
        context: Option<String>,
        in_cluster: bool,
        /// The namespaces its plans may use (`None`: any). The gate intersects it with
        /// the operator's `--namespaces`.
        namespaces: Option<Vec<String>>,
    },
    /// AWS Lambda. `endpoint` and `profile` are here, reviewed with the settings, and
    /// never in a plan: a plan cannot point signed AWS requests (a session token
    /// included) at another host, nor choose whose credentials sign them.
    Lambda {
        endpoint: Option<String>,
        profile: Option<String>,
    },
}

impl Target {
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Local { .. } => "local",
            Target::Kubernetes { .. } => "kubernetes",
            Target::Lambda { .. } => "lambda",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsSource {
    Prometheus {
        url: String,
        timeout: Duration,
        auth_header_env: Option<String>,
    },
    /// Amazon CloudWatch (AWS/Lambda metrics per executed version).
    Cloudwatch {
        region: String,
        endpoint: Option<String>,
        profile: Option<String>,
        timeout: Duration,
    },
    /// A JSON API over HTTP (`metrics::web`): one request per measurement, the reading
    /// picked out of the answer by `json_path`.
    Web {
        /// The URL with its placeholders still in the path and query.
        url: String,
        method: WebMethod,
        /// `POST` only: the body, placeholders still in.
        body: Option<String>,
        /// Header name → the name of the environment variable holding its value.
        headers: BTreeMap<String, String>,
        timeout: Duration,
        json_path: String,
        /// Where the count of events behind the reading is; `None`: one per reading.
        samples_path: Option<String>,
    },
}

impl MetricsSource {
    pub fn kind(&self) -> &'static str {
        match self {
            MetricsSource::Prometheus { .. } => "prometheus",
            MetricsSource::Cloudwatch { .. } => "cloudwatch",
            MetricsSource::Web { .. } => "web",
        }
    }
}

/// The HTTP method of a `web` source's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WebMethod {
    #[default]
    Get,
    Post,
}

impl WebMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            WebMethod::Get => "GET",
            WebMethod::Post => "POST",
        }
    }
}

/// Why an AWS endpoint URL (a Lambda target's, a CloudWatch source's) is refused, if it
/// is. Signed requests carry a session token: they go over `https://` to any host, or
/// over plain `http://` only to a loopback host (`127.0.0.0/8`, `::1`, `localhost`: a
/// local emulator). The URL is read strictly (no user info, no escapes, a numeric
/// port), so the host checked here is the host the SDK connects to.
pub fn endpoint_problem(url: &str) -> Option<String> {
    let (plain, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (true, rest)
    } else {
        return Some(format!("`{url}` is not an http(s) URL"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    if authority.contains('@') {
        return Some(format!(
            "`{url}` has user info before its host; an endpoint is a scheme, a host and a port"
        ));
    }
    if authority
        .chars()
        .any(|c| !(c.is_ascii_alphanumeric() || "-._:[]".contains(c)))
    {
        return Some(format!(
            "`{url}` has a host that is not a plain name or address"
        ));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        // `[::1]` or `[::1]:4566`: an IPv6 address, nothing else, in the brackets.
        let bracketed = v6.split_once(']').and_then(|(h, after)| {
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':')?),
            };
            h.parse::<std::net::Ipv6Addr>().is_ok().then_some((h, port))
        });
        match bracketed {
            Some(hp) => hp,
            None => {
                return Some(format!(
                    "`{url}` has a host that is not an IPv6 address in `[]`"
                ));
            }
        }
    } else {
        let (h, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if h.is_empty() || h.contains(['[', ']']) {
            return Some(format!("`{url}` has no host, or not a plain one"));
        }
        (h, port)
    };
    if let Some(p) = port
        && p.parse::<u16>().is_err()
    {
        return Some(format!(
            "`{url}` has a port that is not a number up to 65535"
        ));
    }
    if plain && !crate::metrics::prometheus::is_loopback_host(host) {
        return Some(format!(
            "`{url}` would send signed AWS requests over plain http to `{host}`; use https, or http only to a loopback address (a local emulator)"
        ));
    }
    None
}

/// Queries a `cloudwatch` source answers, per executed version of the plan's function.
pub const CLOUDWATCH_QUERIES: &[&str] = &[
    "success-rate",
    "error-rate",
    "errors",
    "invocations",
    "throttles",
    "duration-p50",
    "duration-p90",
    "duration-p99",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub email: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signing {
    Ssh { key: String },
    Gpg { key: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteBack {
    pub branch: String,
    pub author: Identity,
    pub committer: Identity,
    pub skip_ci: bool,
    pub signing: Option<Signing>,
    /// Where status files are stored (`writeBack.statusLayout`).
    pub status_layout: LayoutSetting,
}

/// Where the status files are stored. Everything but the Git boundary (the reads of
/// `source::git`, `history`, and the writer) sees only the logical path
/// `status/<plan>.yaml`.
///
/// - `Flat`: `status/<plan>.yaml`, every status file in one folder.
/// - `Sharded`: `status/<hh>/<plan>.yaml`, `hh` the two lowercase hex digits of
///   `source::status_shard`: 256 folders, so a status commit in a repository of 10,000 plans
///   writes a folder of about 40 entries and one of 256, not one of 10,000 (about
///   0.4 MB, written, pushed and fetched with every transition).
///
/// Readers accept both at once (a file in its shard folder wins over a flat one), so a
/// repository can move between them: the writer writes each status at the configured
/// place and deletes it at the other, and the daemon moves every status file in one
/// commit when the setting changes (`Rollgate-Status-Layout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusLayout {
    Flat,
    Sharded,
}

/// The setting `writeBack.statusLayout`: one layout, or `Auto` (the default), which
/// picks the layout by the repository's size, so a repository that grows past a few
/// thousand plans stops rewriting a folder of every status file with each transition,
/// and a small one keeps the folder people can browse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LayoutSetting {
    #[default]
    Auto,
    Fixed(StatusLayout),
}

/// `Auto` shards the status files of a repository with this many plans or more.
pub const AUTO_SHARD_AT: usize = 2_000;
/// `Auto` stores the status files of a repository with fewer plans than this flat again.
/// Between the two, the layout the repository has stays: plans added and removed around
/// one bound do not move every status file back and forth.
pub const AUTO_FLAT_BELOW: usize = 1_000;

impl LayoutSetting {
    /// The layout to store status files in, in a repository of `plans` plan files whose
    /// status files are stored in `now` (sharded when any is in a shard folder). A pure
    /// function of the repository's tree, so every replica and every retry on the same
    /// head picks the same layout.
    pub fn resolve(self, plans: usize, now: StatusLayout) -> StatusLayout {
        match self {
            Self::Fixed(layout) => layout,
            Self::Auto if plans >= AUTO_SHARD_AT => StatusLayout::Sharded,
            Self::Auto if plans < AUTO_FLAT_BELOW => StatusLayout::Flat,
            Self::Auto => now,
        }
    }
}

impl Default for WriteBack {
    fn default() -> Self {
        let id = Identity {
            name: "rollgate".to_owned(),
            email: "rollgate@localhost".to_owned(),
        };
        Self {
            branch: "main".to_owned(),
            author: id.clone(),
            committer: id,
            skip_ci: false,
            signing: None,
            status_layout: LayoutSetting::Auto,
        }
    }
}

/// The metrics source every plan may name without declaring it.
pub const BUILTIN_SOURCE: &str = "builtin";

#[cfg(test)]
mod tests {
    use super::{AUTO_FLAT_BELOW, AUTO_SHARD_AT, LayoutSetting, StatusLayout, endpoint_problem};

    #[test]
    fn auto_shards_a_large_repository_keeps_a_small_one_flat_and_does_not_flap_between() {
        use StatusLayout::{Flat, Sharded};
        let auto = LayoutSetting::Auto;
        for now in [Flat, Sharded] {
            assert_eq!(auto.resolve(0, now), Flat);
            assert_eq!(auto.resolve(AUTO_FLAT_BELOW - 1, now), Flat);
            assert_eq!(auto.resolve(AUTO_SHARD_AT, now), Sharded);
            assert_eq!(auto.resolve(10_000, now), Sharded);
            // Between the bounds the repository keeps the layout it has.
            assert_eq!(auto.resolve(AUTO_FLAT_BELOW, now), now);
            assert_eq!(auto.resolve(AUTO_SHARD_AT - 1, now), now);
            // A layout that is said is kept at any size.
            for plans in [0, AUTO_FLAT_BELOW, AUTO_SHARD_AT, 10_000] {
                assert_eq!(LayoutSetting::Fixed(Flat).resolve(plans, now), Flat);
                assert_eq!(LayoutSetting::Fixed(Sharded).resolve(plans, now), Sharded);
            }
        }
        assert_eq!(LayoutSetting::default(), auto);
    }

    #[test]
    fn an_aws_endpoint_is_https_or_loopback_and_read_strictly() {
        for ok in [
            "https://lambda.eu-west-1.amazonaws.com",
            "https://vpce-1.lambda.eu-west-1.vpce.amazonaws.com:443/",
            "https://[2001:db8::1]:8443",
            "http://127.0.0.1:4566",
            "http://127.1.2.3",
            "http://localhost:4566/",
            "http://LOCALHOST:4566",
            "http://[::1]:4566",
            "http://[::1]",
        ] {
            assert_eq!(endpoint_problem(ok), None, "{ok}");
        }
        for (bad, says) in [
            ("lambda.amazonaws.com", "not an http(s) URL"),
            ("HTTP://127.0.0.1", "not an http(s) URL"),
            ("ftp://127.0.0.1", "not an http(s) URL"),
            ("http://evil.example", "plain http to `evil.example`"),
            ("http://10.0.0.1:4566", "plain http to `10.0.0.1`"),
            ("http://127.0.0.1.evil.example", "plain http"),
            ("http://localhost.evil.example:4566", "plain http"),
            ("http://[::ffff:127.0.0.1]", "plain http"),
            ("http://127.0.0.1:4566@evil.example", "user info"),
            ("https://user:pass@lambda.example", "user info"),
            ("http://127.0.0.1%2fevil.example", "not a plain name"),
            ("http://127.0.0.1\\evil.example", "not a plain name"),
            ("http://127.0.0.1\\@evil.example", "user info"),
            ("http://", "no host"),
            ("http://:4566", "no host"),
            ("http://127.0.0.1:", "port"),
            ("http://127.0.0.1:99999", "port"),
            ("http://127.0.0.1:45:66", "port"),
            ("http://[::1", "IPv6"),
            ("http://[::1]x", "IPv6"),
            ("http://[evil.example]", "IPv6"),
        ] {
            let problem = endpoint_problem(bad).unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(problem.contains(says), "{bad}: {problem}");
        }
    }
}
