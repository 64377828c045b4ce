//! Real Git servers on loopback, for tests of fetching and pushing over the network.
//!
//! ```text
//!   git / rollgate ──https (TLS, Basic auth)──┐
//!                  ──http  (Basic auth)───────┤ nginx ──unix socket── fcgiwrap ── git http-backend ── root/*.git
//!                  ──ssh   (public key)──────── sshd ── git-upload-pack / git-receive-pack ── any path
//! ```
//!
//! [`HttpsGit`] is nginx terminating TLS (a test CA made with the `openssl` CLI) in
//! front of the real `git http-backend` through fcgiwrap, every request behind HTTP
//! Basic auth; [`SshGit`] is Debian's OpenSSH `sshd` with host and client keys made
//! at test time. Both are the Debian packages `bash .ci/test` installs.
//!
//! Invariants: a constructor returns `Err(reason)` only when the machine lacks a tool
//! (the test prints `skipped: <reason>` and returns); a server that is there but does
//! not start panics with the tail of its logs. Each server owns its processes and its
//! temporary folder; `Drop` stops the processes (SIGTERM, then SIGKILL, then wait)
//! before the folder goes, also when a test panics.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rollgate::github::Secret;
use rollgate::source::remote::GitAuth;

use super::{copy_dir, free_port, git};

/// Starts a server, or prints why this machine cannot and ends the test. (Every test
/// binary compiles `support`; only some start servers.)
#[allow(unused_macros)]
macro_rules! start_or_skip {
    ($server:ty) => {{
        let started = std::time::Instant::now();
        match <$server>::start() {
            Ok(server) => {
                eprintln!("{} started in {:?}", stringify!($server), started.elapsed());
                server
            }
            Err(why) => {
                eprintln!("skipped: {why}");
                return;
            }
        }
    }};
}
#[allow(unused_imports)]
pub(crate) use start_or_skip;

/// rollgate's credentials for `server`: its token and user name, and the test CA.
pub fn https_auth(server: &HttpsGit) -> GitAuth {
    GitAuth {
        token: Secret::new(server.token.clone()),
        username: Some(server.username.clone()),
        ca_file: Some(server.ca_file.clone()),
        ..GitAuth::default()
    }
}

/// rollgate's credentials for `server`: the authorized key without a passphrase, and the
/// right known_hosts.
pub fn ssh_auth(server: &SshGit) -> GitAuth {
    GitAuth {
        ssh_key: Some(server.client_key.clone()),
        known_hosts: Some(server.known_hosts.clone()),
        ..GitAuth::default()
    }
}

/// How long a server may take to answer before its start counts as failed.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Starts retried when a port taken between `free_port` and the server's bind.
const PORT_RETRIES: usize = 3;

/// Smart HTTP(S) Git: nginx with TLS and Basic auth, `git http-backend` behind it.
///
/// Repositories are bare folders under `root`, served by name: make them with
/// [`HttpsGit::add_bare`] (or `git init --bare` / `git clone --bare` into `root`
/// yourself, then set `core.logAllRefUpdates=true` for a reflog). Pushes are allowed:
/// nginx passes `REMOTE_USER`, which turns on `git http-backend`'s receive-pack, and the
/// reflog of a push names `username <username@http.127.0.0.1>`.
#[derive(Debug)]
pub struct HttpsGit {
    /// The folder holding the bare repositories.
    pub root: PathBuf,
    /// The test CA that signed the server's certificate (for `http.sslCAInfo`).
    pub ca_file: PathBuf,
    /// A second CA that signed nothing of this server: a certificate error.
    pub other_ca_file: PathBuf,
    /// The Basic auth user (`rollgate-bot`).
    pub username: String,
    /// The Basic auth password, random per server.
    pub token: String,
    /// The TLS port on 127.0.0.1.
    pub port: u16,
    /// The plain-HTTP port on 127.0.0.1 (same repositories, same auth).
    pub http_port: u16,
    access_log: PathBuf,
    error_log: PathBuf,
    nginx: Daemon,
    fcgiwrap: Daemon,
    // Last: dropped after the daemons are stopped.
    dir: tempfile::TempDir,
}

