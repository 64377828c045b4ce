//! The dashboard's pure parts: forge links, URL pieces, and hostile text as text.

use super::render::{self, path_segment};
use super::routes::query_param;
use super::*;

#[test]
fn commit_links_only_for_github_and_gitlab_and_never_with_userinfo() {
    let gh = Some("https://github.com/acme/deploys/commit/".to_owned());
    assert_eq!(commit_base("https://github.com/acme/deploys.git"), gh);
    assert_eq!(
        commit_base("https://x-access-token:s3cret@github.com/acme/deploys"),
        gh
    );
    assert_eq!(commit_base("git@github.com:acme/deploys.git"), gh);
    assert_eq!(commit_base("ssh://git@github.com/acme/deploys.git"), gh);
    assert_eq!(
        commit_base("https://gitlab.com/group/sub/deploys.git"),
        Some("https://gitlab.com/group/sub/deploys/-/commit/".to_owned())
    );
    assert_eq!(commit_base("/srv/git/deploys.git"), None);
    assert_eq!(commit_base("https://example.com/acme/deploys"), None);
    assert_eq!(commit_base("https://github.com/acme/\"><script>"), None);
    assert_eq!(commit_base("https://github.com/../x"), None);
}

#[test]
fn url_pieces_round_trip() {
    assert_eq!(path_segment("a b/<c>"), "a%20b%2F%3Cc%3E");
    assert_eq!(
        query_param(Some("x=1&label=team%3Dpay+ments"), "label").as_deref(),
        Some("team=pay ments")
    );
    assert_eq!(
        query_param(Some("label=%zz%4"), "label").as_deref(),
        Some("%zz%4")
    );
    assert_eq!(query_param(None, "label"), None);
}

fn hostile_board() -> Board {
    let evil = r#"<script>window.__pwned=1</script>"'&"#;
    let mut story = crate::timeline::tests::Story::new(evil)
        .to(0, "Progressing", "1/2", 5, "x")
        .to(5, "Held", "1/2", 5, evil)
        .verdict(&format!("inconclusive {evil} value=none n=0 ({evil})"));
    story.entries[0].subject = evil.to_owned();
    let mut status = crate::model::status::Status::pending(evil, evil, &"a".repeat(40));
    status.hold = Some(crate::model::status::Hold {
        kind: crate::model::status::HoldKind::Evidence,
        reason: evil.to_owned(),
    });
    Board {
        head: "b".repeat(40),
        branch: Some(evil.to_owned()),
        plans: vec![PlanView {
            name: evil.to_owned(),
            labels: [(evil.to_owned(), evil.to_owned())].into_iter().collect(),
            status: Some(status),
            last_verdict: story.entries[1].verdicts.last().cloned(),
            entries: story.entries,
        }],
        commit_base: Some("https://github.com/acme/deploys/commit/".to_owned()),
    }
}

