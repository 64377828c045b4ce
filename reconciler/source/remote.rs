//! Git's network side: fetch and push through the `git` command; everything local stays in git2.
//! A path remote is mostly fetched from and pushed to in-process ([`PathRemote`], with
//! the same compare-and-swap), `git` doing every 16th transfer and whatever that refuses.
//!
//! Why the command and not libgit2's transports (measured, see the README's "Git
//! remotes"): the `git` command's push is a compare-and-swap on every transport, the
//! path remote included (`receive-pack` locks the ref and checks its old value), where
//! libgit2's local transport overwrites the ref; https comes from the system's libcurl and
//! CA store, ssh from OpenSSH with its known_hosts, agent and key formats; no second TLS
//! stack is built into the binary. Argo CD, Kargo and cargo (`net.git-fetch-with-cli`)
//! make the same split.
//!
//! Invariants:
//! - every push names the exact old head it was computed on (`--force-with-lease` with an
//!   explicit value, never a `+` refspec): a moved branch is a [`Push::Rejected`], never
//!   an overwrite;
//! - a secret (token, password) never appears in an argument, a URL handed to `git`, the
//!   private clone's config or any message: it reaches `git` through the environment of
//!   that one child, and only when the URL is https or loopback http;
//! - `git` never prompts (no terminal, `GIT_TERMINAL_PROMPT=0`, ssh in batch mode) and
//!   never reads the user's credential helpers;
//! - ssh verifies the host key against a known_hosts file (`StrictHostKeyChecking=yes`),
//!   https verifies certificates; there is no switch to turn either off;
//! - over ssh, the commands of one `Remote` share one connection ([`SharedSsh`]) whose
//!   control socket only this user can reach, and which closes when the last clone of
//!   the `Remote` is dropped (or after [`SSH_SHARE_IDLE`] without a command).
//!
//! One job over 600 lines, kept in one file: Git's network side (URLs, credentials,
//! fetch, the compare-and-swap push, error classes); about a third is tests.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use git2::Oid;

use super::path_remote::{Done, PathRemote};
use crate::github::Secret;

/// A process-wide source of Git over http(s) passwords for `x-access-token`, asked with
/// the URL Git wants credentials for (a GitHub App's installation token: see
/// [`set_token_source`]).
type TokenSource = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

static TOKEN_SOURCE: OnceLock<TokenSource> = OnceLock::new();

/// Install the fallback token source asked when no token is configured: `main` installs
/// a GitHub App's installation token, which the source hands out for GitHub's own host
/// only. Once per process; a second call is an error.
pub fn set_token_source(
    source: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    TOKEN_SOURCE
        .set(Box::new(source))
        .map_err(|_| anyhow::anyhow!("a Git token source is already installed"))
}

/// How rollgate authenticates to the remote and verifies it: flags, else the environment.
#[derive(Clone, Default)]
pub struct GitAuth {
    /// The password for Git over https (`ROLLGATE_GIT_TOKEN`, `--git-token-file`).
    pub token: Option<Secret>,
    /// The user name sent with the token (`ROLLGATE_GIT_USERNAME`; default
    /// `x-access-token`, which GitHub, Gitea and Bitbucket accept; GitLab takes `oauth2`).
    pub username: Option<String>,
    /// The private key for ssh (`ROLLGATE_GIT_SSH_KEY`); without one, the ssh agent.
    pub ssh_key: Option<PathBuf>,
    /// The key's passphrase, in a file (`ROLLGATE_GIT_SSH_PASSPHRASE_FILE`).
    pub ssh_passphrase_file: Option<PathBuf>,
    /// The known_hosts file ssh checks the host key against (`ROLLGATE_GIT_KNOWN_HOSTS`;
    /// default `~/.ssh/known_hosts`).
    pub known_hosts: Option<PathBuf>,
    /// Extra CA certificates for https (`ROLLGATE_GIT_CA_FILE`, else `SSL_CERT_FILE`).
    pub ca_file: Option<PathBuf>,
}

impl fmt::Debug for GitAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitAuth")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("username", &self.username)
            .field("ssh_key", &self.ssh_key)
            .field("ssh_passphrase_file", &self.ssh_passphrase_file)
            .field("known_hosts", &self.known_hosts)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

static CONFIGURED: OnceLock<GitAuth> = OnceLock::new();

impl GitAuth {
    /// What `main` installed with [`GitAuth::install`] (flags, the environment and a
    /// password from the `--repo` URL), else the environment alone.
    pub fn configured() -> Self {
        CONFIGURED.get().cloned().unwrap_or_else(Self::from_env)
    }

    /// Make `self` what [`GitAuth::configured`] gives, for the whole process. Once.
    pub fn install(self) -> anyhow::Result<()> {
        CONFIGURED
            .set(self)
            .map_err(|_| anyhow::anyhow!("Git credentials are already configured"))
    }

