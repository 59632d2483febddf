//! The control socket of a running mount: an abstract Unix socket whose name derives from
//! the mount point, so that `spackfs status MOUNTPOINT` finds it with no file to place or
//! clean up. It answers `status` with the mount's status as JSON. Only the mount's owner
//! and root may use it: the server checks its peer's credentials, and the client checks
//! that the server is the mount's owner (or root), so that no other user can answer in the
//! mount's name.

use std::os::linux::net::SocketAddrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::status::Status;
use crate::buildcache::checksum::Sha256;
use crate::catalog::live::LiveCatalog;
use crate::fs::FsCore;

/// How long one side waits for the other.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The longest request line.
const MAX_REQUEST: u64 = 256;
/// The longest answer a client reads.
const MAX_ANSWER: u64 = 64 << 20;

/// Errors of the control socket, naming the mount.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{mount} is not a spackfs mount")]
    NotSpackfs { mount: PathBuf },
    #[error("cannot reach the daemon of {mount} on its control socket: {source}")]
    Connect {
        mount: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the control socket of {mount} is held by uid {server}, not by the mount's owner (uid {owner}) or root: not trusting it")]
    Impostor {
        mount: PathBuf,
        server: u32,
        owner: u32,
    },
    #[error("the daemon of {mount} refused: {message}")]
    Refused { mount: PathBuf, message: String },
    #[error("the daemon of {mount} gave an unreadable answer: {message}")]
    Protocol { mount: PathBuf, message: String },
    #[error("cannot open the control socket of {mount}: {source}")]
    Bind {
        mount: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The abstract socket name of the mount at `mount` (an absolute, canonical path).
pub fn socket_name(mount: &Path) -> String {
    let digest = Sha256::of(mount.as_os_str().as_encoded_bytes()).hex();
    format!("spackfs/{}", &digest[..32])
}

/// Serve the control socket of the mount at `mount` until the runtime ends.
pub fn serve(
    mount: &Path,
    live: Arc<LiveCatalog>,
    fs: Arc<FsCore>,
) -> Result<tokio::task::JoinHandle<()>, ControlError> {
    let bind_err = |source| ControlError::Bind {
        mount: mount.to_path_buf(),
        source,
    };
    let addr =
        std::os::unix::net::SocketAddr::from_abstract_name(socket_name(mount)).map_err(bind_err)?;
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    let listener = tokio::net::UnixListener::from_std(listener).map_err(bind_err)?;
    let mount = mount.to_string_lossy().into_owned();
    // SAFETY: geteuid cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let (live, fs, mount) = (live.clone(), fs.clone(), mount.clone());
            tokio::spawn(async move {
                if let Err(e) =
                    tokio::time::timeout(TIMEOUT, answer(stream, me, &mount, &live, &fs)).await
                {
                    tracing::debug!("control socket: a client timed out: {e}");
                }
            });
        }
    }))
}

/// Answer one client.
async fn answer(
    stream: UnixStream,
    me: u32,
    mount: &str,
    live: &LiveCatalog,
    fs: &FsCore,
) -> std::io::Result<()> {
    let peer = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    if peer != 0 && peer != me {
        tracing::warn!("control socket: refused uid {peer} (only uid {me} and root may ask)");
        let msg = format!("error: only the mount's owner (uid {me}) and root may ask\n");
        return write.write_all(msg.as_bytes()).await;
    }
    let mut line = String::new();
    BufReader::new(read.take(MAX_REQUEST))
        .read_line(&mut line)
        .await?;
    let reply = match line.trim() {
        "status" => {
            let status = Status::collect(mount, live, fs, crate::metrics::global());
            let mut json = serde_json::to_vec(&status).map_err(std::io::Error::other)?;
            json.push(b'\n');
            json
        }
        other => {
            format!("error: unknown request {other:?} (this daemon knows: status)\n").into_bytes()
        }
    };
    write.write_all(&reply).await?;
    write.shutdown().await
}

/// The canonical path of a mount point: its parent resolved, its own name kept (another
/// user's FUSE mount cannot be looked into, not even by root).
pub fn canonical_mount_point(path: &Path) -> std::io::Result<PathBuf> {
    if let Ok(p) = std::fs::canonicalize(path) {
        return Ok(p);
    }
    let abs = std::path::absolute(path)?;
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => Ok(std::fs::canonicalize(parent)?.join(name)),
        _ => Ok(abs),
    }
}

/// Ask the daemon of the spackfs mount at `mount` for its status.
pub async fn status(mount: &Path) -> Result<Status, ControlError> {
    let json = request(mount, "status").await?;
    serde_json::from_str(&json).map_err(|e| ControlError::Protocol {
        mount: mount.to_path_buf(),
        message: e.to_string(),
    })
}

/// Send `what` to the daemon of the spackfs mount at `mount`; its answer.
pub async fn request(mount: &Path, what: &str) -> Result<String, ControlError> {
    let connect = |source| ControlError::Connect {
        mount: mount.to_path_buf(),
        source,
    };
    let path = canonical_mount_point(mount).map_err(connect)?;
    let entry = crate::fs::mount::mount_at(&path)
        .filter(|e| e.fstype == "fuse.spackfs" || e.source == "spackfs")
        .ok_or_else(|| ControlError::NotSpackfs {
            mount: mount.to_path_buf(),
        })?;
    let owner = entry.fuse_owner().unwrap_or(0);
    let addr =
        std::os::unix::net::SocketAddr::from_abstract_name(socket_name(&path)).map_err(connect)?;
    let std_stream = std::os::unix::net::UnixStream::connect_addr(&addr).map_err(connect)?;
    std_stream.set_nonblocking(true).map_err(connect)?;
    let mut stream = UnixStream::from_std(std_stream).map_err(connect)?;
    let server = stream.peer_cred().map_err(connect)?.uid();
    if server != 0 && server != owner {
        return Err(ControlError::Impostor {
            mount: mount.to_path_buf(),
            server,
            owner,
        });
    }
    let exchange = async {
        stream.write_all(format!("{what}\n").as_bytes()).await?;
        let mut answer = String::new();
        stream.take(MAX_ANSWER).read_to_string(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| connect(std::io::ErrorKind::TimedOut.into()))?
        .map_err(connect)?;
    if let Some(message) = answer.strip_prefix("error: ") {
        return Err(ControlError::Refused {
            mount: mount.to_path_buf(),
            message: message.trim().to_string(),
        });
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_names_are_short_and_differ_by_mount() {
        let a = socket_name(Path::new("/user-environment"));
        let b = socket_name(Path::new("/user-environment2"));
        assert_ne!(a, b);
        assert!(a.len() < 100, "{a}");
        assert_eq!(a, socket_name(Path::new("/user-environment")));
    }
}
