//! `--config weft.toml` (or `WEFT_CONFIG`): flags from a file. Top-level keys set global
//! flags (`log-format = "json"`); a table per subcommand sets its flags (`[server]`,
//! `[agent]`, `[kube-manager]`, `[lab.up]`), each key the flag's long name. Precedence: the
//! command line, then the flag's `WEFT_*` environment variable, then the file, then the
//! default.
//!
//! The file's settings become command-line arguments before clap parses (clap reads no
//! files, and changing the environment is unsafe in a threaded process): clap then checks
//! them like any other, and an unknown key is an error naming it.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, Command, CommandFactory};

use crate::cli::Cli;

/// The command line with the file's settings added, and the ids of the flags the file set.
#[derive(Debug, Default)]
pub struct Loaded {
    pub argv: Vec<OsString>,
    pub from_file: BTreeSet<String>,
}

fn config_path(argv: &[OsString]) -> Option<PathBuf> {
    let mut args = argv.iter().skip(1).map(|a| a.to_string_lossy().into_owned());
    while let Some(a) = args.next() {
        if a == "--" {
            break;
        }
        if a == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    std::env::var_os("WEFT_CONFIG").map(PathBuf::from)
}

/// Whether the flag `word` (`--name` or `-n`) of `command` or a global one takes a value, so
/// that the word after it is not a subcommand.
fn takes_value(command: &Command, root: &Command, word: &str) -> bool {
    let is = |a: &clap::Arg| match word.strip_prefix("--") {
        Some(long) => a.get_long() == Some(long),
        None => word.strip_prefix('-').is_some_and(|s| s.chars().eq(a.get_short())),
    };
    command
        .get_arguments()
        .chain(root.get_arguments())
        .find(|a| is(a))
        .is_some_and(|a| matches!(a.get_action(), ArgAction::Set | ArgAction::Append))
}

fn value_strings(key: &str, value: &toml::Value) -> Result<Vec<String>, String> {
    match value {
        toml::Value::String(s) => Ok(vec![s.clone()]),
        toml::Value::Integer(i) => Ok(vec![i.to_string()]),
        toml::Value::Float(f) => Ok(vec![f.to_string()]),
        toml::Value::Array(items) => {
            items.iter().map(|i| value_strings(key, i).map(|mut v| v.remove(0))).collect::<Result<_, _>>()
        }
        other => Err(format!("{key}: {other} is not a string, number or list")),
    }
}

/// Adds the settings of the config file (if any) to `argv`.
pub fn load(argv: Vec<OsString>) -> Result<Loaded, String> {
    let Some(path) = config_path(&argv) else { return Ok(Loaded { argv, ..Loaded::default() }) };
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let table: toml::Table = text.parse().map_err(|e| format!("{}: {e}", path.display()))?;
    let given: Vec<String> = argv.iter().map(|a| a.to_string_lossy().into_owned()).collect();

    // The subcommands named on the command line, and where the last one is.
    let root = Cli::command();
    let mut chain: Vec<Command> = vec![root.clone()];
    let mut insert_at = 1;
    let mut i = 1;
    while i < given.len() {
        let word = &given[i];
        let current = chain.last().cloned().unwrap_or_else(|| root.clone());
        if word == "--" {
            break;
        } else if word.starts_with('-') {
            if !word.contains('=') && takes_value(&current, &root, word) {
                i += 1;
            }
        } else if let Some(sub) = current.find_subcommand(word) {
            chain.push(sub.clone());
            insert_at = i + 1;
        } else {
            break;
        }
        i += 1;
    }

    let on_command_line =
        |long: &str| given.iter().any(|g| g == &format!("--{long}") || g.starts_with(&format!("--{long}=")));
    let mut added: Vec<OsString> = Vec::new();
    let mut from_file = BTreeSet::new();
    // Global settings at the top; then each subcommand's table, nested as the chain is.
    let mut scopes: Vec<(String, &toml::Table, &Command)> = vec![(String::new(), &table, &chain[0])];
    let mut section = &table;
    let mut name = String::new();
    for command in &chain[1..] {
        name = if name.is_empty() { command.get_name().to_string() } else { format!("{name}.{}", command.get_name()) };
        match section.get(command.get_name()) {
            Some(toml::Value::Table(t)) => {
                section = t;
                scopes.push((name.clone(), t, command));
            }
            Some(_) => return Err(format!("{}: [{name}] must be a table", path.display())),
            None => break,
        }
    }
    let subcommands: BTreeSet<&str> = chain.iter().flat_map(|c| c.get_subcommands().map(|s| s.get_name())).collect();
    for (scope, settings, command) in scopes {
        for (key, value) in settings {
            if value.is_table() && subcommands.contains(key.as_str()) {
                continue;
            }
            let long = key.replace('_', "-");
            let where_ = if scope.is_empty() { key.clone() } else { format!("[{scope}] {key}") };
            let arg = command
                .get_arguments()
                .chain(root.get_arguments().filter(|a| a.is_global_set()))
                .find(|a| a.get_long() == Some(long.as_str()))
                .ok_or_else(|| format!("{}: {where_}: no such setting", path.display()))?;
            if long == "config" {
                return Err(format!("{}: {where_}: a config file cannot name another", path.display()));
            }
            let from_env = arg.get_env().is_some_and(|e| std::env::var_os(e).is_some());
            if on_command_line(&long) || from_env {
                continue;
            }
            match (arg.get_action(), value) {
                (ArgAction::SetTrue, toml::Value::Boolean(true)) => added.push(format!("--{long}").into()),
                (ArgAction::SetTrue, toml::Value::Boolean(false)) => continue,
                (ArgAction::SetTrue, other) => {
                    return Err(format!("{}: {where_}: {other} is not true or false", path.display()));
                }
                (_, value) => {
                    for v in value_strings(&where_, value).map_err(|e| format!("{}: {e}", path.display()))? {
                        added.push(format!("--{long}={v}").into());
                    }
                }
            }
            from_file.insert(arg.get_id().to_string());
        }
    }
    let mut argv = argv;
    let tail = argv.split_off(insert_at.min(argv.len()));
    argv.extend(added);
    argv.extend(tail);
    Ok(Loaded { argv, from_file })
}

/// `weft server --print-config`: every setting of `weft server` with its effective value and
/// where it came from; secrets redacted.
pub fn print_server(loaded: &Loaded) -> anyhow::Result<()> {
    let root = Cli::command();
    let matches = root.clone().try_get_matches_from(&loaded.argv)?;
    let Some(server) = root.find_subcommand("server") else { anyhow::bail!("no server subcommand") };
    let Some(server_matches) = matches.subcommand_matches("server") else { anyhow::bail!("not `weft server`") };
    let globals = root
        .get_arguments()
        .filter(|a| a.is_global_set() && ["log", "log_format", "data_dir"].contains(&a.get_id().as_str()));
    let mut lines = Vec::new();
    for (arg, m) in globals.map(|a| (a, &matches)).chain(server.get_arguments().map(|a| (a, server_matches))) {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else { continue };
        if matches!(id, "help" | "version" | "print_config") {
            continue;
        }
        let raw: Vec<String> =
            m.get_raw(id).map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect()).unwrap_or_default();
        let value = match raw.as_slice() {
            [] => "(unset)".to_string(),
            [one] => one.clone(),
            many => many.join(","),
        };
        let value = if arg.is_hide_env_values_set() && !raw.is_empty() {
            if long == "database-url" { redact_url(&value) } else { "<redacted>".into() }
        } else {
            value
        };
        // The conventional variable, read when the flag is not given (cli.rs).
        let fallback = (long == "database-url" && raw.is_empty())
            .then(|| std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()))
            .flatten();
        if let Some(url) = fallback {
            lines.push(format!("{long} = {:?}  # environment (DATABASE_URL)", redact_url(&url)));
            continue;
        }
        let source = if loaded.from_file.contains(id) {
            "config file".to_string()
        } else {
            match m.value_source(id) {
                Some(clap::parser::ValueSource::CommandLine) => "command line".into(),
                Some(clap::parser::ValueSource::EnvVariable) => {
                    format!(
                        "environment ({})",
                        arg.get_env().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default()
                    )
                }
                Some(clap::parser::ValueSource::DefaultValue) => "default".into(),
                _ => "unset".into(),
            }
        };
        lines.push(format!("{long} = {value:?}  # {source}"));
    }
    println!("{}", lines.join("\n"));
    Ok(())
}

