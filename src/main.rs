//! The `levee` binary: parses arguments and calls the library. Exit codes: 0 success, 1 operational
//! error (one `error:` line on stderr), 2 usage error.

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    // Never a backtrace for the user: a panic is reported as one error line.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {l}"))
            .unwrap_or_default();
        eprintln!("error: internal error: {msg}{at}");
    }));
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // A panic that escapes is reported by the hook above and exits 1, never Rust's 101: the
    // contract allows 0, 1 and 2 only.
    match std::panic::catch_unwind(|| {
        if levee::failpoint::hit("cli-panic") {
            panic!("failpoint cli-panic");
        }
        cli::run(cli)
    }) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
        Err(_) => ExitCode::from(1),
    }
}
