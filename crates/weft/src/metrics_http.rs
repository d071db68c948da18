//! `GET /metrics` for the processes without a REST API of their own (agent, kube-manager):
//! a listener of its own, `--metrics-listen`.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use axum::http::header;
use axum::routing::get;

/// Serves `render`'s text at `/metrics` on `addr`, in the background.
pub async fn serve<F, Fut>(addr: SocketAddr, render: F) -> anyhow::Result<()>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = String> + Send + 'static,
{
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen for metrics on {addr}"))?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let render = render.clone();
            async move {
                ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], render().await)
            }
        }),
    );
    // The bound address: with port 0, the one the kernel chose.
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!(address = %bound, "metrics listening");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics listener stopped");
        }
    });
    Ok(())
}
