//! Where and how to reach the broker: one [`BrokerConfig`] for agent and
//! server, with the URL parsed once at load.

use crate::config::{ConfigError, env_override, resolve};
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Smallest `max_packet_size` that carries a 32 KiB model chunk with its
/// envelope and MQTT header; one rule for both binaries.
pub const MIN_PACKET_SIZE: usize = 40 * 1024;

/// A broker address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum BrokerUrl {
    /// `mqtts://host:port` (TLS; also `ssl://`, `tls://`) or `mqtt://host:port`
    /// (plain TCP; also `tcp://`, or bare `host:port`).
    Tcp {
        /// Host name or address (IPv6 without brackets).
        host: String,
        /// Port, never 0.
        port: u16,
        /// Whether the link runs TLS (`mqtts://`).
        tls: bool,
    },
    /// `memory://<name>`: the in-process broker of the fleet simulator.
    Memory(String),
}

/// The text is not a broker URL this build can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("broker url {0:?} is not of the form mqtts://host:port (TLS) or mqtt://host:port")]
pub struct BadUrl(pub String);

impl FromStr for BrokerUrl {
    type Err = BadUrl;

    fn from_str(s: &str) -> Result<Self, BadUrl> {
        let bad = || BadUrl(s.to_string());
        if let Some(name) = s.strip_prefix("memory://") {
            return if name.is_empty() {
                Err(bad())
            } else {
                Ok(BrokerUrl::Memory(name.to_string()))
            };
        }
        let (tls, rest) = match s.split_once("://") {
            Some(("mqtt" | "tcp", rest)) => (false, rest),
            Some(("mqtts" | "ssl" | "tls", rest)) => (true, rest),
            Some(_) => return Err(bad()),
            None => (false, s),
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok(BrokerUrl::Tcp {
            host: host.to_string(),
            port,
            tls,
        })
    }
}

impl TryFrom<String> for BrokerUrl {
    type Error = BadUrl;

    fn try_from(s: String) -> Result<Self, BadUrl> {
        s.parse()
    }
}

impl From<BrokerUrl> for String {
    fn from(u: BrokerUrl) -> String {
        u.to_string()
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerUrl::Tcp { host, port, tls } => {
                let scheme = if *tls { "mqtts" } else { "mqtt" };
                if host.contains(':') {
                    write!(f, "{scheme}://[{host}]:{port}")
                } else {
                    write!(f, "{scheme}://{host}:{port}")
                }
            }
            BrokerUrl::Memory(name) => write!(f, "memory://{name}"),
        }
    }
}

impl BrokerUrl {
    /// `mqtt://` (plain TCP) on `addr`.
    pub fn tcp(addr: std::net::SocketAddr) -> Self {
        BrokerUrl::Tcp {
            host: addr.ip().to_string(),
            port: addr.port(),
            tls: false,
        }
    }

    /// `mqtts://` (TLS) on `addr`.
    pub fn tls(addr: std::net::SocketAddr) -> Self {
        BrokerUrl::Tcp {
            host: addr.ip().to_string(),
            port: addr.port(),
            tls: true,
        }
    }

    /// Whether this is a plain-TCP link to a host other than this machine
    /// (`localhost` or a loopback address), which needs `allow_plaintext`.
    pub fn plaintext_off_host(&self) -> bool {
        match self {
            BrokerUrl::Tcp {
                host, tls: false, ..
            } => !is_loopback(host),
            _ => false,
        }
    }
}

/// Whether `host` names this machine: `localhost` or a loopback address.
pub fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Where and how to reach the broker. Agent and server read the same keys
/// from their `[broker]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// `mqtt://host:port`; `memory://<name>` is the simulator's in-process
    /// broker. Unset or empty: the agent uses `mqtt://127.0.0.1:1883`, the
    /// server runs its embedded broker. Env: `CONVOY_BROKER_URL`.
    #[serde(
        deserialize_with = "empty_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub url: Option<BrokerUrl>,
    /// Optional user name. Env: `CONVOY_BROKER_USERNAME`.
    pub username: Option<String>,
    /// Optional password. Env: `CONVOY_BROKER_PASSWORD`.
    pub password: Option<String>,
    /// File holding the password (first line), when `password` is unset.
    /// Without either, a systemd credential named `broker-password`
    /// (`LoadCredential=`) is used when present.
    pub password_file: Option<PathBuf>,
    /// Largest MQTT packet accepted or sent, bytes (rumqttc's own default is
    /// 10 KiB); at least [`MIN_PACKET_SIZE`].
    pub max_packet_size: usize,
    /// MQTT keep-alive, seconds (5 to 65535).
    pub keep_alive_secs: u64,
    /// CA bundle (PEM) that the broker's certificate must chain to, for
    /// `mqtts://`. Unset: the operating system's trusted roots.
    pub ca_file: Option<PathBuf>,
    /// This client's certificate chain (PEM), for brokers that require
    /// mutual TLS; with `key_file`. `convoy-server provision --tls-ca`
    /// issues one per vehicle.
    pub cert_file: Option<PathBuf>,
    /// The private key (PEM) of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Allow `mqtt://` (plain TCP) to a host other than this machine. Off:
    /// such a URL is refused at start, because anyone on the path could
    /// read every update and model; on, a warning is logged at start.
    pub allow_plaintext: bool,
}

