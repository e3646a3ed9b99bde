//! One-request HTTP/1.1 answers for the small fake servers that tests stand up (web pages for
//! URL previews, an older server's media endpoints).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A fake server's answer: status line text (`"200 OK"`), extra header lines (each ending in
/// `\r\n`) and the body.
pub type Answer = (&'static str, String, Vec<u8>);

/// Reads one request head from `stream`, answers it with `answer(path)` and closes the
/// connection. Nothing is answered when the client goes away before its head is complete.
pub async fn serve_one<S, F>(mut stream: S, answer: F)
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&str) -> Answer,
{
    let Some(text) = read_head(&mut stream).await else {
        return;
    };
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let (status, headers, body) = answer(&path);
    let head = format!(
        "HTTP/1.1 {status}\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.shutdown().await;
}

/// Reads one request head from `stream`: `None` when the client goes away before it is complete.
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Option<String> {
    let mut request = Vec::new();
    let mut buffer = [0u8; 4096];
    while !request.windows(4).any(|window| window == b"\r\n\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return None,
            Ok(read) => request.extend_from_slice(&buffer[..read]),
        }
    }
    Some(String::from_utf8_lossy(&request).into_owned())
}
