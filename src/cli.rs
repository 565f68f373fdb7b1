//! Command-line parsing (hand-rolled: four commands do not need a framework).

use std::path::PathBuf;

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// No arguments: run the built-in demo.
    Demo,
    Run {
        config: PathBuf,
        /// Take the listening sockets over from the ringlb running on the
        /// config's `upgrade_socket`, which then drains and exits.
        upgrade: bool,
    },
    Check {
        config: PathBuf,
    },
    /// Ask the running ringlb to reload, with FILE as its new configuration.
    Reload {
        config: PathBuf,
    },
    /// Compare what a config needs with what the host gives.
    Doctor {
        config: PathBuf,
        json: bool,
    },
    PrintDemoConfig,
    Version,
    Help,
}

pub const USAGE: &str = "\
ringlb - thread-per-core io_uring HTTP/1.1 load balancer

USAGE:
    ringlb                          run the built-in demo (see what to curl)
    ringlb --config FILE            run with a TOML config file
    ringlb --config FILE --upgrade  take over the listening sockets of the ringlb
                                    running on the config's upgrade_socket (which
                                    then drains and exits): a binary upgrade
    ringlb check --config FILE      validate a config file and exit
    ringlb reload --config FILE     validate FILE and have the running ringlb (the one on
                                    FILE's upgrade_socket) hand over to a new process
                                    running it; exit 1 with the reason if refused
    ringlb doctor --config FILE [--json]
                                    check this host against what the config needs
                                    (exit 0: fits, 1: something limits it)
    ringlb --print-demo-config      print the demo's config (a starting point)
    ringlb --version | --help

Signals: SIGTERM/SIGINT stop accepting, drain in-flight requests, exit 0.
";

pub fn parse(args: &[String]) -> Result<Command, String> {
    let mut check = false;
    let mut doctor = false;
    let mut reload = false;
    let mut json = false;
    let mut upgrade = false;
    let mut config: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" | "help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--print-demo-config" => return Ok(Command::PrintDemoConfig),
            "check" if !check && !doctor && config.is_none() => check = true,
            "doctor" if !check && !doctor && !reload && config.is_none() => doctor = true,
            "reload" if !check && !doctor && !reload && config.is_none() => reload = true,
            "--json" if doctor => json = true,
            "--upgrade" if !check && !doctor => upgrade = true,
            "-c" | "--config" => {
                let v = it
                    .next()
                    .ok_or_else(|| format!("{a} needs a file argument"))?;
                config = Some(PathBuf::from(v));
            }
            s if s.starts_with("--config=") => {
                config = Some(PathBuf::from(&s["--config=".len()..]))
            }
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }
    if reload {
        let config = config.ok_or("`reload` needs --config FILE")?;
        return Ok(Command::Reload { config });
    }
    if doctor {
        let config = config.ok_or("`doctor` needs --config FILE")?;
        return Ok(Command::Doctor { config, json });
    }
    match (check, config) {
        (true, Some(config)) => Ok(Command::Check { config }),
        (true, None) => Err("`check` needs --config FILE".to_string()),
        (false, Some(config)) => Ok(Command::Run { config, upgrade }),
        (false, None) if upgrade => Err("`--upgrade` needs --config FILE".to_string()),
        (false, None) => Ok(Command::Demo),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, String> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn commands() {
        assert_eq!(p(&[]), Ok(Command::Demo));
        assert_eq!(
            p(&["--config", "a.toml"]),
            Ok(Command::Run {
                config: "a.toml".into(),
                upgrade: false
            })
        );
        assert_eq!(
            p(&["--config", "a.toml", "--upgrade"]),
            Ok(Command::Run {
                config: "a.toml".into(),
                upgrade: true
            })
        );
        assert!(p(&["--upgrade"]).is_err());
        assert_eq!(
            p(&["doctor", "--config", "a.toml", "--json"]),
            Ok(Command::Doctor {
                config: "a.toml".into(),
                json: true
            })
        );
        assert!(p(&["doctor"]).is_err());
        assert_eq!(
            p(&["check", "--config", "a.toml"]),
            Ok(Command::Check {
                config: "a.toml".into()
            })
        );
        assert_eq!(
            p(&["check", "--config=a.toml"]),
            Ok(Command::Check {
                config: "a.toml".into()
            })
        );
        assert_eq!(p(&["--version"]), Ok(Command::Version));
        assert!(p(&["check"]).is_err());
        assert!(p(&["--config"]).is_err());
        assert!(p(&["--bogus"]).is_err());
    }
}
