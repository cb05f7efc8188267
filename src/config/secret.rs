//! Secrets in configuration: where one comes from (`SecretRef`: an environment variable or a file, never
//! the config file itself) and the resolved value (`Secret`), whose `Debug` never shows it.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

/// Where a secret comes from. Secrets are never written in config files.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default)]
    pub file: Option<PathBuf>,
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names of variables and files are not secret, but keep Debug uniform with `Secret`.
        f.debug_struct("SecretRef").field("env", &self.env).field("file", &self.file).finish()
    }
}

/// A resolved secret value; `Debug` redacts it (there is no `Display`, so it cannot be formatted by accident).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl SecretRef {
    pub fn resolve(&self) -> Result<Secret, String> {
        match (&self.env, &self.file) {
            (Some(var), None) => {
                std::env::var(var).map(Secret).map_err(|_| format!("environment variable `{var}` is not set"))
            }
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|s| Secret(s.trim_end_matches(['\r', '\n']).to_string()))
                .map_err(|e| format!("cannot read secret file `{}`: {e}", path.display())),
            _ => Err("a secret needs exactly one of `env` or `file`".into()),
        }
    }
}