    /// Take the user name and password out of `url` (`https://user:token@host/…`) into
    /// `self`, so the URL that is shown and stored holds no secret.
    pub fn absorb_userinfo(&mut self, url: &mut RemoteUrl) {
        if let Some((user, pass)) = url.userinfo.take() {
            if let Some(pass) = pass {
                self.token = Some(pass);
                self.username = Some(user);
            } else if self.username.is_none() {
                self.username = Some(user);
            }
        }
    }

    /// From the environment alone (the flags of `rollgate run` fill in on top).
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let path = |k: &str| var(k).map(PathBuf::from);
        Self {
            token: var("ROLLGATE_GIT_TOKEN").and_then(Secret::new),
            username: var("ROLLGATE_GIT_USERNAME"),
            ssh_key: path("ROLLGATE_GIT_SSH_KEY"),
            ssh_passphrase_file: path("ROLLGATE_GIT_SSH_PASSPHRASE_FILE"),
            known_hosts: path("ROLLGATE_GIT_KNOWN_HOSTS"),
            ca_file: path("ROLLGATE_GIT_CA_FILE").or_else(|| path("SSL_CERT_FILE")),
        }
    }
}

/// How a remote is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// A path on this machine, or `file://`.
    Local,
    Http,
    Https,
    /// `ssh://` or the scp-like `[user@]host:path`.
    Ssh,
}

/// A remote's URL with any userinfo secret taken out: what is shown and handed to `git`.
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteUrl {
    /// The URL without a password (and, for http(s), without any userinfo).
    url: String,
    scheme: Scheme,
    /// The host (no port), for http(s) and ssh.
    host: Option<String>,
    /// `user` and `password` from `https://user:password@host/…`.
    userinfo: Option<(String, Option<Secret>)>,
}

impl fmt::Debug for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteUrl")
            .field("url", &self.url)
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl RemoteUrl {
    /// Parse a remote as given on the command line (a URL, scp-like, or a path that
    /// exists). A path is made absolute.
    pub fn parse(remote: &str) -> anyhow::Result<Self> {
        if let Some((scheme, rest)) = remote.split_once("://") {
            let scheme_lc = scheme.to_ascii_lowercase();
            let kind = match scheme_lc.as_str() {
                "file" => Scheme::Local,
                "http" => Scheme::Http,
                "https" => Scheme::Https,
                "ssh" | "git+ssh" | "ssh+git" => Scheme::Ssh,
                other => anyhow::bail!(
                    "{}: the scheme `{other}` is not supported (use https://, ssh://, git@host:path, file:// or a path)",
                    redact(remote)
                ),
            };
            if kind == Scheme::Local {
                return Ok(Self {
                    url: remote.to_owned(),
                    scheme: kind,
                    host: None,
                    userinfo: None,
                });
            }
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let (userinfo, hostport) = match authority.rsplit_once('@') {
                Some((u, h)) => (Some(u), h),
                None => (None, authority),
            };
            if hostport.is_empty() {
                anyhow::bail!("{}: the URL names no host", redact(remote));
            }
            let host = host_of(hostport);
            let (url, userinfo) = match (kind, userinfo) {
                // http(s): all userinfo leaves the URL; a password becomes the credential.
                (Scheme::Http | Scheme::Https, Some(u)) => {
                    let (user, pass) = match u.split_once(':') {
                        Some((user, pass)) => {
                            (percent_decode(user), Secret::new(percent_decode(pass)))
                        }
                        None => (percent_decode(u), None),
                    };
                    (
                        format!("{scheme_lc}://{hostport}{path}"),
                        Some((user, pass)),
                    )
                }
                // ssh: the user stays (it is who we log in as); a password never does.
                (_, Some(u)) => {
                    let user = u.split_once(':').map_or(u, |(user, _)| user);
                    (format!("{scheme_lc}://{user}@{hostport}{path}"), None)
                }
                (_, None) => (format!("{scheme_lc}://{hostport}{path}"), None),
            };
            return Ok(Self {
                url,
                scheme: kind,
                host: Some(host),
                userinfo,
            });
        }
        if let Some((before, _)) = remote.split_once(':')
            && !before.is_empty()
            && !before.contains('/')
            && !Path::new(remote).exists()
        {
            // scp-like: [user@]host:path
            let host = before.rsplit_once('@').map_or(before, |(_, h)| h);
            return Ok(Self {
                url: remote.to_owned(),
                scheme: Scheme::Ssh,
                host: Some(host.to_owned()),
                userinfo: None,
            });
        }
        let path = std::fs::canonicalize(remote)
            .map_err(|e| anyhow::anyhow!("repository {remote} not found: {e}"))?;
        Ok(Self {
            url: path.display().to_string(),
            scheme: Scheme::Local,
            host: None,
            userinfo: None,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.url
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// Whether a secret may go to this remote: https, or plain http to loopback.
    pub fn may_send_secret(&self) -> bool {
        match self.scheme {
            Scheme::Https => true,
            Scheme::Http => self.host.as_deref().is_some_and(is_loopback_host),
            Scheme::Local | Scheme::Ssh => false,
        }
    }
}

fn host_of(hostport: &str) -> String {
    match hostport.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default().to_owned(),
        None => hostport
            .rsplit_once(':')
            .map_or(hostport, |(h, _)| h)
            .to_owned(),
    }
}

/// `localhost`, `127.0.0.0/8` or `::1` (bracketed or not).
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(s.get(i + 1..i + 3).unwrap_or("zz"), 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A remote URL with its password (or, for http(s), its whole userinfo) replaced by
/// `***`: for every message that shows a URL a person typed.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{path}"),
        None => url.to_owned(),
    }
}

/// What became of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    /// The branch now points at the commit.
    Pushed,
    /// The remote refused: the branch moved (a lost race) or a hook or lock said no.
    Rejected(String),
}

