//! Brokers for the tests: the embedded broker (over TLS, with a throwaway CA
//! made once per test process) or a Mosquitto process, each on a loopback
//! port chosen with a retry when the port turns out taken.

use crate::scenario::MAX_PACKET;
use anyhow::Context;
use convoy_server::broker::{Access, BrokerError, Listen};
use convoy_server::tls::TlsFiles;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How many ports a broker tries before giving up.
const ATTEMPTS: usize = 5;

/// Ports this process has handed out: the kernel may offer a port again as
/// soon as the probing socket closes, before the broker meant for it binds.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A loopback port that was free a moment ago and that no other caller in
/// this process has been given.
pub fn free_port() -> anyhow::Result<u16> {
    for _ in 0..100 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        if HANDED_OUT.lock().expect("port registry lock").insert(port) {
            return Ok(port);
        }
    }
    anyhow::bail!("the kernel kept offering loopback ports this process already uses")
}

/// The throwaway CA and broker certificate (for `localhost`, `127.0.0.1`
/// and `::1`) of every TLS broker this test process starts, in a folder of
/// its own under the system's temporary folder.
pub fn test_tls() -> &'static TlsFiles {
    static TLS: OnceLock<TlsFiles> = OnceLock::new();
    TLS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("convoy-test-tls-{}", std::process::id()));
        convoy_server::tls::throwaway(&dir).expect("a throwaway CA in the temporary folder")
    })
}

/// A running broker the tests connect to; a Mosquitto process is killed on drop.
#[derive(Debug)]
pub struct Broker {
    addr: SocketAddr,
    tls: bool,
    _mosquitto: Option<Mosquitto>,
}

impl Broker {
    /// The embedded broker, serving TLS only (with [`test_tls`]) and letting
    /// anyone in, as an external broker the tests configure themselves; the
    /// server's own embedded broker is tested with its logins. Retried on
    /// another port when its port is taken; its thread lives until the
    /// process ends.
    pub fn embedded() -> anyhow::Result<Self> {
        Self::embedded_on(free_port)
    }

    /// The embedded broker over TLS as the server runs it: it lets in the
    /// server (`convoy-server` with `server_password`) and the vehicles
    /// provisioned in `db`, each on its own topics of `fleet`.
    pub fn embedded_with_logins(
        fleet: &str,
        server_password: &str,
        db: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let listen = Listen {
            tls: Some(test_tls().listen(addr)),
            ..Listen::default()
        };
        let access = Access::Credentials(convoy_server::broker::Credentials {
            db: db.to_path_buf(),
            fleet: fleet.into(),
            server_id: "convoy-server".into(),
            server_password: server_password.into(),
            status_readers: vec!["deployer".into()],
        });
        let started = convoy_server::broker::start(&listen, MAX_PACKET, access)?;
        Ok(Self {
            addr: started.tls.unwrap_or(addr),
            tls: true,
            _mosquitto: None,
        })
    }

    /// [`Broker::embedded`] on plain TCP (benchmarks that compare the two).
    pub fn embedded_plain() -> anyhow::Result<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let addr = convoy_server::broker::start_embedded(
            &addr.to_string(),
            MAX_PACKET,
            Access::Anonymous,
        )?;
        Ok(Self {
            addr,
            tls: false,
            _mosquitto: None,
        })
    }

    /// [`Broker::embedded`] on the ports `pick` offers.
    fn embedded_on(mut pick: impl FnMut() -> anyhow::Result<u16>) -> anyhow::Result<Self> {
        let mut last = None;
        for _ in 0..ATTEMPTS {
            let addr = SocketAddr::from(([127, 0, 0, 1], pick()?));
            let listen = Listen {
                tls: Some(test_tls().listen(addr)),
                ..Listen::default()
            };
            match convoy_server::broker::start(&listen, MAX_PACKET, Access::Anonymous) {
                Ok(started) => {
                    return Ok(Self {
                        addr: started.tls.unwrap_or(addr),
                        tls: true,
                        _mosquitto: None,
                    });
                }
                Err(e @ (BrokerError::InUse(..) | BrokerError::NotListening(_))) => {
                    last = Some(e);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(anyhow::Error::from(last.expect("at least one attempt"))).context(format!(
            "no free port for the embedded broker in {ATTEMPTS} tries"
        ))
    }

    /// A Mosquitto process (`apt-get install mosquitto`), retried on another
    /// port when it exits before listening.
    pub fn mosquitto() -> anyhow::Result<Self> {
        Self::mosquitto_with("allow_anonymous true\n")
    }

    /// [`Broker::mosquitto`] with `settings` (mosquitto.conf lines) in its
    /// config instead of anonymous access.
    pub fn mosquitto_with(settings: &str) -> anyhow::Result<Self> {
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("mosquitto");
        for _ in 0..ATTEMPTS {
            let dir = tempfile::tempdir()?;
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            let conf = dir.path().join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!(
                    "listener {} 127.0.0.1\n{settings}persistence false\n",
                    addr.port()
                ),
            )?;
            let child = Command::new(bin)
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot start mosquitto ({e}); install it: apt-get install mosquitto"
                    )
                })?;
            let mut guard = Mosquitto { child, _dir: dir };
            if guard.listening(addr)? {
                return Ok(Self {
                    addr,
                    tls: false,
                    _mosquitto: Some(guard),
                });
            }
        }
        anyhow::bail!("mosquitto did not start listening in {ATTEMPTS} tries")
    }

    /// `mqtts://127.0.0.1:<port>` (the embedded broker) or
    /// `mqtt://127.0.0.1:<port>` (Mosquitto).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        format!("{scheme}://{}", self.addr)
    }
}

/// A Mosquitto child process and its config folder.
#[derive(Debug)]
struct Mosquitto {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Waits until it accepts connections on `addr`; false when it exited
    /// first (the port was taken).
    fn listening(&mut self, addr: SocketAddr) -> anyhow::Result<bool> {
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            if self.child.try_wait()?.is_some() {
                return Ok(false);
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(10),
                "mosquitto did not start listening on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(true)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_never_handed_out_twice() -> anyhow::Result<()> {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect::<Result<_, _>>()?;
        let unique: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        Ok(())
    }

    #[test]
    fn embedded_broker_moves_on_when_its_port_is_taken() -> anyhow::Result<()> {
        let squatter = std::net::TcpListener::bind("127.0.0.1:0")?;
        let taken = squatter.local_addr()?.port();
        let mut offered = vec![];
        let broker = Broker::embedded_on(|| {
            let port = if offered.is_empty() {
                taken
            } else {
                free_port()?
            };
            offered.push(port);
            Ok(port)
        })?;
        assert_eq!(offered.len(), 2, "{offered:?}");
        assert_eq!(broker.url(), format!("mqtts://127.0.0.1:{}", offered[1]));
        assert_ne!(offered[1], taken);
        Ok(())
    }
}
