//! The `get_server_info` Leptos server function: what the server says about itself (resume
//! window, demo, admin protection), shown in the app's footer.

use crate::protocol::ServerInfo;
use leptos::prelude::*;

/// How the server hands its live state to the server function: the server crate provides
/// this through Leptos context, so this crate needs no dependency on the server's types.
#[cfg(feature = "ssr")]
#[derive(Clone)]
pub struct InfoSource(pub std::sync::Arc<dyn Fn() -> ServerInfo + Send + Sync>);

#[server(endpoint = "info")]
pub async fn get_server_info() -> Result<ServerInfo, ServerFnError> {
    let source = use_context::<InfoSource>()
        .ok_or_else(|| ServerFnError::new("server info is not available"))?;
    Ok((source.0)())
}
