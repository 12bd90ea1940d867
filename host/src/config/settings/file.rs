//! `jobhost.toml` as written: the tables and their values, parsed but not yet checked or
//! layered ([`super::Settings::resolve`] does that).

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use super::SettingsError;

/// `jobhost.toml` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    /// Directory of plugin libraries.
    pub plugin_dir: Option<PathBuf>,
    /// The allowlist file.
    pub allowlist: Option<PathBuf>,
    /// Directory for jobhost's own state.
    pub state_dir: Option<PathBuf>,
    /// Directory of the two log files.
    pub log_dir: Option<PathBuf>,
    /// Environment name (the log channel): `local`, `production`, ...
    pub env: Option<String>,
    /// The job database: a `postgres://` URL; SQLite under the state directory if absent.
    pub store: Option<String>,
    /// Defaults for jobs that do not say otherwise.
    #[serde(default)]
    pub defaults: RawDefaults,
    /// Limits.
    #[serde(default)]
    pub limits: RawLimits,
    /// The dispatcher.
    #[serde(default)]
    pub dispatcher: RawDispatcher,
    /// The admin dashboard.
    #[serde(default)]
    pub web: RawWeb,
    /// How long finished jobs are kept.
    #[serde(default)]
    pub retention: RawRetention,
}

/// The `[retention]` table, as written: each value is checked (and named when refused) by
/// [`super::Settings::resolve`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    /// Seconds completed jobs are kept; 0 keeps them forever.
    pub completed: Option<toml::Value>,
    /// Seconds failed jobs are kept; 0 keeps them forever.
    pub failed: Option<toml::Value>,
    /// Seconds cancelled jobs are kept; 0 keeps them forever.
    pub cancelled: Option<toml::Value>,
    /// Seconds between two prunings by the dispatcher.
    pub interval: Option<toml::Value>,
}

/// The `[web]` table: the admin dashboard `jobhost serve` runs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeb {
    /// Whether `jobhost serve` runs the dashboard.
    pub enabled: Option<bool>,
    /// The address it listens on, `IP:PORT`.
    pub listen: Option<SocketAddr>,
    /// The admin token; generated at each start when neither this nor the environment sets one.
    #[serde(default, deserialize_with = "de_token")]
    pub admin_token: Option<String>,
    /// The reverse proxies whose `X-Forwarded-For` names the client: addresses and CIDR ranges.
    #[serde(default, deserialize_with = "de_proxies")]
    pub trusted_proxies: Option<Vec<IpRange>>,
}

/// An address (`127.0.0.1`, `::1`) or a CIDR range of them (`10.0.0.0/8`, `fd00::/8`), as
/// `web.trusted_proxies` lists them. IPv4 addresses written as IPv6 (`::ffff:10.0.0.1`) are
/// IPv4 addresses here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    first: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Parses `10.0.0.0/8`, `::1`, ...; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("{text:?} is not an IP address or CIDR range ({why})");
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| bad("such as 127.0.0.1, ::1 or 10.0.0.0/8"))?;
        let addr = addr.to_canonical();
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(text) => text
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits && p.to_string() == text)
                .ok_or_else(|| bad(&format!("the prefix length must be 0 to {bits}")))?,
        };
        Ok(Self {
            first: addr,
            prefix,
        })
    }

    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let masked = |bits: u128, width: u32| {
            let shift = width - u32::from(self.prefix);
            bits.checked_shr(shift).unwrap_or(0)
        };
        match (self.first, ip.to_canonical()) {
            (IpAddr::V4(first), IpAddr::V4(ip)) => {
                masked(u32::from(first).into(), 32) == masked(u32::from(ip).into(), 32)
            }
            (IpAddr::V6(first), IpAddr::V6(ip)) => {
                masked(u128::from(first), 128) == masked(u128::from(ip), 128)
            }
            _ => false,
        }
    }
}

/// The `[dispatcher]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDispatcher {
    /// Attempts run at once.
    pub slots: Option<usize>,
    /// Seconds a dispatcher started by `jobhost run` waits idle before it exits.
    #[serde(default, deserialize_with = "de_secs")]
    pub idle_exit: Option<Duration>,
    /// Seconds running attempts get to finish when the dispatcher is asked to stop.
    #[serde(default, deserialize_with = "de_secs")]
    pub shutdown_grace: Option<Duration>,
    /// Seconds without a heartbeat after which other dispatchers rescue a dispatcher's jobs.
    #[serde(default, deserialize_with = "de_secs")]
    pub lease: Option<Duration>,
    /// Whether `jobhost run` (and the Rust API) start a dispatcher when none serves.
    pub autostart: Option<bool>,
    /// How workers are started: `exec` or `fork`.
    pub runner: Option<super::Runner>,
}

/// The `[defaults]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    /// Retries after the first failed attempt.
    pub retries: Option<u32>,
    /// Seconds between attempts.
    #[serde(default, deserialize_with = "de_secs")]
    pub retry_delay: Option<Duration>,
    /// Seconds an attempt may run.
    #[serde(default, deserialize_with = "de_secs")]
    pub timeout: Option<Duration>,
}

/// The `[limits]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Largest params, as JSON bytes.
    pub max_params_bytes: Option<usize>,
    /// Deepest params, in nested arrays and objects.
    pub max_params_depth: Option<usize>,
    /// Output kept per attempt, in bytes.
    pub max_output_bytes: Option<u64>,
    /// Largest file in the plugin directory that is read, in bytes.
    pub max_plugin_bytes: Option<u64>,
    /// Seconds between asking a job to stop and killing it.
    #[serde(default, deserialize_with = "de_secs")]
    pub kill_grace: Option<Duration>,
    /// Seconds loading a plugin file to inspect it may take.
    #[serde(default, deserialize_with = "de_secs")]
    pub inspect_timeout: Option<Duration>,
}

impl RawSettings {
    /// Reads and parses a settings file.
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        let text = crate::shared::files::read_capped_text(
            path,
            crate::shared::files::MAX_SETTINGS_BYTES,
            "a settings file",
        )
        .map_err(|source| SettingsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let raw: RawSettings = toml::from_str(&text).map_err(|e| SettingsError::Parse {
            path: path.to_path_buf(),
            line: crate::shared::text::line_of(&text, e.span().map_or(0, |s| s.start)),
            message: e.message().to_owned(),
        })?;
        Ok(raw)
    }
}

fn de_secs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let v = f64::deserialize(d)?;
    secs_from_f64(v).map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "expected a non-negative number of seconds, got {v}"
        ))
    })
}

/// A finite, non-negative number of seconds as a duration; one too long for a [`Duration`]
/// is the longest, for the bound it is checked against to refuse with its range.
pub(super) fn secs_from_f64(v: f64) -> Option<Duration> {
    (v.is_finite() && v >= 0.0).then(|| Duration::try_from_secs_f64(v).unwrap_or(Duration::MAX))
}

fn de_token<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let token = String::deserialize(d)?;
    if token.trim().is_empty() {
        return Err(serde::de::Error::custom(
            "the admin token must not be empty (leave it out to have one generated)",
        ));
    }
    Ok(Some(token))
}

fn de_proxies<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<IpRange>>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|text| IpRange::parse(text.trim()).map_err(serde::de::Error::custom))
        .collect::<Result<_, _>>()
        .map(Some)
}
