//! Certificates for the embedded broker and the vehicles, made with rcgen:
//! an operator CA (`convoy-server tls init`), the broker's certificate, and
//! one client certificate per vehicle for mutual TLS (`provision --tls-ca`);
//! the demo and the tests make a throwaway CA the same way at start.
//!
//! Keys are ECDSA P-256. Private keys are written readable by their owner
//! only.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A certificate could not be made, read or written.
#[derive(Debug, Error)]
pub enum TlsError {
    /// rcgen refused.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// A CA certificate and key that do not belong together.
    #[error("{0}")]
    Mismatch(String),
    /// A file could not be read or written.
    #[error("{path}: {cause}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
}

/// A certificate authority that can sign broker and vehicle certificates.
#[derive(Debug)]
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert: String,
    /// Its private key (PEM).
    pub key: String,
}

/// The files of a TLS listener and of the clients that trust it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificate clients verify the broker with (PEM).
    pub ca: PathBuf,
    /// The broker's certificate (PEM).
    pub cert: PathBuf,
    /// The broker's private key (PEM).
    pub key: PathBuf,
}

/// The common name of the CAs `convoy-server tls init` makes.
pub const OPERATOR_CA: &str = "convoy operator CA";

impl Authority {
    fn params(name: &str) -> Result<CertificateParams, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = named(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(ten_years(), 1, 1);
        Ok(params)
    }

    /// A new CA named `name` (use [`OPERATOR_CA`] for one to load again),
    /// valid for ten years.
    pub fn new(name: &str) -> Result<Self, TlsError> {
        let params = Self::params(name)?;
        let key = KeyPair::generate()?;
        let pem = params.self_signed(&key)?.pem();
        Ok(Self {
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    /// The CA in `cert` and `key` (PEM files, as [`Authority::write`] left
    /// them for a CA named [`OPERATOR_CA`]). What it signs names that CA as
    /// its issuer; the key must be the certificate's.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let pem = read(cert)?;
        let key = KeyPair::from_pem(&read(key)?)?;
        let der =
            rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
                TlsError::Mismatch(format!("{}: not a PEM certificate ({e})", cert.display()))
            })?;
        let holds = |needle: &[u8]| der.windows(needle.len()).any(|w| w == needle);
        if !holds(key.public_key_raw()) || !holds(OPERATOR_CA.as_bytes()) {
            return Err(TlsError::Mismatch(format!(
                "{} is not a CA made by `convoy-server tls init` for this key",
                cert.display()
            )));
        }
        let issuer = Issuer::new(Self::params(OPERATOR_CA)?, key);
        Ok(Self { issuer, pem })
    }

    /// The CA certificate (PEM), which clients trust.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Writes the CA certificate to `cert` and its key to `key`
    /// (owner-only).
    pub fn write(&self, cert: &Path, key: &Path) -> Result<(), TlsError> {
        write(cert, &self.pem, false)?;
        write(key, &self.issuer.key().serialize_pem(), true)
    }

    /// A server certificate for the host names and addresses in `names`.
    pub fn issue_server(&self, names: &[String]) -> Result<Issued, TlsError> {
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name = named(names.first().map_or("convoy broker", String::as_str));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate for vehicle (or server) `id`: its common name
    /// is the id.
    pub fn issue_client(&self, id: &str) -> Result<Issued, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = named(id);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, mut params: CertificateParams) -> Result<Issued, TlsError> {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(ten_years(), 1, 1);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// A throwaway CA and a broker certificate for this machine (`localhost`,
/// `127.0.0.1`, `::1`), written under `dir`: what the demo and the tests
/// run TLS with.
pub fn throwaway(dir: &Path) -> Result<TlsFiles, TlsError> {
    let ca = Authority::new("convoy throwaway CA")?;
    let names = ["localhost", "127.0.0.1", "::1"].map(String::from);
    let broker = ca.issue_server(&names)?;
    let files = TlsFiles {
        ca: dir.join("ca.crt"),
        cert: dir.join("broker.crt"),
        key: dir.join("broker.key"),
    };
    write(&files.ca, ca.pem(), false)?;
    write(&files.cert, &broker.cert, false)?;
    write(&files.key, &broker.key, true)?;
    Ok(files)
}

fn named(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

/// The first of January ten years from now: certificates outlive the
/// vehicles they are in less often than they expire unnoticed; rotate them
/// by issuing new ones (docs/security.md).
fn ten_years() -> i32 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    1970 + (now / 31_556_952) as i32 + 10
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|cause| TlsError::File {
        path: path.to_path_buf(),
        cause,
    })
}

/// Writes `text` to `path`, owner-only when `secret`.
pub fn write(path: &Path, text: &str, secret: bool) -> Result<(), TlsError> {
    let fail = |cause| TlsError::File {
        path: path.to_path_buf(),
        cause,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    std::fs::write(path, text).map_err(fail)?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throwaway_ca_signs_a_broker_certificate_rustls_accepts()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let files = throwaway(dir.path())?;
        let config = convoy_runtime::link::BrokerConfig {
            ca_file: Some(files.ca.clone()),
            ..Default::default()
        };
        convoy_runtime::link::tls_client_config(&config)?;
        // a CA written and loaded again signs vehicle certificates
        let ca = Authority::new(OPERATOR_CA)?;
        let (cert, key) = (dir.path().join("ca2.crt"), dir.path().join("ca2.key"));
        ca.write(&cert, &key)?;
        let again = Authority::load(&cert, &key)?;
        let car = again.issue_client("car-1")?;
        write(&dir.path().join("car-1.crt"), &car.cert, false)?;
        write(&dir.path().join("car-1.key"), &car.key, true)?;
        let config = convoy_runtime::link::BrokerConfig {
            ca_file: Some(cert),
            cert_file: Some(dir.path().join("car-1.crt")),
            key_file: Some(dir.path().join("car-1.key")),
            ..Default::default()
        };
        convoy_runtime::link::tls_client_config(&config)?;
        // another CA's certificate with this key is refused
        let other = dir.path().join("other.crt");
        write(&other, Authority::new(OPERATOR_CA)?.pem(), false)?;
        assert!(Authority::load(&other, &key).is_err());
        Ok(())
    }
}
