//! `convoy-server tls init`: an operator CA and the embedded broker's
//! certificate, for `broker.tls_listen`.

use convoy_server::tls::{Authority, write};
use std::path::PathBuf;

/// `tls`'s arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Make an operator CA (ca.crt, ca.key) unless --out already has one,
    /// and a broker certificate (broker.crt, broker.key) it signs for the
    /// host names and addresses vehicles reach the broker by.
    Init {
        /// Folder to write into.
        #[arg(long, default_value = "tls")]
        out: PathBuf,
        /// Host names and addresses for the broker's certificate (the host
        /// in the vehicles' `mqtts://` URL must be one of them).
        #[arg(long = "name", value_name = "HOST", default_values = ["localhost", "127.0.0.1"])]
        names: Vec<String>,
    },
}

/// Writes the files and says where they go.
pub fn run(args: Args) -> anyhow::Result<()> {
    let Command::Init { out, names } = args.command;
    let (ca_cert, ca_key) = (out.join("ca.crt"), out.join("ca.key"));
    let ca = if ca_cert.exists() && ca_key.exists() {
        println!("using the CA in {}", ca_cert.display());
        Authority::load(&ca_cert, &ca_key)?
    } else {
        let ca = Authority::new(convoy_server::tls::OPERATOR_CA)?;
        ca.write(&ca_cert, &ca_key)?;
        println!(
            "made a CA: {} (keep {} offline)",
            ca_cert.display(),
            ca_key.display()
        );
        ca
    };
    let broker = ca.issue_server(&names)?;
    let (cert, key) = (out.join("broker.crt"), out.join("broker.key"));
    write(&cert, &broker.cert, false)?;
    write(&key, &broker.key, true)?;
    println!(
        "made a broker certificate for {}: {}\n\
         server.toml [broker]: tls_listen = \"0.0.0.0:8883\", tls_cert = {:?}, tls_key = {:?}\n\
         each vehicle's agent.toml [broker]: url = \"mqtts://{}:8883\", ca_file = the installed copy of {}",
        names.join(", "),
        cert.display(),
        cert.display().to_string(),
        key.display().to_string(),
        names.first().map_or("HOST", String::as_str),
        ca_cert.display()
    );
    Ok(())
}
