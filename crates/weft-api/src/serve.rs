//! The REST API on a bound listener, plain or TLS, until shutdown: open requests then get a
//! bounded time to finish. What else a `weft server` process runs is wired by weft-server.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::{AppState, router, tls};

/// How long open requests may take to finish once shutdown begins.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("{context}: {source}")]
    Io { context: &'static str, source: std::io::Error },
}

/// Serves `state`'s API on `listener` until `shutdown` completes; watch streams end then, and
/// open requests get [`DRAIN_TIMEOUT`] before they are dropped.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    tls: Option<&tls::TlsFiles>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let local = listener.local_addr().map_err(|source| ServeError::Io { context: "local address", source })?;
    let app = router(state.clone());
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(address = %format!("{scheme}://{local}"), "REST API listening");
    let signal = {
        let state = state.clone();
        async move {
            shutdown.await;
            state.begin_shutdown();
        }
    };
    let serving = async {
        match tls {
            Some(files) => {
                let listener = tls::TlsListener::new(listener, files)?;
                axum::serve(listener, app)
                    .with_graceful_shutdown(signal)
                    .await
                    .map_err(|source| ServeError::Io { context: "serving HTTPS", source })
            }
            None => {
                let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| crate::no_delay(tcp));
                axum::serve(listener, app)
                    .with_graceful_shutdown(signal)
                    .await
                    .map_err(|source| ServeError::Io { context: "serving HTTP", source })
            }
        }
    };
    let drain_expired = async {
        state.stopped().await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    tokio::select! {
        served = serving => served,
        _ = drain_expired => {
            tracing::warn!("open requests did not finish within {DRAIN_TIMEOUT:?}; stopping anyway");
            Ok(())
        }
    }
}