#[test]
fn hostile_names_labels_and_reasons_render_as_text() {
    let board = hostile_board();
    let evil = &board.plans[0].name;
    let overview = render::overview(&board, Some(&format!("{evil}={evil}")), 100);
    let plan = render::plan_page(&board, evil, None, 100).expect("the plan's page");
    for page in [&overview, &plan] {
        // One script tag, the page's own, and no raw markup from Git.
        assert_eq!(page.matches("<script").count(), 1, "{page}");
        assert!(
            page.contains("&lt;script&gt;window.__pwned=1&lt;/script&gt;"),
            "{page}"
        );
        assert!(!page.contains("\"'&\""), "{page}");
    }
    assert!(
        overview.contains("/plans/%3Cscript%3Ewindow.__pwned"),
        "{overview}"
    );
    assert!(
        plan.contains(r#"<a href="https://github.com/acme/deploys/commit/c0ffee"#),
        "{plan}"
    );
    assert!(plan.contains(r#"class="verdict inconclusive""#), "{plan}");
}

#[test]
fn the_label_filter_keeps_matching_plans() {
    let mut board = hostile_board();
    let mut other = board.plans[0].clone();
    other.name = "checkout".to_owned();
    other.labels = [("team".to_owned(), "payments".to_owned())]
        .into_iter()
        .collect();
    board.plans.push(other);
    let only = render::overview_fragment(&board, Some("team=payments"), 0);
    assert_eq!(only.matches(r#"<tr class="plan""#).count(), 1, "{only}");
    assert!(only.contains(r#"data-plan="checkout""#));
    let all = render::overview_fragment(&board, None, 0);
    assert_eq!(all.matches(r#"<tr class="plan""#).count(), 2);
    assert!(
        all.contains(r#"<option value="team=payments">team=payments</option>"#),
        "{all}"
    );
}

#[test]
fn ages_read_like_people_say_them() {
    assert_eq!(render::age(-5), "0s");
    assert_eq!(render::age(59), "59s");
    assert_eq!(render::age(250), "4m 10s");
    assert_eq!(render::age(3 * 3600 + 240), "3h 4m");
    assert_eq!(render::age(90000), "1d 1h");
}

/// A board that never changes: the seam the routes are tested through.
#[derive(Debug)]
struct Fixed(Arc<Board>);

impl BoardSource for Fixed {
    fn board(&self) -> Result<Arc<Board>> {
        Ok(self.0.clone())
    }
}

/// The status line and headers of a raw request.
fn raw(addr: std::net::SocketAddr, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(request.as_bytes()).expect("send");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn the_routes_serve_pages_fragments_and_assets_read_only_with_a_strict_policy() {
    let server = serve(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        Arc::new(Fixed(Arc::new(hostile_board()))),
    )
    .expect("listens");
    let get = |path: &str| {
        raw(
            server.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
    };
    let home = get("/");
    assert!(home.starts_with("HTTP/1.1 200"), "{home}");
    assert!(
        home.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{home}"
    );
    assert!(home.contains("x-content-type-options: nosniff"), "{home}");
    assert!(!home.contains("<script>window"), "{home}");
    let fragment = get("/fragment/overview");
    assert!(fragment.starts_with("HTTP/1.1 200"), "{fragment}");
    assert!(!fragment.contains("<html"), "{fragment}");
    let name = path_segment(&hostile_board().plans[0].name);
    for path in [
        format!("/plans/{name}"),
        format!("/fragment/plans/{name}"),
        format!("/plans/{name}/timeline.svg"),
        "/assets/dashboard.js".to_owned(),
        "/assets/dashboard.css".to_owned(),
    ] {
        let answer = get(&path);
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
    }
    assert!(get("/plans/nope").starts_with("HTTP/1.1 404"));
    assert!(get(&format!("/plans/{name}/timeline.svg")).contains("content-type: image/svg+xml"));
    // Nothing takes a write.
    let post = raw(
        server.addr,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    );
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
}

/// Commit `files` on `main` of `repo` with `message`.
fn commit(repo: &git2::Repository, files: &[(&str, &str)], message: &str) -> git2::Oid {
    let sig = git2::Signature::new("t", "t@example.com", &git2::Time::new(1_764_930_000, 0))
        .expect("signature");
    let parent = repo
        .find_reference("refs/heads/main")
        .ok()
        .and_then(|r| r.peel_to_commit().ok());
    let mut index = git2::Index::new().expect("index");
    if let Some(p) = &parent {
        index.read_tree(&p.tree().expect("tree")).expect("read");
    }
    for (path, text) in files {
        let blob = repo.blob(text.as_bytes()).expect("blob");
        let mut entry = git2::IndexEntry {
            ctime: git2::IndexTime::new(0, 0),
            mtime: git2::IndexTime::new(0, 0),
            dev: 0,
            ino: 0,
            mode: 0o100644,
            uid: 0,
            gid: 0,
            file_size: 0,
            id: blob,
            flags: 0,
            flags_extended: 0,
            path: path.as_bytes().to_vec(),
        };
        entry.flags = u16::try_from(path.len()).unwrap_or(0xfff).min(0xfff);
        index.add(&entry).expect("add");
    }
    let tree = repo
        .find_tree(index.write_tree_to(repo).expect("tree"))
        .expect("tree");
    let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
    repo.commit(
        Some("refs/heads/main"),
        &sig,
        &sig,
        message,
        &tree,
        &parents,
    )
    .expect("commit")
}

#[test]
fn a_git_board_reads_plans_labels_statuses_and_history_and_follows_the_head() {
    // Given a repository with a labelled plan, its status and one status commit
    let dir = tempfile::tempdir().expect("tmp");
    let repo = git2::Repository::init_bare(dir.path()).expect("init");
    repo.set_head("refs/heads/main").expect("head");
    let mut status = crate::model::status::Status::pending("web", "v2", &"a".repeat(40));
    status.phase = crate::model::status::Phase::Progressing;
    status.weight = 25;
    commit(
        &repo,
        &[
            (
                "plans/web.yaml",
                "apiVersion: rollgate.dev/v1alpha1\nkind: RolloutPlan\nmetadata: { name: web, labels: { team: payments, tier: critical } }\nspec: {}\n",
            ),
            ("plans/broken.yaml", ": not yaml ["),
            ("status/web.yaml", &status.to_yaml().expect("yaml")),
        ],
        &format!(
            "web: Progressing step 2/3 at 25% (v2)\n\nRollgate-Plan: web\nRollgate-Revision: {}\nRollgate-Phase: Progressing\nRollgate-Step: 2/3\nRollgate-Weight: 25\nRollgate-Verdict: pass success-rate value=1 min=0.9 n=50\nRollgate-Reason: analysis passed",
            "a".repeat(40)
        ),
    );
    let source = GitBoard::open(&dir.path().to_string_lossy(), Some("main")).expect("open");
    let board = source.board().expect("board");
    // Then every plan file has a row, the labelled one with its status and last verdict
    let names: Vec<&str> = board.plans.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["broken", "web"]);
    let web = board.plan("web").expect("web");
    assert_eq!(web.labels.get("tier").map(String::as_str), Some("critical"));
    assert_eq!(web.status.as_ref().map(|s| s.weight), Some(25));
    assert_eq!(
        web.last_verdict.as_deref(),
        Some("pass success-rate value=1 min=0.9 n=50")
    );
    assert_eq!(web.entries.len(), 1);
    // And the same board is served until the head moves
    assert!(Arc::ptr_eq(&board, &source.board().expect("again")));
    commit(&repo, &[("README.md", "hello\n")], "A human commit");
    let moved = source.board().expect("moved");
    assert!(!Arc::ptr_eq(&board, &moved));
    assert_ne!(moved.head, board.head);
}