impl HttpsGit {
    /// Generates the certificates and credentials, starts fcgiwrap and nginx, and
    /// returns once both ports answer. `Err` names a missing tool.
    pub fn start() -> Result<Self, String> {
        let nginx = find_binary("nginx", &["/usr/sbin/nginx"])
            .ok_or("no nginx binary (Debian package nginx-light)")?;
        let fcgiwrap = find_binary("fcgiwrap", &["/usr/sbin/fcgiwrap"])
            .ok_or("no fcgiwrap binary (Debian package fcgiwrap)")?;
        let openssl = find_binary("openssl", &["/usr/bin/openssl"])
            .ok_or("no openssl binary (Debian package openssl)")?;
        let backend = http_backend().ok_or("no git-http-backend in `git --exec-path`")?;

        let dir = tempfile::tempdir().expect("temp dir for the https git server");
        let d = dir.path().to_path_buf();
        let root = d.join("repos");
        std::fs::create_dir_all(&root).expect("repos folder");
        let tls = d.join("tls");
        std::fs::create_dir_all(&tls).expect("tls folder");
        make_ca(&openssl, &tls, "ca", "rollgate test CA");
        make_ca(&openssl, &tls, "other-ca", "rollgate unrelated test CA");
        make_server_cert(&openssl, &tls);

        let username = "rollgate-bot".to_owned();
        let token = random_hex();
        let hash = run(&openssl, &["passwd", "-apr1", &token], &d);
        let htpasswd = d.join("htpasswd");
        std::fs::write(&htpasswd, format!("{username}:{}\n", hash.trim())).expect("htpasswd");

        let socket = d.join("fcgiwrap.sock");
        let fcgiwrap = start_fcgiwrap(&fcgiwrap, &socket, &d);

        let mut last = String::new();
        for _ in 0..PORT_RETRIES {
            let (port, http_port) = (free_port(), free_port());
            let conf = NginxConf {
                dir: &d,
                root: &root,
                tls: &tls,
                htpasswd: &htpasswd,
                socket: &socket,
                backend: &backend,
                port,
                http_port,
                optional_temp_paths: nginx_temp_modules(&nginx),
            };
            let config = d.join("nginx.conf");
            std::fs::write(&config, conf.render()).expect("nginx.conf");
            let error_log = d.join("nginx-error.log");
            let stderr = d.join("nginx-stderr.log");
            let _ = std::fs::remove_file(&error_log);
            let mut cmd = Command::new(&nginx);
            cmd.arg("-p")
                .arg(&d)
                .arg("-c")
                .arg(&config)
                .arg("-e")
                .arg(&error_log);
            let mut daemon = Daemon::spawn("nginx", cmd, &stderr);
            let ports = [port, http_port];
            match daemon.wait_until(|| ports.iter().all(|p| answers(*p))) {
                Ok(()) => {
                    return Ok(Self {
                        root,
                        ca_file: tls.join("ca.crt"),
                        other_ca_file: tls.join("other-ca.crt"),
                        username,
                        token,
                        port,
                        http_port,
                        access_log: d.join("nginx-access.log"),
                        error_log,
                        nginx: daemon,
                        fcgiwrap,
                        dir,
                    });
                }
                Err(why) => {
                    daemon.stop();
                    last = format!(
                        "nginx did not start ({why})\n--- {}:\n{}\n--- {}:\n{}",
                        error_log.display(),
                        tail(&error_log),
                        stderr.display(),
                        tail(&stderr)
                    );
                    if !last.contains("Address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("{last}");
    }

    /// `https://127.0.0.1:PORT/<repo>`, without credentials.
    pub fn url(&self, repo: &str) -> String {
        format!("https://127.0.0.1:{}/{repo}", self.port)
    }

    /// `http://127.0.0.1:HTTP_PORT/<repo>`, without credentials (plain HTTP).
    pub fn http_url(&self, repo: &str) -> String {
        format!("http://127.0.0.1:{}/{repo}", self.http_port)
    }

    /// `https://rollgate-bot:TOKEN@127.0.0.1:PORT/<repo>`, for the `git` CLI.
    pub fn url_with_token(&self, repo: &str) -> String {
        format!(
            "https://{}:{}@127.0.0.1:{}/{repo}",
            self.username, self.token, self.port
        )
    }

    /// Makes the bare repository `root/<name>` (branch `main`, reflog on), seeded
    /// with one commit of the files in `seed_from` when given. Returns its path.
    pub fn add_bare(&self, name: &str, seed_from: Option<&Path>) -> PathBuf {
        make_bare(&self.root, name, seed_from)
    }

    /// nginx's access log: one line per request with the port, the request, the
    /// status, `user=$remote_user` and `auth=` the Authorization scheme (`none`,
    /// `basic`, `bearer`, `other`).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(&self.access_log).unwrap_or_default()
    }

    /// nginx's error log (failed auth attempts land here too).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(&self.error_log).unwrap_or_default()
    }

    /// The temporary folder holding the configuration, keys and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process ids of nginx and fcgiwrap.
    pub fn pids(&self) -> Vec<u32> {
        [&self.nginx, &self.fcgiwrap]
            .iter()
            .filter_map(|d| d.pid())
            .collect()
    }
}

impl Drop for HttpsGit {
    fn drop(&mut self) {
        self.nginx.stop();
        self.fcgiwrap.stop();
    }
}

/// Git over SSH: Debian's `sshd` on loopback, public-key auth only, as the current user.
///
/// Any repository on this machine is reachable by its absolute path; [`SshGit::add_bare`]
/// makes one under `root`. Two client keys are authorized: `client_key` (no
/// passphrase) and `passphrase_key` (its passphrase in `passphrase_file`, no newline).
#[derive(Debug)]
pub struct SshGit {
    /// The port on 127.0.0.1.
    pub port: u16,
    /// The login: the current user's name.
    pub user: String,
    /// A folder for bare repositories (`add_bare`), though any absolute path works.
    pub root: PathBuf,
    /// The server's ed25519 public host key.
    pub host_key_pub: PathBuf,
    /// `[127.0.0.1]:PORT ssh-ed25519 AAAA…`: the right key.
    pub known_hosts: PathBuf,
    /// The same host with another ed25519 key: a changed host key.
    pub wrong_known_hosts: PathBuf,
    /// An empty known_hosts file: an unknown host.
    pub empty_known_hosts: PathBuf,
    /// An authorized ed25519 private key without a passphrase.
    pub client_key: PathBuf,
    /// An authorized ed25519 private key with a passphrase.
    pub passphrase_key: PathBuf,
    /// The passphrase of `passphrase_key`, without a trailing newline.
    pub passphrase_file: PathBuf,
    /// The host key's fingerprint as `ssh-keygen -lf` prints it: `SHA256:…`.
    pub host_fingerprint: String,
    log: PathBuf,
    sshd: Daemon,
    // Last: dropped after sshd is stopped.
    dir: tempfile::TempDir,
}

impl SshGit {
    /// Generates the keys, starts `sshd -D -e` and returns once it sends its banner.
    /// `Err` names a missing tool.
    pub fn start() -> Result<Self, String> {
        let sshd = find_binary("sshd", &["/usr/sbin/sshd"])
            .ok_or("no sshd binary (Debian package openssh-server)")?;
        // sshd re-executes itself and so insists on an absolute path.
        let sshd = std::fs::canonicalize(&sshd).map_err(|e| format!("sshd: {e}"))?;
        let keygen = find_binary("ssh-keygen", &["/usr/bin/ssh-keygen"])
            .ok_or("no ssh-keygen binary (Debian package openssh-client)")?;
        find_binary("ssh", &["/usr/bin/ssh"])
            .ok_or("no ssh binary (Debian package openssh-client)")?;
        // sshd's privilege-separation folder; Debian's init scripts make it.
        if let Err(e) = std::fs::create_dir_all("/run/sshd") {
            return Err(format!("cannot create /run/sshd for sshd: {e}"));
        }

        let user = run(Path::new("id"), &["-un"], Path::new("/"))
            .trim()
            .to_owned();
        let dir = tempfile::tempdir().expect("temp dir for the ssh git server");
        let d = dir.path().to_path_buf();
        let root = d.join("repos");
        std::fs::create_dir_all(&root).expect("repos folder");

        let keygen_ed25519 = |name: &str, passphrase: &str| {
            let path = d.join(name);
            run(
                &keygen,
                &[
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    passphrase,
                    "-C",
                    &format!("rollgate-test-{name}"),
                    "-f",
                    path.to_str().expect("utf8 temp path"),
                ],
                &d,
            );
            path
        };
        let host_key = keygen_ed25519("host_ed25519", "");
        let other_host_key = keygen_ed25519("other_host_ed25519", "");
        let client_key = keygen_ed25519("client_ed25519", "");
        let passphrase = random_hex();
        let passphrase_key = keygen_ed25519("client_passphrase_ed25519", &passphrase);
        let passphrase_file = d.join("passphrase");
        std::fs::write(&passphrase_file, &passphrase).expect("passphrase file");

        let authorized_keys = d.join("authorized_keys");
        let authorized = [&client_key, &passphrase_key]
            .iter()
            .map(|k| read(&pub_of(k)))
            .collect::<String>();
        std::fs::write(&authorized_keys, authorized).expect("authorized_keys");

        let host_key_pub = pub_of(&host_key);
        let host_fingerprint = run(&keygen, &["-lf", host_key_pub.to_str().expect("utf8")], &d)
            .split_whitespace()
            .nth(1)
            .expect("ssh-keygen -lf prints a fingerprint")
            .to_owned();
        let empty_known_hosts = d.join("known_hosts_empty");
        std::fs::write(&empty_known_hosts, "").expect("empty known_hosts");

        let mut last = String::new();
        for _ in 0..PORT_RETRIES {
            let port = free_port();
            let known_line = |key: &Path| {
                let mut fields = read(&pub_of(key))
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>();
                fields.truncate(2);
                format!("[127.0.0.1]:{port} {}\n", fields.join(" "))
            };
            let known_hosts = d.join("known_hosts");
            std::fs::write(&known_hosts, known_line(&host_key)).expect("known_hosts");
            let wrong_known_hosts = d.join("known_hosts_wrong");
            std::fs::write(&wrong_known_hosts, known_line(&other_host_key))
                .expect("wrong known_hosts");

            let config = d.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\n\
                     ListenAddress 127.0.0.1\n\
                     HostKey {host_key}\n\
                     PidFile {pid}\n\
                     AuthorizedKeysFile {authorized_keys}\n\
                     StrictModes no\n\
                     PermitRootLogin prohibit-password\n\
                     PubkeyAuthentication yes\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     UsePAM no\n\
                     PrintMotd no\n\
                     AcceptEnv GIT_PROTOCOL\n\
                     LogLevel VERBOSE\n",
                    host_key = host_key.display(),
                    pid = d.join("sshd.pid").display(),
                    authorized_keys = authorized_keys.display(),
                ),
            )
            .expect("sshd_config");
            let log = d.join("sshd.log");
            let mut cmd = Command::new(&sshd);
            cmd.arg("-D").arg("-e").arg("-f").arg(&config);
            let mut daemon = Daemon::spawn("sshd", cmd, &log);
            match daemon.wait_until(|| sends_ssh_banner(port)) {
                Ok(()) => {
                    return Ok(Self {
                        port,
                        user,
                        root,
                        host_key_pub,
                        known_hosts,
                        wrong_known_hosts,
                        empty_known_hosts,
                        client_key,
                        passphrase_key,
                        passphrase_file,
                        host_fingerprint,
                        log,
                        sshd: daemon,
                        dir,
                    });
                }
                Err(why) => {
                    daemon.stop();
                    last = format!(
                        "sshd did not start ({why})\n--- {}:\n{}",
                        log.display(),
                        tail(&log)
                    );
                    if !last.contains("Address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("{last}");
    }

    /// `ssh://USER@127.0.0.1:PORT/abs/path`; a relative `repo` is taken under `root`.
    pub fn url(&self, repo: impl AsRef<Path>) -> String {
        let path = self.root.join(repo.as_ref());
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            path.display()
        )
    }

    /// A `GIT_SSH_COMMAND` that logs in with `key` and trusts only `known_hosts`,
    /// never prompting: `ssh -i KEY -o IdentitiesOnly=yes -o BatchMode=yes
    /// -o StrictHostKeyChecking=yes -o UserKnownHostsFile=KNOWN_HOSTS`.
    pub fn ssh_command(&self, key: &Path, known_hosts: &Path) -> String {
        format!(
            "ssh -i {} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={}",
            key.display(),
            known_hosts.display()
        )
    }

    /// Makes the bare repository `root/<name>` (branch `main`, reflog on), seeded
    /// with one commit of the files in `seed_from` when given. Returns its path.
    pub fn add_bare(&self, name: &str, seed_from: Option<&Path>) -> PathBuf {
        make_bare(&self.root, name, seed_from)
    }

    /// sshd's log (`-e`, LogLevel VERBOSE): accepted keys, refused logins.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The temporary folder holding the configuration, keys and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id of sshd (not of its per-connection children).
    pub fn pids(&self) -> Vec<u32> {
        self.sshd.pid().into_iter().collect()
    }
}

impl Drop for SshGit {
    fn drop(&mut self) {
        self.sshd.stop();
    }
}

/// A server process with its stderr in a log file; stopped on drop.
#[derive(Debug)]
struct Daemon {
    name: &'static str,
    child: Option<Child>,
}

impl Daemon {
    fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> Self {
        let out = std::fs::File::create(log).expect("server log file");
        let err = out.try_clone().expect("server log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Self {
            name,
            child: Some(child),
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Polls `ready` until it holds; `Err` when the process exits or time runs out.
    fn wait_until(&mut self, mut ready: impl FnMut() -> bool) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("{} exited: {status}", self.name));
            }
            if ready() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{} not ready after {START_TIMEOUT:?}", self.name));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, up to three seconds' grace, then SIGKILL; always reaped.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

struct NginxConf<'a> {
    dir: &'a Path,
    root: &'a Path,
    tls: &'a Path,
    htpasswd: &'a Path,
    socket: &'a Path,
    backend: &'a Path,
    port: u16,
    http_port: u16,
    optional_temp_paths: Vec<&'static str>,
}

impl NginxConf<'_> {
    fn render(&self) -> String {
        let d = self.dir.display();
        let user = if is_root() { "user root;\n" } else { "" };
        let temp_paths = ["client_body", "fastcgi"]
            .iter()
            .chain(&self.optional_temp_paths)
            .map(|m| format!("    {m}_temp_path {d}/tmp-{m};\n"))
            .collect::<String>();
        let git = format!(
            "        auth_basic \"rollgate test git\";\n\
             \x20       auth_basic_user_file {htpasswd};\n\
             \x20       client_max_body_size 0;\n\
             \x20       location / {{\n\
             \x20           fastcgi_pass unix:{socket};\n\
             \x20           fastcgi_param SCRIPT_FILENAME {backend};\n\
             \x20           fastcgi_param PATH_INFO $uri;\n\
             \x20           fastcgi_param QUERY_STRING $query_string;\n\
             \x20           fastcgi_param REQUEST_METHOD $request_method;\n\
             \x20           fastcgi_param CONTENT_TYPE $content_type;\n\
             \x20           fastcgi_param CONTENT_LENGTH $content_length;\n\
             \x20           fastcgi_param REMOTE_ADDR $remote_addr;\n\
             \x20           fastcgi_param REMOTE_USER $remote_user;\n\
             \x20           fastcgi_param SERVER_PROTOCOL $server_protocol;\n\
             \x20           fastcgi_param GATEWAY_INTERFACE CGI/1.1;\n\
             \x20           fastcgi_param GIT_PROJECT_ROOT {root};\n\
             \x20           fastcgi_param GIT_HTTP_EXPORT_ALL 1;\n\
             \x20       }}\n",
            htpasswd = self.htpasswd.display(),
            socket = self.socket.display(),
            backend = self.backend.display(),
            root = self.root.display(),
        );
        format!(
            "{user}daemon off;\n\
             master_process off;\n\
             worker_processes 1;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/nginx-error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n\
             \x20   map $http_authorization $auth_scheme {{\n\
             \x20       \"\" none;\n\
             \x20       \"~*^basic \" basic;\n\
             \x20       \"~*^bearer \" bearer;\n\
             \x20       default other;\n\
             \x20   }}\n\
             \x20   log_format git '$server_port \"$request\" $status user=$remote_user auth=$auth_scheme';\n\
             \x20   access_log {d}/nginx-access.log git;\n\
             {temp_paths}\
             \x20   server {{\n\
             \x20       listen 127.0.0.1:{port} ssl;\n\
             \x20       ssl_certificate {tls}/server.crt;\n\
             \x20       ssl_certificate_key {tls}/server.key;\n\
             {git}\
             \x20   }}\n\
             \x20   server {{\n\
             \x20       listen 127.0.0.1:{http_port};\n\
             {git}\
             \x20   }}\n\
             }}\n",
            port = self.port,
            http_port = self.http_port,
            tls = self.tls.display(),
        )
    }
}

/// The temp-path directives this nginx knows beyond client_body and fastcgi: each
/// compiled-in module would otherwise make its folder under /var/lib/nginx.
fn nginx_temp_modules(nginx: &Path) -> Vec<&'static str> {
    let out = Command::new(nginx).arg("-V").output().expect("nginx -V");
    let build = String::from_utf8_lossy(&out.stderr).into_owned();
    ["proxy", "uwsgi", "scgi"]
        .into_iter()
        .filter(|m| !build.contains(&format!("--without-http_{m}_module")))
        .collect()
}

fn start_fcgiwrap(fcgiwrap: &Path, socket: &Path, dir: &Path) -> Daemon {
    let log = dir.join("fcgiwrap.log");
    let mut cmd = Command::new(fcgiwrap);
    // One process (no -c): it serves requests one after another, which Git's
    // request-response protocol over HTTP is happy with.
    cmd.arg("-s").arg(format!("unix:{}", socket.display()));
    let mut daemon = Daemon::spawn("fcgiwrap", cmd, &log);
    if let Err(why) = daemon.wait_until(|| std::os::unix::net::UnixStream::connect(socket).is_ok())
    {
        daemon.stop();
        panic!(
            "fcgiwrap did not start ({why})\n--- {}:\n{}",
            log.display(),
            tail(&log)
        );
    }
    daemon
}

/// A self-signed CA `<name>.key` + `<name>.crt` in `dir`.
fn make_ca(openssl: &Path, dir: &Path, name: &str, cn: &str) {
    let cnf = dir.join(format!("{name}.cnf"));
    std::fs::write(
        &cnf,
        format!(
            "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = {cn}\n\
             [v3_ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
             subjectKeyIdentifier = hash\n"
        ),
    )
    .expect("ca openssl config");
    let s = |p: PathBuf| p.to_str().expect("utf8 temp path").to_owned();
    run(
        openssl,
        &[
            "req",
            "-x509",
            "-config",
            &s(cnf),
            "-extensions",
            "v3_ca",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "3",
            "-keyout",
            &s(dir.join(format!("{name}.key"))),
            "-out",
            &s(dir.join(format!("{name}.crt"))),
        ],
        dir,
    );
}

/// `server.key` + `server.crt` for 127.0.0.1 and localhost, signed by `ca`.
fn make_server_cert(openssl: &Path, dir: &Path) {
    let cnf = dir.join("server.cnf");
    std::fs::write(
        &cnf,
        "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = 127.0.0.1\n\
         [v3_server]\nbasicConstraints = critical,CA:FALSE\n\
         keyUsage = critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("server openssl config");
    let s = |p: PathBuf| p.to_str().expect("utf8 temp path").to_owned();
    run(
        openssl,
        &[
            "req",
            "-new",
            "-config",
            &s(cnf.clone()),
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &s(dir.join("server.key")),
            "-out",
            &s(dir.join("server.csr")),
        ],
        dir,
    );
    run(
        openssl,
        &[
            "x509",
            "-req",
            "-in",
            &s(dir.join("server.csr")),
            "-CA",
            &s(dir.join("ca.crt")),
            "-CAkey",
            &s(dir.join("ca.key")),
            "-CAcreateserial",
            "-days",
            "3",
            "-extfile",
            &s(cnf),
            "-extensions",
            "v3_server",
            "-out",
            &s(dir.join("server.crt")),
        ],
        dir,
    );
}

fn make_bare(root: &Path, name: &str, seed_from: Option<&Path>) -> PathBuf {
    let bare = root.join(name);
    let path = bare.to_str().expect("utf8 repo path");
    git(root, &["init", "-q", "--bare", "-b", "main", path]);
    git(&bare, &["config", "core.logAllRefUpdates", "true"]);
    if let Some(folder) = seed_from {
        let work = tempfile::tempdir().expect("seed work dir");
        let w = work.path();
        git(w, &["init", "-q", "-b", "main"]);
        copy_dir(folder, w);
        git(w, &["add", "-A"]);
        git(w, &["commit", "-q", "-m", "Seed the GitOps repository"]);
        git(w, &["push", "-q", path, "main"]);
    }
    bare
}

/// The `git http-backend` program next to this `git`.
fn http_backend() -> Option<PathBuf> {
    let out = Command::new("git").arg("--exec-path").output().ok()?;
    let exec = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let backend = Path::new(&exec).join("git-http-backend");
    backend.is_file().then_some(backend)
}

fn find_binary(name: &str, fallbacks: &[&str]) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .chain(fallbacks.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    run(Path::new("id"), &["-u"], Path::new("/")).trim() == "0"
}

/// Runs a setup command; panics with its output when it fails.
fn run(program: &Path, args: &[&str], dir: &Path) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{} runs: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn answers(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// sshd accepts and sends `SSH-2.0-…`: it has loaded its keys and configuration.
fn sends_ssh_banner(port: u16) -> bool {
    let Ok(stream) = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("SSH-2.0-")
}

fn pub_of(key: &Path) -> PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The last lines of a log file, for a failed start.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines = text.lines().collect::<Vec<_>>();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// 32 hex digits from the standard library's per-process random hash keys.
fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    (0..2)
        .map(|i| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(i);
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or_default(),
            );
            format!("{:016x}", h.finish())
        })
        .collect()
}
