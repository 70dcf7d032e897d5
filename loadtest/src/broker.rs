//! The broker under test: either one this process starts (`levee serve` in a temporary data dir,
//! stopped with SIGTERM at the end) or one already running (`--broker ADDR`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

/// How long a started broker may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a broker may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Which broker to measure and how to start it.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct BrokerArgs {
    /// Measure a running broker at this address instead of starting one. The test topic is
    /// created on it and deleted at the end.
    #[arg(long, env = "LEVEE_BROKER")]
    pub broker: Option<String>,
    /// The `levee` binary to start [default: $LEVEE_BIN, else `levee` next to this binary].
    #[arg(long, env = "LEVEE_BIN")]
    pub levee_bin: Option<PathBuf>,
    /// Parent directory of the started broker's temporary data dir [default: the system temp dir].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// `--shards` of the started broker [default: the broker's own, one per CPU].
    #[arg(long)]
    pub shards: Option<u32>,
    /// `--fsync` of the started broker [default: the broker's own, interval:1000].
    #[arg(long)]
    pub fsync: Option<String>,
    /// `--pin-cpus` of the started broker. Off by default: client and broker share the CPUs, and
    /// the baseline servers are not pinned either.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub pin_cpus: bool,
    /// `--log-level` of the started broker (its logs go to stderr).
    #[arg(long, default_value = "warn")]
    pub broker_log_level: String,
    /// Extra argument for `levee serve`, repeatable: `--broker-arg=--spin-before-park-us=50`.
    #[arg(long = "broker-arg", allow_hyphen_values = true)]
    pub broker_args: Vec<String>,
}

/// A broker to talk to; stops the one this process started when dropped.
#[derive(Debug)]
pub struct Broker {
    /// The bootstrap address.
    pub addr: String,
    /// Shard 0's Kafka listener, when the broker was started with `--kafka-listen`.
    pub kafka: Option<String>,
    /// Set when this process started the broker.
    child: Option<Child>,
    /// The temporary data dir, removed once the broker is stopped.
    data_dir: Option<tempfile::TempDir>,
}

impl Broker {
    /// Connects to `--broker` or starts a broker as `args` say.
    pub fn start(args: &BrokerArgs) -> anyhow::Result<Broker> {
        if let Some(addr) = &args.broker {
            return Ok(Broker {
                addr: addr.clone(),
                kafka: None,
                child: None,
                data_dir: None,
            });
        }
        let bin = find_levee_bin(args.levee_bin.as_deref())?;
        let parent = args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix("levee-loadtest-")
            .tempdir_in(&parent)
            .with_context(|| format!("cannot create a data dir under {}", parent.display()))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(["--pin-cpus", if args.pin_cpus { "true" } else { "false" }])
            .args(["--log-level", &args.broker_log_level]);
        if let Some(shards) = args.shards {
            cmd.args(["--shards", &shards.to_string()]);
        }
        if let Some(fsync) = &args.fsync {
            cmd.args(["--fsync", fsync]);
        }
        cmd.args(&args.broker_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        // The reader keeps draining stdout after the ready line, so the broker never blocks on a
        // full pipe; it ends when the broker exits.
        std::thread::Builder::new()
            .name("broker-stdout".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line.starts_with("levee ready ") {
                        let _ = tx.send(line);
                    }
                }
            })?;
        let mut broker = Broker {
            addr: String::new(),
            kafka: None,
            child: Some(child),
            data_dir: Some(dir),
        };
        let line = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let status = broker
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                bail!(
                    "{} printed no ready line within {READY_TIMEOUT:?} (exit status: {status:?})",
                    bin.display()
                );
            }
        };
        broker.addr = parse_ready_line(&line)
            .with_context(|| format!("unexpected ready line: {line}"))?
            .to_string();
        broker.kafka = line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("kafka="))
            .map(str::to_string);
        eprintln!("started {} ({line})", bin.display());
        Ok(broker)
    }

    /// The process id of the broker this process started.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// True when this process started the broker.
    pub fn is_owned(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the started broker with SIGTERM (SIGKILL after [`STOP_TIMEOUT`]) and removes its
    /// data dir. Does nothing for a broker this process did not start.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let result = self.stop_child();
        drop(self.data_dir.take());
        result
    }

    fn stop_child(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
        // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("broker exited with {status} after SIGTERM");
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("broker did not exit within {STOP_TIMEOUT:?} of SIGTERM; killed");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // On an error path: do not leave a broker running behind us.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `listen=` address of a `levee ready listen=ADDR metrics=ADDR shards=N data_dir=DIR` line.
pub fn parse_ready_line(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("levee ready ")?;
    rest.split_whitespace()
        .find_map(|kv| kv.strip_prefix("listen="))
        .filter(|addr| !addr.is_empty())
}

/// The `levee` binary: `explicit` (from `--levee-bin` or `$LEVEE_BIN`), else the one next to this
/// binary (cargo puts both in `target/<profile>/`), else one directory up (when this runs from
/// `target/<profile>/deps/`, as tests do).
fn find_levee_bin(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("levee binary {} does not exist", p.display());
    }
    let exe = std::env::current_exe().context("cannot locate this executable")?;
    let mut candidates = Vec::new();
    if let Some(dir) = exe.parent() {
        candidates.push(dir.join("levee"));
        if let Some(up) = dir.parent() {
            candidates.push(up.join("levee"));
        }
    }
    for c in &candidates {
        if c.is_file() {
            return Ok(c.clone());
        }
    }
    // Run through `cargo run -p levee-loadtest` on a fresh clone: cargo built this package, not
    // the `levee` binary beside it. Build it the same way (cargo names itself in $CARGO).
    if let (Ok(cargo), Some(dir)) = (std::env::var("CARGO"), exe.parent()) {
        let release = dir.file_name().is_some_and(|n| n == "release");
        eprintln!("building the levee binary (`cargo build -p levee --bin levee`)");
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "levee", "--bin", "levee"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .context("cannot run cargo to build the levee binary")?;
        if status.success() {
            if let Some(c) = candidates.iter().find(|c| c.is_file()) {
                return Ok(c.clone());
            }
        }
    }
    bail!(
        "no levee binary found (looked at {candidates:?}); build it with \
         `cargo build --release --workspace --bins`, or set LEVEE_BIN or --levee-bin"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_ready_line_when_parsed_should_return_listen_addr() {
        let line =
            "levee ready listen=127.0.0.1:40123 metrics=127.0.0.1:40124 shards=2 data_dir=/tmp/x";
        assert_eq!(parse_ready_line(line), Some("127.0.0.1:40123"));
    }

    #[test]
    fn given_other_line_when_parsed_should_return_none() {
        assert_eq!(parse_ready_line("levee starting"), None);
        assert_eq!(parse_ready_line("levee ready listen= metrics=x"), None);
    }
}
