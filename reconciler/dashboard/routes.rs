//! The dashboard's routes (axum, GET only) and the embedded assets.
//!
//! Invariants: no route writes or takes a body; the board is read off the async
//! runtime (`spawn_blocking`, git2 blocks); every answer carries a Content-Security-
//! Policy that allows only this origin's script and style, so even markup that slipped
//! through could run nothing; an error says only that the repository could not be read
//! (the cause goes to the log).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{Board, BoardSource, render};

const CSS: &str = include_str!("assets/dashboard.css");
const JS: &str = include_str!("assets/dashboard.js");

type Source = Arc<dyn BoardSource>;

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn with_headers(content_type: &'static str, body: String, status: StatusCode) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn html(body: String) -> Response {
    with_headers("text/html; charset=utf-8", body, StatusCode::OK)
}

fn not_found() -> Response {
    with_headers(
        "text/plain; charset=utf-8",
        "no such plan\n".to_owned(),
        StatusCode::NOT_FOUND,
    )
}

async fn board(source: Source) -> Result<Arc<Board>, Response> {
    let read = tokio::task::spawn_blocking(move || source.board()).await;
    match read {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            tracing::warn!(error = %format!("{e:#}"), "the dashboard cannot read the repository");
            Err(with_headers(
                "text/plain; charset=utf-8",
                "cannot read the repository (see the log)\n".to_owned(),
                StatusCode::SERVICE_UNAVAILABLE,
            ))
        }
        Err(_) => Err(with_headers(
            "text/plain; charset=utf-8",
            "internal error\n".to_owned(),
            StatusCode::INTERNAL_SERVER_ERROR,
        )),
    }
}

/// `key`'s value in a query string, percent-decoded (`+` is a space, as forms send it).
pub fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k) == key).then(|| decode(v))
    })
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                match (
                    bytes.get(i + 1).and_then(|&b| hex(b)),
                    bytes.get(i + 2).and_then(|&b| hex(b)),
                ) {
                    (Some(h), Some(l)) => {
                        out.push(h * 16 + l);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn rollout(uri: &Uri) -> Option<usize> {
    query_param(uri.query(), "rollout").and_then(|n| n.parse().ok())
}

async fn overview(State(source): State<Source>, uri: Uri) -> Response {
    let label = query_param(uri.query(), "label");
    match board(source).await {
        Ok(b) => html(render::overview(&b, label.as_deref(), now())),
        Err(r) => r,
    }
}

async fn overview_fragment(State(source): State<Source>, uri: Uri) -> Response {
    let label = query_param(uri.query(), "label");
    match board(source).await {
        Ok(b) => html(render::overview_fragment(&b, label.as_deref(), now())),
        Err(r) => r,
    }
}

async fn plan(State(source): State<Source>, Path(name): Path<String>, uri: Uri) -> Response {
    match board(source).await {
        Ok(b) => render::plan_page(&b, &name, rollout(&uri), now()).map_or_else(not_found, html),
        Err(r) => r,
    }
}

async fn plan_fragment(
    State(source): State<Source>,
    Path(name): Path<String>,
    uri: Uri,
) -> Response {
    match board(source).await {
        Ok(b) => {
            render::plan_fragment(&b, &name, rollout(&uri), now()).map_or_else(not_found, html)
        }
        Err(r) => r,
    }
}

async fn timeline_svg(
    State(source): State<Source>,
    Path(name): Path<String>,
    uri: Uri,
) -> Response {
    let b = match board(source).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(p) = b.plan(&name) else {
        return not_found();
    };
    match crate::timeline::for_plan(&p.entries, &p.name, rollout(&uri)) {
        Ok(t) => with_headers(
            "image/svg+xml",
            crate::timeline::svg::render(&t),
            StatusCode::OK,
        ),
        Err(_) => not_found(),
    }
}

async fn css() -> Response {
    with_headers("text/css; charset=utf-8", CSS.to_owned(), StatusCode::OK)
}

async fn js() -> Response {
    with_headers(
        "text/javascript; charset=utf-8",
        JS.to_owned(),
        StatusCode::OK,
    )
}

/// The dashboard's routes over `source`, to merge into the daemon's server.
pub fn router(source: Source) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/fragment/overview", get(overview_fragment))
        .route("/plans/{name}", get(plan))
        .route("/plans/{name}/timeline.svg", get(timeline_svg))
        .route("/fragment/plans/{name}", get(plan_fragment))
        .route("/assets/dashboard.css", get(css))
        .route("/assets/dashboard.js", get(js))
        .with_state(source)
}

/// `rollgate dashboard`: the dashboard alone (plus `/healthz`, `/readyz`, `/metrics`).
pub fn serve(addr: std::net::SocketAddr, source: Source) -> std::io::Result<crate::server::Server> {
    let health = Arc::new(crate::server::Health::default());
    health.set(Ok(()));
    crate::server::start_with(addr, health, Some(router(source)))
}