fn empty_as_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<BrokerUrl>, D::Error> {
    let text = Option::<String>::deserialize(d)?;
    match text.as_deref() {
        None | Some("") => Ok(None),
        Some(t) => t.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            url: None,
            username: None,
            password: None,
            password_file: None,
            max_packet_size: 256 * 1024,
            keep_alive_secs: 30,
            ca_file: None,
            cert_file: None,
            key_file: None,
            allow_plaintext: false,
        }
    }
}

impl BrokerConfig {
    /// A config for `url` with the other settings at their defaults.
    pub fn at(url: BrokerUrl) -> Self {
        Self {
            url: Some(url),
            ..Self::default()
        }
    }

    /// The local broker a client uses when no URL is set.
    pub fn local() -> BrokerUrl {
        BrokerUrl::Tcp {
            host: "127.0.0.1".into(),
            port: 1883,
            tls: false,
        }
    }

    /// The URL to connect to: the configured one or the local broker.
    pub fn url_or_local(&self) -> BrokerUrl {
        self.url.clone().unwrap_or_else(Self::local)
    }

    /// Applies `CONVOY_BROKER_URL`, `CONVOY_BROKER_USERNAME` and
    /// `CONVOY_BROKER_PASSWORD`.
    pub fn apply_env(&mut self) -> Result<(), ConfigError> {
        if let Ok(text) = std::env::var("CONVOY_BROKER_URL") {
            self.url =
                if text.is_empty() {
                    None
                } else {
                    Some(text.parse().map_err(|e: BadUrl| {
                        ConfigError::Invalid(format!("CONVOY_BROKER_URL: {e}"))
                    })?)
                };
        }
        let mut user = self.username.clone().unwrap_or_default();
        env_override("CONVOY_BROKER_USERNAME", &mut user)?;
        if !user.is_empty() {
            self.username = Some(user);
        }
        let mut pass = self.password.clone().unwrap_or_default();
        env_override("CONVOY_BROKER_PASSWORD", &mut pass)?;
        if !pass.is_empty() {
            self.password = Some(pass);
        }
        Ok(())
    }

    /// Resolves `password_file` and the TLS files against the config
    /// file's folder.
    pub fn resolve_paths(&mut self, config_file: &Path) {
        for p in [
            &mut self.password_file,
            &mut self.ca_file,
            &mut self.cert_file,
            &mut self.key_file,
        ]
        .into_iter()
        .flatten()
        {
            resolve(config_file, p);
        }
    }

    /// Fills `password` from `password_file` or the systemd credential
    /// `broker-password` when it is not set directly.
    pub fn load_password(&mut self) -> Result<(), ConfigError> {
        if self.password.is_some() {
            return Ok(());
        }
        let file = match (
            &self.password_file,
            std::env::var_os("CREDENTIALS_DIRECTORY"),
        ) {
            (Some(file), _) => file.clone(),
            (None, Some(dir)) => {
                let file = Path::new(&dir).join("broker-password");
                if !file.exists() {
                    return Ok(());
                }
                file
            }
            (None, None) => return Ok(()),
        };
        let text = std::fs::read_to_string(&file).map_err(|e| {
            ConfigError::Invalid(format!(
                "cannot read broker password file {}: {e}",
                file.display()
            ))
        })?;
        self.password = Some(text.lines().next().unwrap_or_default().to_string());
        Ok(())
    }

