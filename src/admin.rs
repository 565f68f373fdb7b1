//! The admin listener: `GET /status` (every pool and server as JSON) and
//! `GET /healthz`. Served by the health thread, off the request path.

use crate::buf::Buffer;
use crate::config::UpstreamConfig;
use crate::io::{Conn, ReadOutcome};
use crate::upstream::health::Health;
use monoio::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

pub async fn serve(listener: TcpListener, health: Arc<Health>, configs: Arc<Vec<UpstreamConfig>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            monoio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (health, configs) = (health.clone(), configs.clone());
        monoio::spawn(async move {
            let mut conn = Conn::new(stream);
            let mut buf = Buffer::take();
            loop {
                match conn.reader.read(&mut buf, Duration::from_secs(5)).await {
                    ReadOutcome::Data(_) if !buf.data().windows(4).any(|w| w == b"\r\n\r\n") => {
                        continue
                    }
                    ReadOutcome::Data(_) => break,
                    _ => return,
                }
            }
            let head = String::from_utf8_lossy(buf.data()).into_owned();
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let (status, ctype, body) = match path {
                "/status" => ("200 OK", "application/json", health.to_json(&configs)),
                "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
                _ => (
                    "404 Not Found",
                    "text/plain",
                    "try /status or /healthz\n".to_string(),
                ),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let mut out = Buffer::take();
            out.clear();
            if out.spare() < response.len() {
                out.reserve(response.len());
            }
            out.extend(response.as_bytes());
            let n = out.len();
            let _ = conn
                .writer
                .write_front(&mut out, n, Duration::from_secs(5))
                .await;
            conn.writer.shutdown_write();
        });
    }
}
