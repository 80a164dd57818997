//! `convoy-server provision`: each vehicle's broker password and key pair.

use super::DbArgs;
use convoy_shared::topics::TopicId;
use convoy_store::Store;
use std::path::PathBuf;

/// `provision`'s arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    store: DbArgs,
    /// Folder to write one sub-folder per vehicle into.
    #[arg(long, default_value = "provisioned")]
    out: PathBuf,
    /// Re-key vehicles already provisioned (their old key and password stop working).
    #[arg(long, conflicts_with = "rotate")]
    replace: bool,
    /// Rotate the keys of vehicles already provisioned: each gets a new key
    /// pair in --out (install its new vehicle.key); what its old key signed
    /// still counts for --overlap-hours, then is refused. Passwords stay.
    #[arg(long)]
    rotate: bool,
    /// With --rotate: hours the old key still counts (default:
    /// identity.rotation_overlap_hours, 168).
    #[arg(long, requires = "rotate")]
    overlap_hours: Option<u64>,
    /// Also write `mosquitto.passwd` (these vehicles' lines added or
    /// replaced, and the server's when the config has broker.username and
    /// a password) and `mosquitto.acl` into --out, for an external Mosquitto.
    #[arg(long)]
    mosquitto: bool,
    /// Also issue each vehicle a client certificate (`vehicle.crt`,
    /// `vehicle-tls.key`) signed by this operator CA (`convoy-server tls init`
    /// wrote `ca.crt` and `ca.key`), for a broker that requires mutual TLS
    /// (broker.tls_client_ca).
    #[arg(long, value_name = "CA.crt", requires = "tls_ca_key")]
    tls_ca: Option<PathBuf>,
    /// The operator CA's private key, with --tls-ca.
    #[arg(long, value_name = "CA.key")]
    tls_ca_key: Option<PathBuf>,
    /// Client ids to provision.
    #[arg(required = true, value_name = "VEHICLE")]
    vehicles: Vec<TopicId>,
}

/// Provisions the vehicles and prints where each one's files are.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut config = args.store.require_config("provision")?;
    if let Some(db) = args.store.db {
        config.db = db;
    }
    let key = convoy_server::identity::server_key(&config.key_file())?;
    // read the CA before anything is written, so a wrong path changes nothing
    let authority = match (&args.tls_ca, &args.tls_ca_key) {
        (Some(cert), Some(key)) => Some(convoy_server::tls::Authority::load(cert, key)?),
        _ => None,
    };
    let store = Store::open(&config.db)?;
    let server = convoy_server::identity::server_trusted(&key, &config.key_file());
    if args.rotate {
        let hours = args
            .overlap_hours
            .unwrap_or(config.identity.rotation_overlap_hours);
        let until = convoy_runtime::clock::now_ms() + hours * 3_600_000;
        let made = convoy_server::identity::rotate_vehicles(
            &store,
            &server,
            &args.vehicles,
            &args.out,
            until,
        )?;
        for v in &made {
            println!("{:<24} {}  {}", v.client, v.public_key, v.dir.display());
        }
        println!(
            "install each folder's new vehicle.key on its vehicle; what the old keys signed counts for {hours} h more"
        );
        return Ok(());
    }
    let made = convoy_server::identity::provision(
        &store,
        &server,
        &args.vehicles,
        &args.out,
        args.replace,
    )?;
    println!("server public key {}", key.public());
    for v in &made {
        println!("{:<24} {}  {}", v.client, v.public_key, v.dir.display());
    }
    println!(
        "install each folder's vehicle.key, server.pub and broker-password on its vehicle (see [identity] and broker.password_file in agent.toml)"
    );
    if let Some(ca) = &authority {
        for v in &made {
            let issued = ca.issue_client(v.client.as_str())?;
            convoy_server::tls::write(&v.dir.join("vehicle.crt"), &issued.cert, false)?;
            convoy_server::tls::write(&v.dir.join("vehicle-tls.key"), &issued.key, true)?;
            convoy_server::tls::write(&v.dir.join("ca.crt"), ca.pem(), false)?;
        }
        println!(
            "and, for mutual TLS, vehicle.crt, vehicle-tls.key and ca.crt (broker.cert_file, broker.key_file, broker.ca_file)"
        );
    }
    if args.mosquitto {
        let server = config
            .broker
            .link
            .username
            .clone()
            .unwrap_or_else(|| config.broker.client_id.clone());
        let mut accounts: Vec<(String, String)> = made
            .iter()
            .map(|v| (v.client.to_string(), v.password.clone()))
            .collect();
        if let Some(password) = &config.broker.link.password {
            accounts.push((server.clone(), password.clone()));
        }
        convoy_server::mosquitto::write(
            &args.out,
            &config.fleet,
            (server.as_str(), config.broker.status_readers.as_slice()),
            &accounts,
        )?;
        let dir = args.out.display();
        println!(
            "wrote {dir}/mosquitto.passwd and {dir}/mosquitto.acl (mode 600): give them to Mosquitto's user (chown mosquitto), set password_file and acl_file in mosquitto.conf to them (allow_anonymous false) and reload Mosquitto"
        );
    }
    Ok(())
}