    /// Checks the numbers a config file can get wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_packet_size < MIN_PACKET_SIZE {
            return Err(ConfigError::Invalid(format!(
                "broker.max_packet_size {} is too small; model chunks need at least {MIN_PACKET_SIZE}",
                self.max_packet_size
            )));
        }
        if !(5..=65_535).contains(&self.keep_alive_secs) {
            return Err(ConfigError::Invalid(format!(
                "broker.keep_alive_secs {} must be 5 to 65535",
                self.keep_alive_secs
            )));
        }
        if self.username.is_none() && (self.password.is_some() || self.password_file.is_some()) {
            // MQTT sends a password only with a user name: the broker
            // would see an anonymous login and close the connection
            return Err(ConfigError::Invalid(
                "broker has a password (password, password_file, CONVOY_BROKER_PASSWORD or the broker-password credential) but no username, so it would never be sent; set broker.username (a provisioned vehicle logs in with its client_id)".into(),
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(ConfigError::Invalid(
                "broker.cert_file and broker.key_file go together (a client certificate and its key, for mutual TLS); set both or neither".into(),
            ));
        }
        if let Some(url) = &self.url
            && url.plaintext_off_host()
            && !self.allow_plaintext
        {
            return Err(ConfigError::Invalid(format!(
                "broker.url {url} is plain TCP to another machine: anyone on the path could read and change every update and model. Use mqtts:// (with broker.ca_file), or set broker.allow_plaintext = true to accept the risk"
            )));
        }
        Ok(())
    }

    /// A warning for the log at start when the link runs plain TCP to
    /// another machine (allowed by `allow_plaintext`).
    pub fn plaintext_warning(&self) -> Option<String> {
        let url = self.url.as_ref()?;
        url.plaintext_off_host().then(|| {
            format!("broker.allow_plaintext = true: the link to {url} is not encrypted; anyone on the path can read every update and model (signatures still decide what counts)")
        })
    }

    /// The keep-alive interval.
    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.keep_alive_secs.max(5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_without_a_username_is_refused_naming_the_fix() {
        let mut c = BrokerConfig {
            password_file: Some("broker-password".into()),
            ..Default::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("no username") && e.contains("broker.username"),
            "{e}"
        );
        c.password_file = None;
        c.password = Some("secret".into());
        assert!(c.validate().is_err());
        c.username = Some("truck-0017".into());
        assert!(c.validate().is_ok());
    }

    #[test]
    fn parses_urls() {
        assert_eq!(
            "mqtt://127.0.0.1:1883".parse::<BrokerUrl>().unwrap(),
            BrokerConfig::local()
        );
        assert_eq!(
            "broker.local:8883".parse::<BrokerUrl>().unwrap(),
            BrokerUrl::Tcp {
                host: "broker.local".into(),
                port: 8883,
                tls: false,
            }
        );
        let tls: BrokerUrl = "mqtts://broker.local:8883".parse().unwrap();
        assert_eq!(tls.to_string(), "mqtts://broker.local:8883");
        assert!(matches!(tls, BrokerUrl::Tcp { tls: true, .. }));
        assert_eq!(
            "ssl://[::1]:8883".parse::<BrokerUrl>().unwrap().to_string(),
            "mqtts://[::1]:8883"
        );
        assert_eq!(
            "memory://sim".parse::<BrokerUrl>().unwrap(),
            BrokerUrl::Memory("sim".into())
        );
        let v6: BrokerUrl = "mqtt://[::1]:1883".parse().unwrap();
        assert_eq!(v6.to_string(), "mqtt://[::1]:1883");
        for bad in [
            "http://x:1",
            "x",
            "mqtt://:1",
            "mqtt://x:0",
            "mqtt://x:abc",
            "memory://",
        ] {
            assert!(bad.parse::<BrokerUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn toml_url_is_parsed_once_and_empty_means_unset() {
        let c: BrokerConfig = toml::from_str("url = \"\"").unwrap();
        assert_eq!(c.url, None);
        let c: BrokerConfig = toml::from_str("url = \"mqtt://h:1\"").unwrap();
        assert_eq!(c.url_or_local().to_string(), "mqtt://h:1");
        let err = toml::from_str::<BrokerConfig>("url = \"http://h\"").unwrap_err();
        assert!(err.to_string().contains("mqtt://host:port"), "{err}");
    }

    #[test]
    fn plain_tcp_off_this_machine_needs_allow_plaintext() {
        let mut c: BrokerConfig = toml::from_str("url = \"mqtt://broker.example:1883\"").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("allow_plaintext") && e.contains("mqtts://"),
            "{e}"
        );
        assert!(c.plaintext_warning().is_some());
        c.allow_plaintext = true;
        assert!(c.validate().is_ok());
        for fine in [
            "mqtt://127.0.0.1:1883",
            "mqtt://localhost:1883",
            "mqtt://[::1]:1883",
            "mqtts://broker.example:8883",
            "memory://sim",
        ] {
            let c = BrokerConfig::at(fine.parse().unwrap());
            assert!(c.validate().is_ok(), "{fine}");
            assert_eq!(c.plaintext_warning(), None, "{fine}");
        }
        let half = BrokerConfig {
            cert_file: Some("car.crt".into()),
            ..BrokerConfig::at("mqtts://b:8883".parse().unwrap())
        };
        assert!(
            half.validate()
                .unwrap_err()
                .to_string()
                .contains("key_file")
        );
    }

    #[test]
    fn small_packets_are_refused() {
        let c = BrokerConfig {
            max_packet_size: 10 * 1024,
            ..Default::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("max_packet_size")
        );
    }
}
