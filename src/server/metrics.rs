//! `GET /metrics` (Prometheus text format) and `GET /healthz` on the metrics listener.
//!
//! A deliberately small HTTP/1.1 responder: one request per connection, bounded request size,
//! `Connection: close`. It reads the shards' counters (atomics) and never touches a log.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpListener;

use super::Shared;

/// Largest request head read.
const REQUEST_BYTES_MAX: usize = 8192;

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok(mut stream) = listener.accept().await else {
            glommio::timer::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let shared = shared.clone();
        glommio::spawn_local(async move {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = vec![0u8; REQUEST_BYTES_MAX];
            let mut n = 0;
            while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf[n..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(m) => n += m,
                }
            }
            let line = String::from_utf8_lossy(&buf[..n]);
            let path = line.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = match path {
                "/healthz" => ("200 OK", "ok\n".to_string()),
                "/metrics" => ("200 OK", render(&shared)),
                _ => ("404 Not Found", "not found\n".to_string()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.close().await;
        })
        .detach();
    }
}

/// A metric's name, help text and how to read it from one shard's counters.
type Counter = (&'static str, &'static str, fn(&crate::shard::Stats) -> u64);

fn render(shared: &Shared) -> String {
    let mut out = String::new();
    let counters: [Counter; 6] = [
        ("levee_records_in_total", "Records appended.", |s| {
            s.records_in.load(Ordering::Relaxed)
        }),
        ("levee_bytes_in_total", "Bytes of records appended.", |s| {
            s.bytes_in.load(Ordering::Relaxed)
        }),
        (
            "levee_bytes_out_total",
            "Bytes of records served to consumers.",
            |s| s.bytes_out.load(Ordering::Relaxed),
        ),
        ("levee_requests_total", "Requests handled.", |s| {
            s.requests.load(Ordering::Relaxed)
        }),
        (
            "levee_forwarded_total",
            "Requests forwarded to the owning shard.",
            |s| s.forwarded.load(Ordering::Relaxed),
        ),
        ("levee_connections", "Open client connections.", |s| {
            s.connections.load(Ordering::Relaxed) as u64
        }),
    ];
    for (name, help, get) in counters {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (shard, stats) in shared.stats.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", get(stats));
        }
    }
    let _ = writeln!(
        out,
        "# HELP levee_topics Topics in the catalog.\n# TYPE levee_topics gauge\nlevee_topics {}",
        shared.catalog.list().len()
    );
    out
}
