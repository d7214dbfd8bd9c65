//! The way out of a sandbox whose manifest lists hosts: an HTTP proxy on loopback that connects
//! only to those hosts. It serves `CONNECT host:port` (HTTPS and anything tunnelled) and plain
//! HTTP requests in absolute form (`GET http://host/path`); anything else, or a host that is not
//! listed, gets `403` and is never connected to. It lives as long as the call.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::host_allowed;

/// The most bytes of a request head the proxy reads.
const MAX_HEAD: usize = 16 * 1024;

/// A running proxy; it stops when dropped.
pub(crate) struct Proxy {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Starts a proxy on a free loopback port for these hosts.
    pub(crate) async fn start(allow: Vec<String>) -> Result<Proxy, String> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| format!("cannot start the sandbox's proxy: {e}"))?;
        let port = listener
            .local_addr()
            .map_err(|e| format!("cannot start the sandbox's proxy: {e}"))?
            .port();
        let allow = std::sync::Arc::new(allow);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let allow = allow.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, &allow).await;
                });
            }
        });
        Ok(Proxy { port, task })
    }

    /// Its port on 127.0.0.1.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }
}

/// `host:port` from an authority, with a default port.
fn split_authority(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        return Some((host.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_owned(), port.parse().ok()?)),
        None => Some((authority.to_owned(), default_port)),
    }
}

async fn serve(mut client: TcpStream, allow: &[String]) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    let end = loop {
        let n = client.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > MAX_HEAD {
            return refuse(&mut client, "the request head is too large").await;
        }
    };
    let text = String::from_utf8_lossy(&head[..end]).into_owned();
    let mut first = text.lines().next().unwrap_or_default().split_whitespace();
    let (method, target, version) = (
        first.next().unwrap_or_default(),
        first.next().unwrap_or_default(),
        first.next().unwrap_or("HTTP/1.1"),
    );
    if method.eq_ignore_ascii_case("CONNECT") {
        let Some((host, port)) = split_authority(target, 443) else {
            return refuse(&mut client, "CONNECT needs host:port").await;
        };
        if !host_allowed(allow, &host, port) {
            return refuse(
                &mut client,
                &format!("{host}:{port} is not on this tool's allowlist"),
            )
            .await;
        }
        let mut upstream = TcpStream::connect((host.as_str(), port)).await?;
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await?;
        // Bytes the client sent after the head belong to the tunnel.
        upstream.write_all(&head[end..]).await?;
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
        return Ok(());
    }
    let Some(rest) = target.strip_prefix("http://") else {
        return refuse(
            &mut client,
            "only CONNECT and absolute http:// requests are proxied",
        )
        .await;
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let Some((host, port)) = split_authority(authority, 80) else {
        return refuse(&mut client, "the request names no host").await;
    };
    if !host_allowed(allow, &host, port) {
        return refuse(
            &mut client,
            &format!("{host}:{port} is not on this tool's allowlist"),
        )
        .await;
    }
    let mut upstream = TcpStream::connect((host.as_str(), port)).await?;
    // The request goes on in origin form; the rest of the head is passed as it is.
    let after_first = text.find("\r\n").map_or("", |i| &text[i..]);
    upstream
        .write_all(format!("{method} {path} {version}{after_first}").as_bytes())
        .await?;
    upstream.write_all(&head[end..]).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

async fn refuse(client: &mut TcpStream, why: &str) -> std::io::Result<()> {
    let body = format!("rein sandbox: {why}\n");
    client
        .write_all(
            format!(
                "HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_are_split_with_default_ports() {
        assert_eq!(
            split_authority("api.example.com", 443),
            Some(("api.example.com".into(), 443))
        );
        assert_eq!(
            split_authority("api.example.com:8443", 443),
            Some(("api.example.com".into(), 8443))
        );
        assert_eq!(split_authority("[::1]:81", 80), Some(("::1".into(), 81)));
        assert_eq!(split_authority("host:notaport", 80), None);
    }

    #[tokio::test]
    async fn the_proxy_tunnels_to_listed_hosts_and_refuses_others() {
        let upstream = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let upstream_port = upstream.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = upstream.accept().await.unwrap();
            let mut b = [0u8; 5];
            s.read_exact(&mut b).await.unwrap();
            s.write_all(b"pong!").await.unwrap();
        });
        let proxy = Proxy::start(vec![format!("127.0.0.1:{upstream_port}")])
            .await
            .unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        c.write_all(format!("CONNECT 127.0.0.1:{upstream_port} HTTP/1.1\r\n\r\nping!").as_bytes())
            .await
            .unwrap();
        let mut reply = vec![0u8; 39 + 5];
        c.read_exact(&mut reply).await.unwrap();
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.ends_with("pong!"), "{reply}");

        let mut c = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        c.write_all(b"CONNECT evil.test:443 HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
        assert!(reply.contains("evil.test:443 is not on this tool's allowlist"));
    }
}