/// Why a fetch or push failed, as a person can act on it.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(
        "the git command is not installed (rollgate runs it for fetch and push): install git 2.30 or later"
    )]
    GitMissing,
    #[error(
        "{remote}: authentication failed ({detail}); check the token or key and its access to the repository"
    )]
    Auth { remote: String, detail: String },
    #[error(
        "{remote}: the ssh host key of {host} is {state} (the server offered {fingerprint}); add the host's key to {known_hosts} once you have checked it"
    )]
    HostKey {
        remote: String,
        host: String,
        /// `unknown` or `changed`.
        state: &'static str,
        fingerprint: String,
        known_hosts: String,
    },
    #[error(
        "{remote}: the server's TLS certificate is not trusted ({detail}); give its CA with ROLLGATE_GIT_CA_FILE or --git-ca-file"
    )]
    Certificate { remote: String, detail: String },
    #[error(
        "{remote}: the branch {branch} does not exist; push it first or name another with --branch"
    )]
    MissingBranch { remote: String, branch: String },
    #[error("{remote}: unreachable ({detail}); will retry")]
    Unreachable { remote: String, detail: String },
    #[error("{remote}: no such repository, or no access to it ({detail})")]
    NotFound { remote: String, detail: String },
    #[error("{remote}: git {op} failed: {detail}")]
    Other {
        remote: String,
        op: &'static str,
        detail: String,
    },
}

impl RemoteError {
    /// Worth retrying as it is (a network error, a server error); the others need a person.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::Other { .. })
    }
}

/// One fetch in this many checks whether the clone needs `git maintenance` (gc of
/// loose objects): `git fetch` runs `git maintenance run --auto` after every fetch, one
/// more process each time (2 of 7.8 ms of a fetch with nothing new, more under load,
/// and a pass fetches again after every lost race).
pub const MAINTENANCE_EVERY: u32 = 16;

/// Whether the `n`th fetch (from 0) of a remote lets git run its auto maintenance.
pub fn maintenance_due(n: u32) -> bool {
    n.is_multiple_of(MAINTENANCE_EVERY)
}

/// `+<src>:<dst>` naming one ref each (no pattern): its two refs.
fn forced_exact(spec: &str) -> Option<(&str, &str)> {
    let (src, dst) = spec.strip_prefix('+')?.split_once(':')?;
    let exact = |r: &str| r.starts_with("refs/") && !r.contains('*');
    (exact(src) && exact(dst)).then_some((src, dst))
}

/// A remote and how to reach it: runs `git fetch` and `git push` for a repository
/// (for a path remote, mostly in-process: [`PathRemote`]).
#[derive(Debug, Clone)]
pub struct Remote {
    url: RemoteUrl,
    auth: GitAuth,
    /// Fetches so far (shared by clones of this value): see `maintenance_due`.
    fetches: Arc<AtomicU32>,
    /// Pushes so far (shared by clones of this value): see `maintenance_due`.
    pushes: Arc<AtomicU32>,
    /// For a path remote: the repository, fetched from and pushed to in-process
    /// ([`PathRemote`]) except every `MAINTENANCE_EVERY`th time.
    path: Option<PathRemote>,
    /// For ssh: the one connection every fetch and push of this remote (and its clones)
    /// goes through. `None` for other schemes, or when no private folder could be had.
    shared_ssh: Option<Arc<SharedSsh>>,
}

/// How long ssh keeps a shared connection open after its last command (OpenSSH's
/// `ControlPersist`): longer than the daemon's usual gap between two fetches, short
/// enough that a daemon killed without dropping its `Remote` leaves nothing for long.
pub const SSH_SHARE_IDLE: Duration = Duration::from_secs(60);

/// The longest control socket path used: a Unix socket path holds 108 bytes, and ssh
/// first binds a temporary name 17 bytes longer than the one configured.
const MAX_SOCKET_PATH: usize = 90;

