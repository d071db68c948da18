//! What `weft-cni` does with one call: answer VERSION itself, forward everything else to the
//! node's agent and print its answer, and, when the agent cannot be reached, answer as the
//! runtime needs — ADD and CHECK "try again later" (11), STATUS "not available" (50), and DEL
//! queued for the agent to replay when it is back, with success: a runtime never retries a
//! failed DEL, and a failing DEL blocks the pod's teardown (cilium#8313, #22067).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::http;
use crate::spec::{CniError, Command, Request, VersionInfo, code};

/// The agent's socket when the configuration names none.
pub const DEFAULT_SOCKET: &str = "/run/weft/cni.sock";
/// Where the agent answers calls.
pub const CNI_PATH: &str = "/v1/cni";
/// How long ADD waits for the pod's port when the configuration does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The time the agent may take beyond ADD's own wait before the plugin stops listening.
const ANSWER_MARGIN: Duration = Duration::from_secs(15);

/// What the plugin prints and whether it succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: Vec<u8>,
    pub success: bool,
}

impl Outcome {
    fn ok(stdout: Vec<u8>) -> Outcome {
        Outcome { stdout, success: true }
    }

    fn error(e: &CniError) -> Outcome {
        Outcome { stdout: e.to_json(), success: false }
    }
}

/// Handles one call: `env` answers the CNI_* variables, `stdin` is what the runtime piped.
pub fn run(env: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    let request = match Request::from_env(env, stdin) {
        Ok(r) => r,
        Err(e) => return Outcome::error(&e),
    };
    if request.command == Command::Version {
        let asked = request.config.get("cniVersion").and_then(|v| v.as_str());
        return Outcome::ok(serde_json::to_vec(&VersionInfo::answering(asked)).unwrap_or_default());
    }
    let socket = socket_of(&request);
    let timeout =
        request.config.get("timeoutSeconds").and_then(|v| v.as_u64()).map_or(DEFAULT_TIMEOUT, Duration::from_secs)
            + ANSWER_MARGIN;
    let body = serde_json::to_vec(&request).unwrap_or_default();
    match http::post(&socket, CNI_PATH, &body, timeout) {
        Ok(answer) if answer.status == 200 => Outcome::ok(answer.body),
        Ok(answer) => match serde_json::from_slice::<CniError>(&answer.body) {
            Ok(_) => Outcome { stdout: answer.body, success: false },
            Err(_) => Outcome::error(
                &CniError::new(
                    code::IO_FAILURE,
                    format!(
                        "the weft agent answered {}: {}",
                        answer.status,
                        String::from_utf8_lossy(&answer.body).chars().take(400).collect::<String>()
                    ),
                )
                .in_version(request.version()),
            ),
        },
        Err(e) => unreachable_agent(&request, &socket, &e),
    }
}

fn unreachable_agent(request: &Request, socket: &Path, cause: &std::io::Error) -> Outcome {
    let why = format!("the weft agent is not reachable at {}: {cause}", socket.display());
    let version = request.version();
    match request.command {
        Command::Del => match queue_delete(request, socket) {
            Ok(_) => Outcome::ok(Vec::new()),
            Err(e) => Outcome::error(
                &CniError::new(code::IO_FAILURE, format!("{why}, and the DEL cannot be queued for it: {e}"))
                    .in_version(version),
            ),
        },
        Command::Status => Outcome::error(&CniError::new(code::NOT_AVAILABLE, why).in_version(version)),
        _ => Outcome::error(&CniError::new(code::TRY_AGAIN_LATER, why).in_version(version)),
    }
}

/// The agent's socket: the configuration's `socket`, else the default.
pub fn socket_of(request: &Request) -> PathBuf {
    PathBuf::from(request.config.get("socket").and_then(|v| v.as_str()).unwrap_or(DEFAULT_SOCKET))
}

/// Where DELs wait while the agent is away: `cni-queue` beside its socket.
pub fn queue_dir(socket: &Path) -> PathBuf {
    socket.parent().unwrap_or(Path::new("/")).join("cni-queue")
}

/// Writes a DEL into the queue, named by its attachment (a second DEL of it replaces the
/// first), whole or not at all (written aside, then renamed).
pub fn queue_delete(request: &Request, socket: &Path) -> std::io::Result<PathBuf> {
    let dir = queue_dir(socket);
    std::fs::create_dir_all(&dir)?;
    // from_env checked both: neither holds a `/` or a `:`, so names never collide.
    let name = format!(
        "{}:{}.json",
        request.container_id.as_deref().unwrap_or("none"),
        request.ifname.as_deref().unwrap_or("none")
    );
    let path = dir.join(&name);
    let partial = dir.join(format!(".{name}.{}", std::process::id()));
    std::fs::write(&partial, serde_json::to_vec(request).unwrap_or_default())?;
    std::fs::rename(&partial, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests;
