//! Credentials and where they may go: [`Secret`] (prints `***`), [`Auth`] (a token or a
//! GitHub App), [`Config`], the repository's [`RepoName`], who rollgate is
//! ([`Identity`]: whose comments are its own) and the App's installation token for Git
//! ([`GitToken`], [`SharedGitToken`]).
//!
//! Invariants: a secret comes from the environment, a file or GitHub only, and no
//! `Debug` or `Display` of anything here prints it; a Git token is handed out only for
//! a URL on GitHub's own host, over https (or plain http to loopback); a login or
//! `owner/name` accepted here is safe as a URL path segment; rollgate owns a comment
//! only by its author ([`Identity::wrote`]), never by its text.

use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result, bail};

use super::Client;

/// A secret value (token, private key, webhook secret). It prints as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// `None` for an empty value (an empty secret is no secret).
    pub fn new(value: impl Into<String>) -> Option<Self> {
        let v: String = value.into();
        let trimmed = v.trim_end_matches(['\n', '\r']);
        (!trimmed.trim().is_empty()).then(|| Secret(trimmed.to_owned()))
    }

    /// The file when one is named, else the environment variable `env`.
    pub fn load(file: Option<&Path>, env: &str) -> Result<Option<Self>> {
        if let Some(file) = file {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the secret file {}", file.display()))?;
            return Secret::new(text)
                .map(Some)
                .with_context(|| format!("the secret file {} is empty", file.display()));
        }
        Ok(std::env::var(env).ok().and_then(Secret::new))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// A GitHub App's installation token for Git over http(s), bound to GitHub's host: it
/// is only handed out for a URL on that host, over https (or plain http to loopback,
/// where no network sees it). Prints its host only.
#[derive(Clone)]
pub struct GitToken {
    pub(super) host: String,
    pub(super) token: Secret,
}

impl GitToken {
    /// The token, when Git may send it with a request to `url`.
    pub fn for_url(&self, url: &str) -> Option<&str> {
        may_send_token(url, &self.host).then(|| self.token.expose())
    }
}

impl std::fmt::Debug for GitToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitToken")
            .field("host", &self.host)
            .field("token", &self.token)
            .finish()
    }
}

/// The App's latest installation token for Git, shared between the worker, which keeps
/// it fresh, and the daemon's own fetch and push (`source::git::set_token_source`).
/// Hands the token out only through [`GitToken::for_url`]; empty with a personal token
/// or a repository elsewhere.
#[derive(Debug, Clone, Default)]
pub struct SharedGitToken(Arc<RwLock<Option<GitToken>>>);

impl SharedGitToken {
    /// The token, when Git may send it with a request to `url`.
    pub fn for_url(&self, url: &str) -> Option<String> {
        let token = self.0.read().ok()?;
        token.as_ref()?.for_url(url).map(str::to_owned)
    }

    fn set(&self, token: Option<GitToken>) {
        if let Ok(mut t) = self.0.write() {
            *t = token;
        }
    }

    /// Replace the token with `client`'s for `repo_url` (minted when the cached one has
    /// less than `GIT_TOKEN_MARGIN` to live). On failure the old one stays: it may
    /// still be valid, and Git's failure says the rest.
    pub async fn refresh(&self, client: &Client, repo_url: &str) {
        match client.git_token(None, repo_url).await {
            Ok(token) => self.set(token),
            Err(e) => tracing::warn!(
                error = %format!("{e:#}"),
                "cannot get an installation token for Git; retrying"
            ),
        }
    }
}

/// `scheme` and `host[:port]` of a URL (no user info), e.g. `("https", "github.com")`.
fn scheme_and_authority(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    (!scheme.is_empty() && !authority.is_empty()).then_some((scheme, authority))
}

/// The host (`host[:port]`) serving Git next to the API at `api_url`: `github.com` for
/// `https://api.github.com`, the same host for GitHub Enterprise Server
/// (`https://HOST/api/v3`).
pub fn git_host(api_url: &str) -> Option<String> {
    let (_, authority) = scheme_and_authority(api_url)?;
    let authority = authority.to_ascii_lowercase();
    Some(if authority == "api.github.com" {
        "github.com".to_owned()
    } else {
        authority
    })
}

/// Whether a token for `host` may go with a request to `url`: https to that very host,
/// or plain http to it on loopback (a local proxy, tests); never ssh, files or others.
pub fn may_send_token(url: &str, host: &str) -> bool {
    let Some((scheme, authority)) = scheme_and_authority(url) else {
        return false;
    };
    if !authority.eq_ignore_ascii_case(host) {
        return false;
    }
    if scheme.eq_ignore_ascii_case("https") {
        return true;
    }
    scheme.eq_ignore_ascii_case("http") && is_loopback(authority)
}

