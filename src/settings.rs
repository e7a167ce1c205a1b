//! Layered configuration shared by every subcommand: defaults, then an optional TOML file, then
//! `MOONRAFT_<KEY>` environment variables, then `--<key-with-dashes>` flags (the later wins).
//! A bad value stops start-up with a message naming the key and where the value came from.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// Command-line arguments of a subcommand: an optional config file and `--key value` flags.
#[derive(Debug, Default)]
pub struct CliArgs {
    pub file: Option<PathBuf>,
    pub flags: Vec<(String, String)>,
    pub help: bool,
}

pub fn parse_cli(args: &[String], keys: &[&str]) -> Result<CliArgs> {
    let mut out = CliArgs::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "-h" || a == "--help" {
            out.help = true;
        } else if let Some(flag) = a.strip_prefix("--") {
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (flag, None),
            };
            let key = name.replace('-', "_");
            if !keys.contains(&key.as_str()) {
                bail!(
                    "unknown option --{name}; known options: {}",
                    keys.iter().map(|k| format!("--{}", k.replace('_', "-"))).collect::<Vec<_>>().join(" ")
                );
            }
            let value = match inline {
                Some(v) => v,
                None => match args.get(i + 1) {
                    Some(v) if !v.starts_with("--") => {
                        i += 1;
                        v.clone()
                    }
                    // A flag without a value is a boolean switch.
                    _ => "true".to_owned(),
                },
            };
            out.flags.push((key, value));
        } else if out.file.is_none() {
            out.file = Some(PathBuf::from(a));
        } else {
            bail!("unexpected argument {a:?} (only one config file may be given)");
        }
        i += 1;
    }
    Ok(out)
}

fn toml_to_string(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Applies file, environment and flags, in that order, through `set`. Returns the warnings
/// (unknown keys in the file) for the caller to log once logging is set up — they are found
/// before the `log` key is known.
pub fn apply(
    cli: &CliArgs,
    keys: &[&str],
    mut set: impl FnMut(&str, &str) -> Result<(), String>,
) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    if let Some(path) = &cli.file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        let table: toml::Table =
            text.parse().with_context(|| format!("config file {} is not valid TOML", path.display()))?;
        for (key, value) in &table {
            if !keys.contains(&key.as_str()) {
                warnings.push(format!("ignoring unknown key {key:?} in {}", path.display()));
                continue;
            }
            set(key, &toml_to_string(value))
                .map_err(|e| anyhow::anyhow!("invalid value for {key} in {}: {e}", path.display()))?;
        }
    }
    for key in keys {
        let var = format!("MOONRAFT_{}", key.to_ascii_uppercase());
        if let Ok(value) = std::env::var(&var) {
            set(key, &value).map_err(|e| anyhow::anyhow!("invalid value for {key} in ${var}: {e}"))?;
        }
    }
    for (key, value) in &cli.flags {
        set(key, value).map_err(|e| anyhow::anyhow!("invalid value for {key} in --{}: {e}", key.replace('_', "-")))?;
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_flags_and_file() {
        let keys = ["address", "thread_number", "active_redirection"];
        let c = parse_cli(&strs(&["p.toml", "--address", "a:1", "--thread-number=3", "--active-redirection"]), &keys)
            .unwrap();
        assert_eq!(c.file, Some(PathBuf::from("p.toml")));
        assert_eq!(
            c.flags,
            vec![
                ("address".into(), "a:1".into()),
                ("thread_number".into(), "3".into()),
                ("active_redirection".into(), "true".into()),
            ]
        );
        assert!(parse_cli(&strs(&["--nope", "1"]), &keys).is_err());
        assert!(parse_cli(&strs(&["a", "b"]), &keys).is_err());
    }

    #[test]
    fn precedence_flag_over_env_over_file() {
        let dir = std::env::temp_dir().join(format!("moonraft-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "k_file = 1\nk_env = 1\nk_flag = 1\nunknown = true\n").unwrap();
        std::env::set_var("MOONRAFT_K_ENV", "2");
        std::env::set_var("MOONRAFT_K_FLAG", "2");
        let keys = ["k_file", "k_env", "k_flag"];
        let cli = parse_cli(&strs(&[file.to_str().unwrap(), "--k-flag", "3"]), &keys).unwrap();
        let mut got = std::collections::BTreeMap::new();
        let warnings = apply(&cli, &keys, |k, v| {
            got.insert(k.to_string(), v.to_string());
            Ok(())
        })
        .unwrap();
        assert_eq!(warnings.len(), 1, "the unknown key is reported: {warnings:?}");
        assert!(warnings[0].contains("unknown"));
        assert_eq!(got["k_file"], "1");
        assert_eq!(got["k_env"], "2");
        assert_eq!(got["k_flag"], "3");
        let e =
            apply(&cli, &keys, |k, v| if k == "k_env" && v == "2" { Err("bad".into()) } else { Ok(()) }).unwrap_err();
        assert!(e.to_string().contains("k_env") && e.to_string().contains("MOONRAFT_K_ENV"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