/// One ssh connection shared by every `git` command of a remote (OpenSSH's
/// `ControlMaster`): a fetch or push over ssh opened a connection of its own each time,
/// a key exchange and a login (about 0.3 s each on loopback, more over a WAN), two per
/// status write. The first command opens it, later ones reuse it, it closes after
/// [`SSH_SHARE_IDLE`] without commands, and when the last clone of its `Remote` is
/// dropped.
///
/// The control socket lives in a folder of its own, created `0700` and removed on drop:
/// only this user can ride the connection. The host key is checked when the connection
/// opens, as before; a connection opened with other settings (another key, another
/// known_hosts) is never reused, because each `Remote` has its own.
#[derive(Debug)]
pub struct SharedSsh {
    dir: tempfile::TempDir,
}

impl SharedSsh {
    /// A new private folder for one connection's socket; `None` when none can be made
    /// (or its path is too long for a socket).
    pub fn new() -> Option<Self> {
        let dir = tempfile::Builder::new()
            .prefix("rollgate-ssh-")
            .tempdir()
            .ok()?;
        let share = Self { dir };
        (share.socket().as_os_str().len() <= MAX_SOCKET_PATH).then_some(share)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("c")
    }

    /// The options that make ssh share this connection, quoted for a shell command line
    /// such as `GIT_SSH_COMMAND`.
    pub fn options(&self) -> [String; 6] {
        [
            "-o".to_owned(),
            "ControlMaster=auto".to_owned(),
            "-o".to_owned(),
            format!("ControlPath={}", shell_quote_path(&self.socket())),
            "-o".to_owned(),
            format!("ControlPersist={}", SSH_SHARE_IDLE.as_secs()),
        ]
    }
}

