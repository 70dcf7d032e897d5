//! `levee serve`: run the broker until SIGINT or SIGTERM.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use levee::config::{ConfigLayer, LogFormat};
use levee::server::Broker;

/// Flags of `levee serve`; every flag `--foo-bar` is also TOML key `foo_bar` and env `LEVEE_FOO_BAR`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file (flags > env > file > defaults).
    #[arg(long, env = "LEVEE_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    layer: ConfigLayer,
}

fn init_logging(level: &str, explicit: bool, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    // --log-level (or LEVEE_LOG_LEVEL, or the file) wins; otherwise RUST_LOG; otherwise info.
    let filter = if explicit {
        EnvFilter::try_new(level)
    } else {
        EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(level))
    }
    .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

/// Blocks SIGINT and SIGTERM in every thread (threads inherit the mask), so that only `sigwait`
/// in the main thread sees them.
fn block_signals() -> libc::sigset_t {
    // SAFETY: plain libc calls on a local sigset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: `set` is a valid, initialized sigset.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => ConfigLayer::from_file(path)?,
        None => ConfigLayer::default(),
    };
    let explicit_level = args.layer.log_level.is_some() || file.log_level.is_some();
    let config = file.overlay(args.layer).resolve()?;
    init_logging(&config.log_level, explicit_level, config.log_format);
    let set = block_signals();
    let data_dir = config.data_dir.clone();
    let shards = config.shards;
    let broker = Broker::start(config).context("cannot start the broker")?;
    {
        let mut out = std::io::stdout().lock();
        write!(
            out,
            "levee ready listen={} metrics={} shards={} data_dir={}",
            broker.listen,
            broker.metrics,
            shards,
            data_dir.display()
        )?;
        // Only with --kafka-listen: shard 0's Kafka address (the bootstrap for Kafka clients).
        if let Some(kafka) = broker.kafka_addrs.first() {
            write!(out, " kafka={kafka}")?;
        }
        writeln!(out)?;
        out.flush()?;
    }
    tracing::info!(listen = %broker.listen, shards = ?broker.shard_addrs, kafka = ?broker.kafka_addrs, "serving");
    let sig = wait_for_signal(&set);
    tracing::info!(signal = sig, "shutting down");
    broker.shutdown();
    broker.join();
    tracing::info!("stopped");
    Ok(())
}
