//! Starts a real `levee serve` on OS-assigned loopback ports for black-box tests.
#![allow(dead_code)] // each test binary uses a different part of this harness

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use levee::protocol::{self, ErrorCode, Request, Response, ResponseHeader, TopicConfig};
use levee::record::{self, Message};

/// A broker process; killed on drop if still running.
pub struct TestBroker {
    child: Option<Child>,
    /// Bootstrap address.
    pub addr: SocketAddr,
    /// Metrics address.
    pub metrics: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Shard 0's Kafka listener, when started with `--kafka-listen`.
    pub kafka: Option<SocketAddr>,
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
        Self::try_start_with_env(data_dir, extra, &[])
    }

    /// Starts a broker with extra environment variables (failpoints, say).
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> TestBroker {
        Self::try_start_with_env(data_dir, extra, env)
            .unwrap_or_else(|e| panic!("broker did not start: {e}"))
    }

    /// Starts a broker with extra environment variables, or returns its stderr if it exits first.
    pub fn try_start_with_env(
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<TestBroker, String> {
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
            .envs(env.iter().copied())
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
            kafka: field(&line, "kafka").and_then(|v| v.parse().ok()),
            data_dir: data_dir.to_owned(),
            child: Some(child),
        })
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// The broker's anonymous resident memory (`RssAnon` in /proc), in bytes.
    pub fn rss_anon_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("broker /proc status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("RssAnon line");
        kib * 1024
    }

    /// Threads of the broker process.
    pub fn threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// The body of an HTTP GET on the metrics listener, with its status line.
    pub fn http_get(&self, path: &str) -> String {
        let mut s = TcpStream::connect(self.metrics).expect("connect metrics");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    /// Waits up to `timeout` for the broker to exit on its own; its exit code, if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sends SIGTERM without waiting.
    pub fn terminate(&self) {
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
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

/// Creates a topic over a raw connection, asserting success.
pub fn create(raw: &mut Raw, name: &str, partitions: u32) {
    let (h, _, frame) = raw.call(
        1,
        &Request::CreateTopic {
            name: name.into(),
            config: TopicConfig {
                partitions,
                retention_bytes: None,
                retention_ms: None,
                visibility: None,
                ..Default::default()
            },
        },
    );
    assert_eq!(
        h.error_code,
        ErrorCode::None,
        "{}",
        protocol::error_message(&frame)
    );
}

/// One record holding `value`.
pub fn one_record(value: &str) -> Vec<u8> {
    let mut run = Vec::new();
    let m = Message {
        value: value.as_bytes().to_vec(),
        ..Message::default()
    };
    record::encode(&m, &mut run).unwrap();
    run
}

/// Runs the `levee` CLI against `broker` with `stdin` and `env`: (exit code, stdout, stderr).
pub fn levee_cli(
    broker: &TestBroker,
    args: &[&str],
    stdin: &str,
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_levee"))
        .arg("--broker")
        .arg(broker.addr.to_string())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