/// A URL with its password replaced: `postgres://weft:<redacted>@db/weft`.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return "<redacted>".into() };
    let Some((credentials, host)) = rest.rsplit_once('@') else { return url.to_string() };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:<redacted>@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_with(file: &str, args: &[&str]) -> Result<Vec<String>, String> {
        // Tests run in parallel threads of one process: a file of each call's own.
        let path = std::env::temp_dir().join(format!("weft-config-{}.toml", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, file).map_err(|e| e.to_string())?;
        let mut argv: Vec<OsString> = vec!["weft".into(), "--config".into(), path.clone().into()];
        argv.extend(args.iter().map(OsString::from));
        let loaded = load(argv);
        let _ = std::fs::remove_file(&path);
        Ok(loaded?.argv.iter().skip(3).map(|a| a.to_string_lossy().into_owned()).collect())
    }

    #[test]
    fn a_nested_table_sets_its_subcommands_flags_after_the_subcommand() {
        let file = "log = \"debug\"\n[lab.up]\nmanifests = \"examples/yelb\"\n[server]\nlisten = \"0.0.0.0:1\"\n";
        // WEFT_LOG, when the shell running the tests sets it, wins over the file.
        let log: &[&str] = if std::env::var_os("WEFT_LOG").is_some() { &[] } else { &["--log=debug"] };
        let argv = load_with(file, &["lab", "up"]).expect("loads");
        assert_eq!(argv, [&["lab", "up"], log, &["--manifests=examples/yelb"]].concat());
        // Another subcommand's table is not applied; the command line wins over the file.
        let argv = load_with(file, &["lab", "up", "--manifests", "mine"]).expect("loads");
        assert_eq!(argv, [&["lab", "up"], log, &["--manifests", "mine"]].concat());
        // A flag's value before the subcommand is not taken for one (`-o json`).
        let argv = load_with(file, &["-o", "json", "lab", "up"]).expect("loads");
        assert_eq!(argv, [&["-o", "json", "lab", "up"], log, &["--manifests=examples/yelb"]].concat());
    }

    #[test]
    fn a_setting_that_is_no_flag_or_of_the_wrong_type_is_an_error_naming_it() {
        let e = load_with("[server]\ninsecure-no-auth = \"yes\"\n", &["server"]).expect_err("a string for a switch");
        assert!(e.contains("[server] insecure-no-auth"), "{e}");
        let e = load_with("[server]\nmanifests = \"x\"\n", &["server"]).expect_err("kube-manager's flag");
        assert!(e.contains("[server] manifests: no such setting"), "{e}");
    }

    #[test]
    fn a_urls_password_is_redacted_and_nothing_else() {
        assert_eq!(redact_url("postgres://weft:s3cret@db:5432/weft"), "postgres://weft:<redacted>@db:5432/weft");
        assert_eq!(redact_url("postgres://weft@db/weft"), "postgres://weft@db/weft");
        assert_eq!(redact_url("not a url"), "<redacted>");
    }
}
