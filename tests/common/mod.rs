//! Starts a real `levee serve` on OS-assigned loopback ports for black-box tests.
#![allow(dead_code)] // each test binary uses a different part of this harness

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use levee::protocol::{self, Request, Response, ResponseHeader};

/// A broker process; killed on drop if still running.
pub struct TestBroker {
    child: Option<Child>,
    /// Bootstrap address.
    pub addr: SocketAddr,
    /// Metrics address.
    pub metrics: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
}

fn field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_owned))
}

impl TestBroker {
    /// Starts a broker on `data_dir` with 2 unpinned shards and the given extra flags.
    pub fn start(data_dir: &Path, extra: &[&str]) -> TestBroker {
        Self::try_start(data_dir, extra).unwrap_or_else(|e| panic!("broker did not start: {e}"))
    }

    /// Starts a broker, or returns its stderr if it exits first.
    pub fn try_start(data_dir: &Path, extra: &[&str]) -> Result<TestBroker, String> {
        // Tests that need a fixed bootstrap port pass their own --listen.
        let listen: &[&str] = if extra.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_levee"))
            .arg("serve")
            .args(listen)
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args([
                "--pin-cpus",
                "false",
                "--shards",
                "2",
                "--log-level",
                "warn",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn levee");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_default();
        if !line.starts_with("levee ready ") {
            let _ = child.kill();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let _ = child.wait();
            return Err(format!("no ready line (got {line:?}); stderr: {err}"));
        }
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[broker] {l}");
            }
        });
        let parse = |k| {
            field(&line, k)
                .and_then(|v| v.parse().ok())
                .expect("address in ready line")
        };
        Ok(TestBroker {
            addr: parse("listen"),
            metrics: parse("metrics"),
            data_dir: data_dir.to_owned(),
            child: Some(child),
        })
    }

    /// SIGTERM and wait: returns whether the broker exited 0.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        for _ in 0..600 {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A raw protocol connection, for tests that speak bytes.
pub struct Raw {
    pub stream: TcpStream,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Raw { stream }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Reads one response frame; `None` on EOF.
    pub fn recv(&mut self) -> Option<Vec<u8>> {
        let mut size = [0u8; 4];
        if self.stream.read_exact(&mut size).is_err() {
            return None;
        }
        let len = u32::from_le_bytes(size) as usize;
        let mut frame = vec![0u8; 4 + len];
        frame[..4].copy_from_slice(&size);
        self.stream.read_exact(&mut frame[4..]).ok()?;
        Some(frame)
    }

    /// Sends a request and decodes its response.
    pub fn call(&mut self, cid: u32, req: &Request) -> (ResponseHeader, Option<Response>, Vec<u8>) {
        let mut out = Vec::new();
        protocol::encode_request(&mut out, cid, req).unwrap();
        self.send(&out);
        let frame = self.recv().expect("response");
        let (h, body) = protocol::decode_response(&frame).expect("decodable response");
        assert_eq!(h.correlation_id, cid);
        (h, body, frame)
    }
}
