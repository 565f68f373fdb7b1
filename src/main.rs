//! The `ringlb` binary: CLI, start-up, signals. Everything else lives in the library.

use ringlb::cli::{self, Command};
use ringlb::config::{Config, DEMO_CONFIG};
use ringlb::runtime::{self, Shutdown};
use std::process::ExitCode;
use std::sync::Arc;

// The hot path allocates nothing in steady state, so the allocator only serves
// connection setup and bursts. The system allocator measured leaner for idle
// connections (see memory.rs); mimalloc stays available as a build feature.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match cli::parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringlb: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            print!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("ringlb {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::PrintDemoConfig => {
            print!("{DEMO_CONFIG}");
            ExitCode::SUCCESS
        }
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} listener(s), {} upstream(s), {} worker(s))",
                    config.display(),
                    c.listeners.len(),
                    c.upstreams.len(),
                    c.workers
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        Command::Reload { config } => reload(&config),
        Command::Doctor { config, json } => match Config::load(&config) {
            Ok(c) => doctor(&c, &config.display().to_string(), json),
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config, upgrade } => match Config::load(&config) {
            Ok(c) => serve(c, upgrade, Some(config)),
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        Command::Demo => {
            let config =
                Config::parse(DEMO_CONFIG, "<built-in demo>").expect("demo config is valid");
            println!(
                "ringlb demo: balancing http://127.0.0.1:8080 over two built-in backends (:8081, :8082)\n\
                 try:\n  curl -i http://127.0.0.1:8080/        (round robin over backend 1 and 2)\n  \
                 curl -i http://127.0.0.1:8080/healthz\n\
                 stop with Ctrl-C. Run your own upstreams with: ringlb --config FILE \
                 (ringlb --print-demo-config shows this demo's config)"
            );
            serve(config, false, None)
        }
    }
}

/// `ringlb reload --config FILE`: validates FILE here, then asks the ringlb
/// on its upgrade_socket to hand over to a process running it, and waits
/// for the outcome.
fn reload(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let Some(socket) = config.upgrade_socket else {
        eprintln!(
            "{}: reload needs upgrade_socket (where the running ringlb listens)",
            path.display()
        );
        return ExitCode::from(1);
    };
    let outcome = runtime::reload::ask(&socket, path);
    match outcome {
        Ok(said) if said.contains("DONE ") => {
            println!("reload: {said}");
            ExitCode::SUCCESS
        }
        Ok(said) => {
            eprintln!("reload refused: {said}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("reload: no ringlb answers on {}: {e}", socket.display());
            ExitCode::from(1)
        }
    }
}

/// Prints the host check; exit 1 when the host limits the config.
fn doctor(config: &Config, source: &str, json: bool) -> ExitCode {
    use ringlb::doctor;
    let host = doctor::Host::read(config.ring_entries);
    let rows = doctor::assess(config, &host);
    let needs = doctor::Needs::of(config, &host);
    let report = if json {
        doctor::json(source, &needs, &rows)
    } else {
        doctor::text(source, &needs, &rows)
    };
    print!("{report}");
    if doctor::limits_anything(&rows) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs ringlb; `upgrade`: first take the listening sockets over from the
/// ringlb offering them on the config's `upgrade_socket`.
fn serve(config: Config, upgrade: bool, source: Option<std::path::PathBuf>) -> ExitCode {
    ringlb::log::configure(config.log_level, config.log_json);
    ringlb::contain::install_hook();
    let shutdown = Arc::new(Shutdown::default());
    runtime::signals::install(shutdown.clone());
    let workers = config.workers;
    let offered_on = config.upgrade_socket.clone();
    let mut takeover = if upgrade {
        let Some(path) = config.upgrade_socket.clone() else {
            ringlb::error!("--upgrade: the config sets no upgrade_socket to take sockets from");
            return ExitCode::from(1);
        };
        let path = runtime::reload::takeover_path(path);
        match runtime::handover::take_over(&path) {
            Ok(t) => Some(t),
            Err(e) => {
                ringlb::error!("--upgrade: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        None
    };
    let inherited = takeover
        .as_mut()
        .map_or_else(Vec::new, |t| std::mem::take(&mut t.sockets));
    match runtime::start(config, shutdown, inherited) {
        Ok(running) => {
            match &source {
                Some(file) => runtime::reload::loaded(
                    &file.display().to_string(),
                    &std::fs::read(file).unwrap_or_default(),
                    runtime::reload::How::Start,
                ),
                None => runtime::reload::loaded(
                    "<built-in demo>",
                    DEMO_CONFIG.as_bytes(),
                    runtime::reload::How::Start,
                ),
            }
            if let Some(file) = source {
                let file = std::fs::canonicalize(&file).unwrap_or(file);
                runtime::reload::remember(file, offered_on);
            }
            if let Some(t) = takeover {
                let from = t.from_pid;
                match t.confirm() {
                    Ok(()) => ringlb::info!("took over from pid {from}, which now drains"),
                    Err(e) => ringlb::warn!("upgrade: pid {from} did not confirm: {e}"),
                }
            }
            runtime::notify::ready(&format!("serving with {workers} worker(s)"));
            if running.wait() {
                ringlb::info!("stopped");
                ExitCode::SUCCESS
            } else {
                ExitCode::from(70)
            }
        }
        Err(e) => {
            ringlb::error!("{e}");
            ExitCode::from(1)
        }
    }
}