impl Drop for SharedSsh {
    /// Close the connection now (`ssh -O exit`), not when it has been idle long enough:
    /// a test's server, or a daemon's next start, does not find it still open.
    fn drop(&mut self) {
        let socket = self.socket();
        if !socket.exists() {
            return;
        }
        let _ = Command::new("ssh")
            .arg("-o")
            .arg(format!("ControlPath={}", socket.display()))
            .args(["-O", "exit", "rollgate-remote"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Remote {
    pub fn new(url: RemoteUrl, auth: GitAuth) -> Self {
        let shared_ssh = match url.scheme {
            Scheme::Ssh => SharedSsh::new().map(Arc::new),
            _ => None,
        };
        let path = match url.scheme {
            Scheme::Local => PathRemote::at(url.as_str()),
            _ => None,
        };
        Self {
            url,
            auth,
            fetches: Arc::new(AtomicU32::new(0)),
            pushes: Arc::new(AtomicU32::new(0)),
            path,
            shared_ssh,
        }
    }

    pub fn url(&self) -> &RemoteUrl {
        &self.url
    }

    /// The control socket of the shared ssh connection ([`SharedSsh`]), when there is one.
    pub fn ssh_control_socket(&self) -> Option<PathBuf> {
        self.shared_ssh.as_ref().map(|s| s.socket())
    }

    /// Fetch `refspecs` from the remote into the repository at `git_dir`.
    pub fn fetch(&self, git_dir: &Path, refspecs: &[String]) -> Result<(), RemoteError> {
        let due = maintenance_due(self.fetches.fetch_add(1, Ordering::Relaxed));
        if !due
            && let Some(path) = &self.path
            && let [spec] = refspecs
            && let Some((src, dst)) = forced_exact(spec)
        {
            match path.fetch(git_dir, src, dst) {
                Done::Done(_) => return Ok(()),
                Done::UseGit(why) => tracing::debug!(%why, "fetch through git"),
            }
        }
        let mut cmd = self.git(git_dir)?;
        cmd.args(["fetch", "--quiet", "--no-tags", "--no-write-fetch-head"]);
        if !due {
            cmd.arg("--no-auto-maintenance");
        }
        cmd.arg("--").arg(self.url.as_str()).args(refspecs);
        let out = self.run(cmd, "fetch")?;
        if out.status.success() {
            return Ok(());
        }
        Err(self.classify("fetch", &out, refspecs))
    }

    /// Push `commit` to `refs/heads/<branch>` if and only if the branch is `expected`
    /// there now (`None`: if the branch does not exist). Never forces.
    pub fn push(
        &self,
        git_dir: &Path,
        commit: Oid,
        branch: &str,
        expected: Option<Oid>,
    ) -> Result<Push, RemoteError> {
        // A path remote in-process, except every `MAINTENANCE_EVERY`th push, which lets
        // receive-pack run the remote's auto maintenance (gc of loose objects).
        if let Some(path) = &self.path
            && !maintenance_due(self.pushes.fetch_add(1, Ordering::Relaxed))
        {
            match path.push(git_dir, commit, branch, expected) {
                Done::Done(push) => return Ok(push),
                Done::UseGit(why) => tracing::debug!(%why, "push through git"),
            }
        }
        let dst = format!("refs/heads/{branch}");
        let lease = match expected {
            Some(old) => format!("--force-with-lease={dst}:{old}"),
            None => format!("--force-with-lease={dst}:"),
        };
        let mut cmd = self.git(git_dir)?;
        // No delta search: the objects go as they are stored (whole, and already
        // compressed by `writeback::pack`), copied from the pack. For a 1,000-status
        // commit that halves the push (pack-objects' search was about 50 ms of CPU, and
        // the remote no longer resolves deltas), which is the window in which another
        // writer's push makes this one lose its race; the pack is 10–20% larger.
        cmd.args(["-c", "pack.window=0"])
            .args(["push", "--porcelain", "--quiet", "--no-verify"])
            .arg(lease)
            .arg("--")
            .arg(self.url.as_str())
            .arg(format!("{commit}:{dst}"));
        let out = self.run(cmd, "push")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        // `--porcelain`: `<flag>\t<from>:<to>\t<summary>`; `!` is a refusal.
        for line in stdout.lines() {
            let mut parts = line.splitn(3, '\t');
            let (Some(flag), Some(refs), summary) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if !refs.ends_with(&format!(":{dst}")) {
                continue;
            }
            return match flag {
                " " | "*" | "=" => Ok(Push::Pushed),
                "!" => Ok(Push::Rejected(summary.unwrap_or("rejected").to_owned())),
                // `+` (forced) cannot happen without a `+` refspec or a lease that
                // matched a non-ancestor: both are impossible here.
                other => Err(RemoteError::Other {
                    remote: self.url.to_string(),
                    op: "push",
                    detail: format!("unexpected push result `{other}` for {refs}"),
                }),
            };
        }
        if out.status.success() {
            return Ok(Push::Pushed);
        }
        Err(self.classify("push", &out, &[]))
    }

    fn run(&self, mut cmd: Command, op: &'static str) -> Result<std::process::Output, RemoteError> {
        let started = std::time::Instant::now();
        let child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => RemoteError::GitMissing,
            _ => RemoteError::Other {
                remote: self.url.to_string(),
                op,
                detail: format!("cannot run git: {e}"),
            },
        })?;
        let out = wait_with_deadline(child, OPERATION_TIMEOUT).map_err(|detail| {
            RemoteError::Unreachable {
                remote: self.url.to_string(),
                detail: format!("git {op} {detail}"),
            }
        })?;
        tracing::debug!(op, remote = %self.url, ms = started.elapsed().as_millis() as u64, ok = out.status.success(), "git");
        Ok(out)
    }

    /// `git --git-dir DIR` with a clean environment for Git, no prompts, no user
    /// credential helpers, and this remote's credentials and verification.
    fn git(&self, git_dir: &Path) -> Result<Command, RemoteError> {
        let mut cmd = Command::new(git_program());
        for var in GIT_ENV_CLEARED {
            cmd.env_remove(var);
        }
        cmd.env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C")
            .env("LANGUAGE", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Config through the environment (GIT_CONFIG_COUNT): nothing in argv, nothing in
        // the clone's config file.
        let mut config: Vec<(&str, String)> = vec![
            // Forget every credential helper the user's config names; ours comes below.
            ("credential.helper", String::new()),
            ("core.askPass", String::new()),
            // A redirect could carry the credentials to another host.
            ("http.followRedirects", "false".to_owned()),
            // No background gc or maintenance left running after the command.
            ("gc.autoDetach", "false".to_owned()),
            ("maintenance.autoDetach", "false".to_owned()),
            ("protocol.ext.allow", "never".to_owned()),
        ];
        match self.url.scheme {
            Scheme::Http | Scheme::Https => {
                config.push(("http.sslVerify", "true".to_owned()));
                if let Some(ca) = &self.auth.ca_file {
                    config.push(("http.sslCAInfo", ca.display().to_string()));
                }
                if let Some((user, pass)) = self.credentials() {
                    if self.url.may_send_secret() {
                        // The helper prints what the environment of this one child holds.
                        config.push((
                            "credential.helper",
                            "!f() { test \"$1\" = get && printf 'username=%s\\npassword=%s\\n' \"$ROLLGATE_GIT_ASKPASS_USER\" \"$ROLLGATE_GIT_ASKPASS_PASS\"; }; f".to_owned(),
                        ));
                        cmd.env("ROLLGATE_GIT_ASKPASS_USER", user)
                            .env("ROLLGATE_GIT_ASKPASS_PASS", pass.expose());
                    } else {
                        warn_once_plain_http(&self.url);
                    }
                }
            }
            Scheme::Ssh => {
                cmd.env("GIT_SSH_COMMAND", self.ssh_command())
                    .env("GIT_SSH_VARIANT", "ssh");
                if let Some(file) = &self.auth.ssh_passphrase_file {
                    let askpass = askpass_script(git_dir).map_err(|e| RemoteError::Other {
                        remote: self.url.to_string(),
                        op: "ssh",
                        detail: e,
                    })?;
                    cmd.env("SSH_ASKPASS", askpass)
                        .env("SSH_ASKPASS_REQUIRE", "force")
                        .env("ROLLGATE_SSH_PASSPHRASE_FILE", file)
                        .env("DISPLAY", ":0");
                }
            }
            Scheme::Local => {}
        }
        cmd.env("GIT_CONFIG_COUNT", config.len().to_string());
        for (i, (k, v)) in config.into_iter().enumerate() {
            cmd.env(format!("GIT_CONFIG_KEY_{i}"), k)
                .env(format!("GIT_CONFIG_VALUE_{i}"), v);
        }
        cmd.arg("--git-dir").arg(git_dir);
        Ok(cmd)
    }

    /// The user name and password for http(s): from the URL, else the token
    /// (configured, else the installed token source).
    fn credentials(&self) -> Option<(String, Secret)> {
        if let Some((user, Some(pass))) = &self.url.userinfo {
            return Some((user.clone(), pass.clone()));
        }
        let url_user = self.url.userinfo.as_ref().map(|(u, _)| u.clone());
        let user = url_user
            .or_else(|| self.auth.username.clone())
            .unwrap_or_else(|| "x-access-token".to_owned());
        if let Some(token) = &self.auth.token {
            return Some((user, token.clone()));
        }
        let token = TOKEN_SOURCE.get().and_then(|s| s(self.url.as_str()))?;
        Some(("x-access-token".to_owned(), Secret::new(token)?))
    }

    fn known_hosts(&self) -> PathBuf {
        self.auth.known_hosts.clone().unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map_or_else(|| PathBuf::from("/root"), PathBuf::from)
                .join(".ssh/known_hosts")
        })
    }

    /// The ssh command line Git runs: batch mode, strict host key checking against one
    /// known_hosts file, the configured key only (else the agent).
    fn ssh_command(&self) -> String {
        let mut c = vec![
            "ssh".to_owned(),
            "-o".to_owned(),
            "StrictHostKeyChecking=yes".to_owned(),
            "-o".to_owned(),
            format!(
                "UserKnownHostsFile={}",
                shell_quote_path(&self.known_hosts())
            ),
            "-o".to_owned(),
            "UpdateHostKeys=no".to_owned(),
            "-o".to_owned(),
            "PasswordAuthentication=no".to_owned(),
            "-o".to_owned(),
            "KbdInteractiveAuthentication=no".to_owned(),
            "-o".to_owned(),
            "ConnectTimeout=15".to_owned(),
            // Debian's ssh_config turns GSSAPI on: a Kerberos probe costs ~0.4 s a connect.
            "-o".to_owned(),
            "GSSAPIAuthentication=no".to_owned(),
            "-o".to_owned(),
            "ServerAliveInterval=15".to_owned(),
        ];
        if let Some(share) = &self.shared_ssh {
            c.extend(share.options());
        }
        // With a passphrase, ssh must be allowed to ask (SSH_ASKPASS answers).
        if self.auth.ssh_passphrase_file.is_none() {
            c.extend(["-o".to_owned(), "BatchMode=yes".to_owned()]);
        }
        if let Some(key) = &self.auth.ssh_key {
            c.extend([
                "-o".to_owned(),
                "IdentitiesOnly=yes".to_owned(),
                "-o".to_owned(),
                "IdentityAgent=none".to_owned(),
                "-i".to_owned(),
                shell_quote_path(key),
            ]);
        }
        c.join(" ")
    }

    /// The fingerprints of the host keys the ssh server offers (`ssh-keyscan`), for the
    /// unknown-host error: ssh itself does not print them in strict mode.
    fn scan_host_key(&self) -> Option<String> {
        let host = self.url.host.as_deref()?;
        let port = ssh_port(self.url.as_str()).unwrap_or(22);
        let scan = Command::new("ssh-keyscan")
            .args(["-T", "5", "-p", &port.to_string(), "--", host])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let mut keygen = Command::new("ssh-keygen")
            .args(["-l", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        {
            use std::io::Write;
            let mut stdin = keygen.stdin.take()?;
            stdin.write_all(&scan.stdout).ok()?;
        }
        let out = keygen.wait_with_output().ok()?;
        // `256 SHA256:… [127.0.0.1]:2222 (ED25519)` per key
        let prints: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let fp = w.nth(1)?;
                let kind = l.rsplit_once('(').map(|(_, k)| k.trim_end_matches(')'))?;
                Some(format!("{kind} {fp}"))
            })
            .collect();
        (!prints.is_empty()).then(|| prints.join(", "))
    }

    /// Turn a failed command's stderr into an error a person can act on.
    fn classify(
        &self,
        op: &'static str,
        out: &std::process::Output,
        refspecs: &[String],
    ) -> RemoteError {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let remote = self.url.to_string();
        let lc = stderr.to_ascii_lowercase();
        let last = last_error_line(&stderr);
        if lc.contains("host key verification failed")
            || lc.contains("no ed25519 host key is known")
            || lc.contains("host key is known for")
            || lc.contains("remote host identification has changed")
        {
            let changed = lc.contains("remote host identification has changed")
                || lc.contains("host key for") && lc.contains("has changed");
            return RemoteError::HostKey {
                remote,
                host: self.url.host.clone().unwrap_or_default(),
                state: if changed { "changed" } else { "unknown" },
                fingerprint: offered_fingerprint(&stderr)
                    .or_else(|| self.scan_host_key())
                    .unwrap_or_else(|| "a key ssh did not print".to_owned()),
                known_hosts: self.known_hosts().display().to_string(),
            };
        }
        if lc.contains("ssl certificate problem")
            || lc.contains("server certificate verification failed")
            || lc.contains("certificate verify failed")
            || lc.contains("unable to get local issuer certificate")
            || lc.contains("self-signed certificate")
            || lc.contains("self signed certificate")
            || lc.contains("ssl: no alternative certificate subject name")
            || lc.contains("certificate subject name")
        {
            return RemoteError::Certificate {
                remote,
                detail: last,
            };
        }
        if lc.contains("authentication failed")
            || lc.contains("permission denied (publickey")
            || lc.contains("could not read username")
            || lc.contains("could not read password")
            || lc.contains("terminal prompts disabled")
            || lc.contains("incorrect passphrase")
            || lc.contains("http 401")
            || lc.contains("error: 401")
            || lc.contains("returned error: 403")
            || lc.contains("load key")
        {
            let detail = if !self.url.may_send_secret()
                && matches!(self.url.scheme, Scheme::Http)
                && self.credentials().is_some()
            {
                "the token is never sent over plain http to a host that is not loopback; use https"
                    .to_owned()
            } else {
                last
            };
            return RemoteError::Auth { remote, detail };
        }
        if lc.contains("couldn't find remote ref") {
            let branch = refspecs
                .iter()
                .find_map(|s| {
                    let src = s.trim_start_matches('+').split(':').next()?;
                    lc.contains(&src.to_ascii_lowercase())
                        .then(|| src.trim_start_matches("refs/heads/").to_owned())
                })
                .unwrap_or_else(|| last.clone());
            return RemoteError::MissingBranch { remote, branch };
        }
        if lc.contains("repository not found")
            || lc.contains("does not appear to be a git repository")
            || lc.contains("not found") && lc.contains("repository")
            || lc.contains("error: 404")
            || lc.contains("returned error: 404")
        {
            return RemoteError::NotFound {
                remote,
                detail: last,
            };
        }
        if lc.contains("could not resolve host")
            || lc.contains("failed to connect")
            || lc.contains("connection refused")
            || lc.contains("connection timed out")
            || lc.contains("operation timed out")
            || lc.contains("network is unreachable")
            || lc.contains("no route to host")
            || lc.contains("could not resolve hostname")
            || lc.contains("connection reset")
            || lc.contains("connection closed")
            || lc.contains("the remote end hung up unexpectedly")
            || lc.contains("early eof")
            || lc.contains("returned error: 5")
            || lc.contains("http 5")
            || lc.contains("gnutls_handshake() failed")
            || lc.contains("ssl_connect")
        {
            return RemoteError::Unreachable {
                remote,
                detail: last,
            };
        }
        RemoteError::Other {
            remote,
            op,
            detail: if last.is_empty() {
                format!("exit status {}", out.status)
            } else {
                last
            },
        }
    }
}

/// The longest one fetch or push may take before it is killed and counted as a
/// network failure (a server that accepts and never answers).
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(120);

/// Wait for `child`, reading its output; kill it (and say so) after `limit`.
fn wait_with_deadline(
    mut child: std::process::Child,
    limit: Duration,
) -> Result<std::process::Output, String> {
    use std::io::Read;
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = std::time::Instant::now() + limit;
    let mut nap = Duration::from_micros(250);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "took longer than {}s and was stopped",
                    limit.as_secs()
                ));
            }
            Ok(None) => {
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(2));
            }
            Err(e) => return Err(format!("could not be waited for: {e}")),
        }
    };
    Ok(std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Variables that would point `git` at another repository or config than ours.
const GIT_ENV_CLEARED: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_CEILING_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_ASKPASS",
    "SSH_ASKPASS",
    "GIT_SSH",
    "GIT_SSH_COMMAND",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    // Never turn certificate checks off, whatever the daemon's environment says; the CA
    // comes from the settings below (GIT_SSL_CAINFO would override http.sslCAInfo).
    "GIT_SSL_NO_VERIFY",
    "GIT_SSL_CAINFO",
    "GIT_SSL_CAPATH",
];

