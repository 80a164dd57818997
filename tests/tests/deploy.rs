//! `convoy-server deploy` against a real OpenSSH server on 127.0.0.1 with a
//! throwaway key, installing into temporary roots: dry run, a two-board
//! deploy verified through the agents' status on a real broker, and a broken
//! release that is rolled back.

use anyhow::Context;
use convoy_tests::Fleet;
use convoy_tests::api::deploy::{self, DeployOptions, Outcome};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A throwaway sshd on a loopback port, killed on drop.
struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    user: String,
    child: Child,
}

impl Sshd {
    fn start() -> anyhow::Result<Self> {
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .context("sshd not found: install openssh-server")?;
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        for (key, kind) in [("host_key", "ed25519"), ("client_key", "ed25519")] {
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", kind, "-N", "", "-f"])
                .arg(d.join(key))
                .status()
                .context("ssh-keygen (install openssh-client)")?;
            anyhow::ensure!(status.success(), "ssh-keygen failed");
        }
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys"))?;
        // sshd running as root wants its privilege-separation folder.
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = convoy_tests::free_port()?;
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\n\
             AuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\nUsePAM no\n\
             StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\nPubkeyAuthentication yes\nLogLevel ERROR\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config)?;
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .spawn()
            .context("starting sshd")?;
        let user = String::from_utf8(Command::new("id").arg("-un").output()?.stdout)?
            .trim()
            .to_string();
        let sshd = Sshd {
            dir,
            port,
            user,
            child,
        };
        // Ready when a login works.
        for _ in 0..50 {
            let ok = Command::new("ssh")
                .args(sshd.ssh_args())
                .arg("true")
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .status()?
                .success();
            if ok {
                return Ok(sshd);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        anyhow::bail!("sshd on port {port} did not accept the test key")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }

    fn ssh_args(&self) -> Vec<String> {
        let mut args = vec!["-p".to_string(), self.port.to_string(), "-i".into()];
        args.push(self.key().display().to_string());
        for o in SSH_OPTIONS {
            args.extend(["-o".to_string(), o.to_string()]);
        }
        args.push(format!("{}@127.0.0.1", self.user));
        args
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SSH_OPTIONS: [&str; 5] = [
    "StrictHostKeyChecking=no",
    "UserKnownHostsFile=/dev/null",
    "LogLevel=ERROR",
    "IdentitiesOnly=yes",
    "BatchMode=yes",
];

/// The native agent binary: `CONVOY_AGENT_BIN`, or the one `cargo test
/// --workspace` built beside this test.
fn agent_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("CONVOY_AGENT_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test exe folder")?;
    let bin = dir.join("convoy-agent");
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: run `cargo build -p convoy-agent` first or set CONVOY_AGENT_BIN",
        bin.display()
    );
    Ok(bin)
}

fn pid_alive(root: &Path) -> bool {
    std::fs::read_to_string(root.join("agent.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

fn stop_agent(root: &Path) {
    if let Ok(pid) = std::fs::read_to_string(root.join("agent.pid")) {
        let _ = Command::new("kill").arg(pid.trim()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs OpenSSH's sshd and ssh; CI runs it with --ignored"]
async fn deploy_installs_verifies_and_rolls_back_over_real_ssh() -> anyhow::Result<()> {
    convoy_tests::init_tracing();
    let sshd = Sshd::start()?;
    // Only the broker runs here: the boards' agents are what gets deployed.
    let fleet = Fleet::digits("deploy", 2, 11)?;
    let work = fleet.dir();
    let artifact = agent_binary()?;

    // The config template, as an operator would keep it.
    let mut template = fleet.agents[0].clone();
    template.state_dir = "/var/lib/convoy-agent".into();
    // The vehicles' keys, as `convoy-server provision car-0 car-1` writes them.
    let server = convoy_server::identity::server_key(&fleet.server.key_file())?;
    let store = convoy_store::Store::open(&fleet.server.db)?;
    let ids: Vec<convoy_shared::topics::TopicId> = vec![
        "car-0".parse().map_err(anyhow::Error::msg)?,
        "car-1".parse().map_err(anyhow::Error::msg)?,
    ];
    convoy_server::identity::provision(
        &store,
        &server.public().into(),
        &ids,
        &work.join("keys"),
        false,
    )?;
    template.data.path = "/var/lib/convoy-agent/data.csv".into();
    std::fs::write(work.join("agent.toml"), toml::to_string(&template)?)?;

    // Two boards, each a temporary root holding the vehicle's data.
    let roots: Vec<PathBuf> = (0..2).map(|i| work.join(format!("board-{i}"))).collect();
    for (i, root) in roots.iter().enumerate() {
        std::fs::create_dir_all(root.join("var/lib/convoy-agent"))?;
        std::fs::copy(
            &fleet.agents[i].data.path,
            root.join("var/lib/convoy-agent/data.csv"),
        )?;
    }
    let options: Vec<String> = SSH_OPTIONS.iter().map(|o| format!("{o:?}")).collect();
    let inventory = work.join("fleet.toml");
    let write_inventory = |artifact: &Path, verify_secs: u64| -> anyhow::Result<()> {
        let mut text = format!(
            r#"[defaults]
host = "127.0.0.1"
port = {port}
user = "{user}"
identity_file = "{key}"
ssh_options = [{options}]
artifact = "{artifact}"
config = "agent.toml"
keys_dir = "keys"
service = "command"
start_command = "nohup {{bin}} run --config {{config}} > {{root}}/agent.log 2>&1 < /dev/null & echo $! > {{root}}/agent.pid"
stop_command = "kill $(cat {{root}}/agent.pid)"
active_command = "kill -0 $(cat {{root}}/agent.pid)"
verify_timeout_secs = {verify_secs}
"#,
            port = sshd.port,
            user = sshd.user,
            key = sshd.key().display(),
            options = options.join(", "),
            artifact = artifact.display(),
        );
        for (i, root) in roots.iter().enumerate() {
            text.push_str(&format!(
                "\n[[board]]\nname = \"board-{i}\"\nclient_id = \"car-{i}\"\nroot = \"{}\"\n",
                root.display()
            ));
        }
        text.push_str("password_file = \"board-1.password\"\n");
        std::fs::write(&inventory, text)?;
        Ok(())
    };
    std::fs::write(work.join("board-1.password"), "s3cret\n")?;
    write_inventory(&artifact, 30)?;
    let opts = |label: &str, dry_run: bool, only: Vec<String>| DeployOptions {
        inventory: inventory.clone(),
        dry_run,
        only,
        parallel: 2,
        label: Some(label.into()),
    };

    // 1. Dry run: every step listed, nothing touched.
    let results = deploy::run(&opts("release-1", true, vec![])).await?;
    println!("{}", deploy::table(&results));
    assert_eq!(results.len(), 2, "{results:?}");
    assert!(results.iter().all(|r| r.outcome == Outcome::DryRun));
    assert!(results.iter().all(|r| r.steps >= 8), "{results:?}");
    assert!(!roots[0].join("usr/bin/convoy-agent").exists());

    // 2. Both boards: installed, started, seen on the broker.
    let results = deploy::run(&opts("release-1", false, vec![])).await?;
    println!("{}", deploy::table(&results));
    assert_eq!(results.len(), 2, "{results:?}");
    for r in &results {
        assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
        assert!(r.detail.contains("release-1"), "{r:?}");
    }
    let installed = std::fs::read(roots[0].join("usr/bin/convoy-agent"))?;
    assert_eq!(installed, std::fs::read(&artifact)?);
    let config = std::fs::read_to_string(roots[1].join("etc/convoy-agent/agent.toml"))?;
    assert!(config.contains("client_id = \"car-1\"") && config.contains("release-1"));
    assert!(
        !config.contains("s3cret"),
        "the password never goes into the config"
    );
    let secret = roots[1].join("etc/convoy-agent/broker-password");
    assert_eq!(std::fs::read_to_string(&secret)?.trim(), "s3cret");
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&secret)?.permissions().mode() & 0o777,
            0o600
        );
    }
    // the vehicle's own keys, from the provisioning folder
    let key = roots[0].join("etc/convoy-agent/vehicle.key");
    assert_eq!(
        std::fs::read(&key)?,
        std::fs::read(work.join("keys/car-0/vehicle.key"))?
    );
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key)?.permissions().mode() & 0o777, 0o600);
    }
    assert!(roots[0].join("etc/convoy-agent/server.pub").exists());
    assert!(pid_alive(&roots[0]) && pid_alive(&roots[1]));

    // 3. A release that cannot start: board-0 rolls back to release-1.
    let broken = work.join("broken-agent");
    std::fs::write(&broken, "#!/bin/sh\necho broken release >&2\nexit 1\n")?;
    write_inventory(&broken, 4)?;
    let results = deploy::run(&opts("release-2", false, vec!["board-0".into()])).await?;
    println!("{}", deploy::table(&results));
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].outcome, Outcome::RolledBack, "{:?}", results[0]);
    assert_eq!(
        std::fs::read(roots[0].join("usr/bin/convoy-agent"))?,
        installed
    );
    let config = std::fs::read_to_string(roots[0].join("etc/convoy-agent/agent.toml"))?;
    assert!(config.contains("release-1"), "previous config restored");
    let restarted = std::time::Instant::now();
    while !pid_alive(&roots[0]) && restarted.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(pid_alive(&roots[0]), "previous agent running again");

    for root in &roots {
        stop_agent(root);
    }
    Ok(())
}
