//! The control socket: `plait admin <group> <command>` reaches the running server through a Unix
//! socket in the database folder (`admin.sock`, mode 0600, so only the server's own system user
//! can connect), and runs the same commands as the admin room, as the machine's owner: an admin
//! locked out of every client can still reset a password.
//!
//! One connection carries one command: a line with a JSON array of its words, answered by the
//! reply's text, after which the server closes the connection.

use std::{os::unix::fs::PermissionsExt, path::PathBuf, sync::Arc};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::watch,
};

use super::{commands::run_args, reply::Reply};
use crate::{config::Config, service::Services};

/// The socket's file name in the database folder.
pub const SOCKET_NAME: &str = "admin.sock";

/// Where the running server's control socket is.
pub fn socket_path(config: &Config) -> PathBuf {
    config.database_path.join(SOCKET_NAME)
}

/// The worker: serves the control socket until `shutdown` turns true, then removes it. A socket
/// that cannot be made is logged and the server runs without one.
pub async fn serve(services: Arc<Services>, mut shutdown: watch::Receiver<bool>) {
    let path = socket_path(&services.config);
    // A socket left by a server that was killed would refuse the bind.
    let _ = std::fs::remove_file(&path);
    let listener = match bind(&path) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, path = %path.display(), "cannot make the admin control socket");
            return;
        }
    };
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        match stream {
            Ok((stream, _)) => {
                tokio::spawn(answer(Arc::clone(&services), stream));
            }
            Err(error) => tracing::warn!(%error, "accepting on the admin control socket failed"),
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// Binds the socket and makes it readable and writable by its owner only.
fn bind(path: &std::path::Path) -> std::io::Result<UnixListener> {
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Reads one command, runs it and writes the reply's text.
async fn answer(services: Arc<Services>, stream: UnixStream) {
    let (reader, mut writer) = stream.into_split();
    let mut line = String::new();
    // One command line is small; a client that sends more is cut off at 64 KiB.
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(reader, 64 * 1024));
    let reply = match reader.read_line(&mut line).await {
        Ok(_) => match serde_json::from_str::<Vec<String>>(&line) {
            Ok(words) => run_args(&services, words).await,
            Err(error) => Reply::error(format!("not a JSON array of words: {error}")),
        },
        Err(error) => Reply::error(error),
    };
    tracing::info!("ran an admin command from the control socket");
    let mut text = reply.text;
    text.push('\n');
    if let Err(error) = writer.write_all(text.as_bytes()).await {
        tracing::debug!(%error, "the control socket's client left before the reply");
    }
}