/// The `git` program: `ROLLGATE_GIT_PROGRAM`, else `git` on `PATH`.
fn git_program() -> PathBuf {
    std::env::var_os("ROLLGATE_GIT_PROGRAM").map_or_else(|| PathBuf::from("git"), PathBuf::from)
}

/// The most telling line of Git's stderr: the last `fatal:`/`error:` line, trimmed.
fn last_error_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Authenticated to") && !l.starts_with("Server host key")
        })
        .collect();
    lines
        .iter()
        .rev()
        .find(|l| l.starts_with("fatal:") || l.starts_with("error:"))
        .or_else(|| lines.last())
        .map(|l| {
            l.trim_start_matches("fatal: ")
                .trim_start_matches("error: ")
                .to_owned()
        })
        .unwrap_or_default()
}

/// `SHA256:…` from ssh's `Server host key: ssh-ed25519 SHA256:…` (LogLevel VERBOSE) or
/// from its changed-key warning.
fn offered_fingerprint(stderr: &str) -> Option<String> {
    for line in stderr.lines() {
        if let Some(rest) = line.split("Server host key: ").nth(1) {
            return Some(rest.trim().to_owned());
        }
    }
    stderr
        .split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .map(|w| w.trim_end_matches('.').to_owned())
}

/// The port of an `ssh://` URL, when it names one.
fn ssh_port(url: &str) -> Option<u16> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let port = match hostport.strip_prefix('[') {
        Some(v6) => v6.split_once("]:")?.1,
        None => hostport.rsplit_once(':')?.1,
    };
    port.parse().ok()
}

