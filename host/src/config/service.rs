//! The pipeline-wide sections: `[memory]`, `[shutdown]`, `[admin]`, `[state]`.

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, PipelineConfig, ranges};

/// `[memory]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Most bytes (keys, values, headers) of source messages read and not yet
    /// acknowledged, across the pipeline, in MiB; sources wait beyond it.
    #[serde(default = "default_max_in_flight_mb")]
    pub max_in_flight_mb: Spanned<u64>,
}

fn default_max_in_flight_mb() -> Spanned<u64> {
    Spanned::new(0..0, 256)
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig { max_in_flight_mb: default_max_in_flight_mb() }
    }
}

impl MemoryConfig {
    /// The in-flight budget, in bytes.
    pub fn max_in_flight_bytes(&self) -> usize {
        (*self.max_in_flight_mb.get_ref() << 20) as usize
    }
}

/// `[shutdown]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Longest a stopping pipeline (signal or halt) waits for in-flight
    /// messages before it exits 1 without committing them.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: Spanned<u64>,
}

fn default_drain_timeout_ms() -> Spanned<u64> {
    Spanned::new(0..0, 30_000)
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { drain_timeout_ms: default_drain_timeout_ms() }
    }
}

impl ShutdownConfig {
    /// The drain timeout.
    pub fn drain_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(*self.drain_timeout_ms.get_ref())
    }
}

/// `[admin]`: the admin HTTP listener (see [`crate::admin`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Listen address; default `127.0.0.1:9090`. An address that is not a
    /// loopback one is refused unless an admin token is set.
    pub listen: Option<Spanned<String>>,
    /// The environment variable holding the bearer token that the endpoints
    /// which change things require; default `WEIR_ADMIN_TOKEN`.
    pub token_env: Option<Spanned<String>>,
    /// Largest plugin upload, in MiB; default 64.
    pub max_body_mb: Option<u64>,
    /// Never accepted (the token does not go in the file): read only to
    /// refuse it with a useful message.
    #[serde(default)]
    token: Option<toml::Value>,
}

impl AdminConfig {
    /// The listen address.
    pub fn listen(&self) -> &str {
        self.listen.as_ref().map_or(crate::admin::DEFAULT_LISTEN, |l| l.get_ref())
    }

    /// The environment variable the token is read from.
    pub fn token_env(&self) -> &str {
        self.token_env.as_ref().map_or(crate::admin::DEFAULT_TOKEN_ENV, |e| e.get_ref())
    }

    /// The largest plugin upload, in bytes.
    pub fn max_body_bytes(&self) -> usize {
        (self.max_body_mb.unwrap_or(crate::admin::DEFAULT_MAX_BODY_MB) as usize) << 20
    }

    /// The token from the environment: `None` when the variable is unset or
    /// empty, an error when its value is not fit to be a token.
    pub fn token(&self) -> Result<Option<crate::admin::Token>, String> {
        crate::admin::Token::from_env(self.token_env())
    }
}

impl PipelineConfig {
    /// An error about `key` of `[admin]`: at the key's line when it is
    /// written, else at the table's.
    pub fn admin_error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let mut offset = 0;
        for line in self.text.split_inclusive('\n') {
            if line.trim_start().starts_with("[admin]") {
                let at = offset + line.len() - line.trim_start().len() + 1;
                return self.error_at_key(&Spanned::new(at..at, ()), key, message);
            }
            offset += line.len();
        }
        ConfigError::new(message)
    }

    pub(super) fn validate_admin(&self, admin: &AdminConfig) -> Result<(), ConfigError> {
        let env = admin.token_env();
        if admin.token.is_some() {
            return Err(self.admin_error(
                "token",
                format!(
                    "[admin] token: the token does not go in the pipeline file (anyone who can read the file, \
                     or its history, could read it); set the environment variable {env} instead, or name \
                     another variable with `token_env`"
                ),
            ));
        }
        let env_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
        if env.is_empty() || !env.chars().all(env_name) || env.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(self.admin_error(
                "token_env",
                format!("[admin] token_env = {env:?} is not an environment variable name (letters, digits, `_`)"),
            ));
        }
        if let Some(mb) = admin.max_body_mb {
            ranges::check("max_body_mb", mb, &ranges::ADMIN_MAX_BODY_MB)
                .map_err(|m| self.admin_error("max_body_mb", format!("[admin]: {m}")))?;
        }
        let token = admin.token().map_err(|m| self.admin_error("token_env", format!("[admin]: {m}")))?;
        let listen = admin.listen();
        if token.is_none() && !crate::admin::is_loopback(listen) {
            return Err(self.admin_error(
                "listen",
                format!(
                    "[admin] listen = {listen:?} is not a loopback address and no admin token is set, so anyone \
                     who can reach that port could replace a stage's code; set the environment variable {env} \
                     to a secret of at least {} characters (e.g. `export {env}=$(openssl rand -hex 32)`) \
                     before starting weir, or listen on 127.0.0.1",
                    crate::admin::MIN_TOKEN_LEN
                ),
            ));
        }
        Ok(())
    }
}

/// `[state]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Folder for stage state; default `.weir/state` beside the pipeline file.
    pub dir: Option<String>,
    /// How often stage state and the source positions it covers are made
    /// durable together (a checkpoint); sources commit to their brokers only
    /// what a checkpoint covers.
    #[serde(default = "default_checkpoint_interval_ms")]
    pub checkpoint_interval_ms: Spanned<u64>,
}

fn default_checkpoint_interval_ms() -> Spanned<u64> {
    Spanned::new(0..0, 1000)
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig { dir: None, checkpoint_interval_ms: default_checkpoint_interval_ms() }
    }
}

impl StateConfig {
    /// The checkpoint interval.
    pub fn checkpoint_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(*self.checkpoint_interval_ms.get_ref())
    }
}