fn is_loopback(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `owner/name` of the repository rollgate reports on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoName {
    pub owner: String,
    pub name: String,
}

impl RepoName {
    /// `owner/name` from a GitHub clone URL (`https://host/owner/name(.git)`,
    /// `git@host:owner/name.git`, `ssh://git@host/owner/name.git`).
    pub fn from_url(url: &str) -> Option<Self> {
        let path = if let Some(rest) = url.strip_prefix("git@") {
            rest.split_once(':')?.1
        } else {
            let (_, rest) = url.split_once("://")?;
            rest.split_once('/')?.1
        };
        let path = path.trim_end_matches('/');
        let path = path.strip_suffix(".git").unwrap_or(path);
        path.parse().ok()
    }

    pub fn full_name(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }

    /// Whether a payload's `repository.full_name` is this repository.
    pub fn is(&self, full_name: &str) -> bool {
        full_name.eq_ignore_ascii_case(&self.full_name())
    }
}

impl std::str::FromStr for RepoName {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let Some((owner, name)) = s.split_once('/') else {
            bail!("`{s}` is not OWNER/NAME");
        };
        let owner_ok = !owner.is_empty()
            && owner.len() <= 39
            && owner
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let name_ok = !name.is_empty()
            && name.len() <= 100
            && name != "."
            && name != ".."
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !owner_ok || !name_ok {
            bail!("`{s}` is not OWNER/NAME of a GitHub repository");
        }
        Ok(Self {
            owner: owner.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// How rollgate authenticates to the API.
#[derive(Debug, Clone)]
pub enum Auth {
    /// A personal access token or any other bearer token.
    Token(Secret),
    /// A GitHub App: its id and PEM private key (JWT → installation tokens).
    App { id: u64, key: Secret },
}

impl Auth {
    /// From the daemon's flags: an App when `app_id` and `app_key_file` are given, else
    /// a token from `token_file` or `GITHUB_TOKEN`; `None` when there is nothing.
    pub fn load(
        token_file: Option<&Path>,
        app_id: Option<u64>,
        app_key_file: Option<&Path>,
    ) -> Result<Option<Self>> {
        match (app_id, app_key_file) {
            (Some(id), Some(file)) => {
                let key = Secret::load(Some(file), "")?
                    .with_context(|| format!("the App key file {} is empty", file.display()))?;
                Ok(Some(Auth::App { id, key }))
            }
            (Some(_), None) => bail!("--github-app-id needs --github-app-key-file"),
            (None, Some(_)) => bail!("--github-app-key-file needs --github-app-id"),
            (None, None) => Ok(Secret::load(token_file, "GITHUB_TOKEN")?.map(Auth::Token)),
        }
    }
}

/// Where and as whom to call the API.
#[derive(Debug, Clone)]
pub struct Config {
    /// `https://api.github.com`, or `https://HOST/api/v3` for GitHub Enterprise Server.
    pub api_url: String,
    pub repo: RepoName,
    pub auth: Auth,
}

/// Who rollgate's comments are written by: the token's owner (`GET /user`), or the
/// App (its id, and its bot user `<slug>[bot]`, from `GET /app`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    User(String),
    App { id: u64, slug: String },
}

impl Identity {
    /// Whether a comment by `login` (of user type `kind`), made through the App
    /// `via_app` if any, is rollgate's own. For a token: its owner's. For an App: its bot
    /// user's, known by its login `<slug>[bot]` or by the App it was made through; a
    /// comment of a person made through the App (a user-to-server token) is that
    /// person's, never rollgate's.
    pub fn wrote(&self, login: &str, kind: &str, via_app: Option<u64>) -> bool {
        match self {
            Identity::User(me) => login.eq_ignore_ascii_case(me),
            Identity::App { id, slug } => {
                kind.eq_ignore_ascii_case("bot")
                    && (login.eq_ignore_ascii_case(&format!("{slug}[bot]")) || via_app == Some(*id))
            }
        }
    }
}

/// A GitHub login (letters, digits, dashes; an App's `name[bot]`), safe in a URL path.
pub fn valid_login(login: &str) -> bool {
    let core = login.strip_suffix("[bot]").unwrap_or(login);
    !core.is_empty()
        && core.len() <= 39
        && core.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2\n").expect("a secret");
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(format!("{s} {s:?} {:?}", Some(&s)), "*** *** Some(***)");
        let auth = Auth::Token(s);
        assert!(!format!("{auth:?}").contains("hunter2"));
        assert!(Secret::new("").is_none() && Secret::new(" \n").is_none());
    }

    #[test]
    fn repo_names_from_urls_and_flags() {
        let r = |s: &str| RepoName::from_url(s).map(|r| r.full_name());
        assert_eq!(
            r("https://github.com/acme/ops.git").as_deref(),
            Some("acme/ops")
        );
        assert_eq!(
            r("https://ghe.example/acme/ops").as_deref(),
            Some("acme/ops")
        );
        assert_eq!(
            r("git@github.com:acme/ops.git").as_deref(),
            Some("acme/ops")
        );
        assert_eq!(
            r("ssh://git@github.com/acme/ops.git").as_deref(),
            Some("acme/ops")
        );
        assert_eq!(r("/srv/ops.git"), None);
        assert!("acme/../x".parse::<RepoName>().is_err());
        assert!("acme".parse::<RepoName>().is_err());
        assert!("a cme/x".parse::<RepoName>().is_err());
        assert!("acme/x?y".parse::<RepoName>().is_err());
        assert!("Codertocat/Hello-World".parse::<RepoName>().is_ok());
    }

    #[test]
    fn an_installation_token_goes_to_githubs_host_only_and_never_in_clear() {
        assert_eq!(
            git_host("https://api.github.com").as_deref(),
            Some("github.com")
        );
        assert_eq!(
            git_host("https://GHE.example/api/v3").as_deref(),
            Some("ghe.example")
        );
        let ok = |url: &str, host: &str| may_send_token(url, host);
        assert!(ok("https://github.com/acme/ops.git", "github.com"));
        assert!(ok("https://x@GitHub.com/acme/ops", "github.com"));
        assert!(ok("https://ghe.example/acme/ops.git", "ghe.example"));
        assert!(ok("http://127.0.0.1:8080/git/ops.git", "127.0.0.1:8080"));
        assert!(ok("http://localhost:8080/ops.git", "localhost:8080"));
        assert!(ok("http://[::1]:8080/ops.git", "[::1]:8080"));
        // Another host (or port), plain http over a network, ssh, files: never
        assert!(!ok("https://gitlab.com/acme/ops.git", "github.com"));
        assert!(!ok(
            "https://github.com.evil.example/acme/ops",
            "github.com"
        ));
        assert!(!ok(
            "https://evil.example/github.com/acme/ops",
            "github.com"
        ));
        assert!(!ok("https://github.com@evil.example/x", "github.com"));
        assert!(!ok("http://127.0.0.1:9090/ops.git", "127.0.0.1:8080"));
        assert!(!ok("http://ghe.example/acme/ops.git", "ghe.example"));
        assert!(!ok("ssh://git@github.com/acme/ops.git", "github.com"));
        assert!(!ok("git@github.com:acme/ops.git", "github.com"));
        assert!(!ok("/srv/ops.git", "github.com"));
        let t = GitToken {
            host: "github.com".to_owned(),
            token: Secret::new("ghs_secret").expect("a token"),
        };
        assert_eq!(t.for_url("https://github.com/a/b"), Some("ghs_secret"));
        assert_eq!(t.for_url("https://gitlab.com/a/b"), None);
        assert!(!format!("{t:?}").contains("ghs_secret"));
        // The daemon's shared cell hands it out through the same gate, and nothing empty
        let shared = SharedGitToken::default();
        assert_eq!(shared.for_url("https://github.com/a/b"), None);
        shared.set(Some(t));
        assert_eq!(
            shared.for_url("https://github.com/a/b").as_deref(),
            Some("ghs_secret")
        );
        assert_eq!(shared.for_url("ssh://git@github.com/a/b"), None);
        assert_eq!(shared.for_url("file:///srv/ops.git"), None);
        assert!(!format!("{shared:?}").contains("ghs_secret"));
    }

    #[test]
    fn regression_only_rollgates_own_comments_are_its_own() {
        // A token: its owner's comments only
        let me = Identity::User("rollgate-ci".into());
        assert!(me.wrote("rollgate-ci", "User", None));
        assert!(me.wrote("Rollgate-CI", "User", None));
        assert!(!me.wrote("mallory", "User", None));
        assert!(!me.wrote("rollgate-ci[bot]", "Bot", Some(7)));
        // An App: its bot user, by its login or by the App it came through
        let app = Identity::App {
            id: 4242,
            slug: "rollgate".into(),
        };
        assert!(app.wrote("rollgate[bot]", "Bot", None));
        assert!(app.wrote("rollgate[bot]", "Bot", Some(4242)));
        assert!(app.wrote("renamed[bot]", "Bot", Some(4242)));
        // Not: a person named like the bot, another App's bot, a person acting through
        // the App (a user-to-server token), a login without the bot's type
        assert!(!app.wrote("rollgate", "User", None));
        assert!(!app.wrote("evil[bot]", "Bot", Some(666)));
        assert!(!app.wrote("evil[bot]", "Bot", None));
        assert!(!app.wrote("mallory", "User", Some(4242)));
        assert!(!app.wrote("rollgate[bot]", "User", None));
    }

    #[test]
    fn logins_are_safe_path_segments() {
        assert!(valid_login("Codertocat") && valid_login("rollgate[bot]"));
        assert!(!valid_login("../x") && !valid_login("") && !valid_login("a/b"));
    }
}