fn shell_quote_path(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// An `SSH_ASKPASS` program that prints the passphrase file named in the environment
/// (`ROLLGATE_SSH_PASSPHRASE_FILE`), kept in rollgate's own repository folder `git_dir`
/// (so it goes with the private clone); the script itself holds no secret.
fn askpass_script(git_dir: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    const SCRIPT: &str = "#!/bin/sh\nexec cat -- \"$ROLLGATE_SSH_PASSPHRASE_FILE\"\n";
    let path = git_dir.join("rollgate-ssh-askpass");
    if std::fs::read_to_string(&path).is_ok_and(|s| s == SCRIPT) {
        return Ok(path);
    }
    std::fs::write(&path, SCRIPT).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("cannot chmod {}: {e}", path.display()))?;
    Ok(path)
}

fn warn_once_plain_http(url: &RemoteUrl) {
    static WARNED: OnceLock<()> = OnceLock::new();
    if WARNED.set(()).is_ok() {
        tracing::warn!(remote = %url, "not sending the Git token over plain http to a host that is not loopback; use https");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_every_fetch_does_not_start_a_maintenance_process_yet_some_still_do() {
        let due: Vec<u32> = (0..3 * MAINTENANCE_EVERY)
            .filter(|n| maintenance_due(*n))
            .collect();
        assert_eq!(due, [0, MAINTENANCE_EVERY, 2 * MAINTENANCE_EVERY]);
        // Clones of a remote count together (the daemon's source hands out clones).
        let remote = Remote::new(
            RemoteUrl::parse("https://git.example/ops.git").expect("a URL"),
            GitAuth::default(),
        );
        let copy = remote.clone();
        remote.fetches.fetch_add(1, Ordering::Relaxed);
        assert_eq!(copy.fetches.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn https_userinfo_leaves_the_url_and_becomes_the_credential() {
        let u = RemoteUrl::parse("https://bot:s3cr%40t@git.example:8443/ops.git").expect("parses");
        assert_eq!(u.as_str(), "https://git.example:8443/ops.git");
        assert_eq!(u.scheme(), Scheme::Https);
        let (user, pass) = u.userinfo.clone().expect("userinfo");
        assert_eq!(user, "bot");
        assert_eq!(pass.expect("password").expose(), "s3cr@t");
        assert!(!format!("{u:?}").contains("s3cr"));
    }

    #[test]
    fn redaction_hides_every_userinfo() {
        assert_eq!(
            redact("https://oauth2:glpat-xyz@gitlab.example/g/r.git"),
            "https://***@gitlab.example/g/r.git"
        );
        assert_eq!(
            redact("https://gitlab.example/g/r.git"),
            "https://gitlab.example/g/r.git"
        );
        assert_eq!(redact("/srv/gitops.git"), "/srv/gitops.git");
    }

    #[test]
    fn scp_like_and_ssh_urls_are_ssh() {
        let u = RemoteUrl::parse("git@github.com:acme/ops.git").expect("parses");
        assert_eq!(u.scheme(), Scheme::Ssh);
        assert_eq!(u.host.as_deref(), Some("github.com"));
        let u = RemoteUrl::parse("ssh://git@[::1]:2222/srv/ops.git").expect("parses");
        assert_eq!(u.scheme(), Scheme::Ssh);
        assert_eq!(u.host.as_deref(), Some("::1"));
        assert!(!u.may_send_secret());
    }

    #[test]
    fn a_secret_goes_only_over_https_or_loopback_http() {
        let ok = |s: &str| RemoteUrl::parse(s).expect("parses").may_send_secret();
        assert!(ok("https://git.example/r.git"));
        assert!(ok("http://127.0.0.1:8080/r.git"));
        assert!(ok("http://localhost/r.git"));
        assert!(!ok("http://git.example/r.git"));
        assert!(!ok("http://127.0.0.1.nip.example/r.git"));
    }

    #[test]
    fn unknown_schemes_are_refused_with_the_url_redacted() {
        let e = RemoteUrl::parse("ftp://u:pw@host/r.git")
            .expect_err("refused")
            .to_string();
        assert!(e.contains("not supported"), "{e}");
        assert!(!e.contains("pw"), "{e}");
    }
}
