//! The agent binary speaks systemd's notify protocol: READY=1 once set up
//! (even with no broker reachable: offline is normal), WATCHDOG=1 from its
//! main loop, STOPPING=1 on SIGINT/SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn agent_notifies_ready_watchdog_and_stopping() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path)?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    std::fs::write(dir.path().join("data.csv"), "a,y\n1,0\n2,1\n")?;
    let key = convoy_shared::identity::SecretKey::generate();
    key.write_new(&dir.path().join("vehicle.key"))?;
    key.public().write(&dir.path().join("server.pub"))?;
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "client_id = \"car-1\"\nstate_dir = \"state\"\n[broker]\nurl = \"mqtt://127.0.0.1:9\"\n\
         [data]\npath = \"data.csv\"\nlabel = \"y\"\n\
         [identity]\nkey_file = \"vehicle.key\"\nserver_key_file = \"server.pub\"\n",
    )?;
    // systemd sets WATCHDOG_PID to the service's pid: `exec` keeps the
    // shell's pid for the agent.
    let mut child = Command::new("sh")
        .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" run --config \"$1\""])
        .arg(env!("CARGO_BIN_EXE_convoy-agent"))
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .env("RUST_LOG", "error")
        .spawn()?;

    let mut seen = String::new();
    let mut buf = [0u8; 512];
    let started = Instant::now();
    let mut interrupted = false;
    while started.elapsed() < Duration::from_secs(15) && !seen.contains("STOPPING=1") {
        if let Ok(n) = socket.recv(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            seen.push('\n');
        }
        if !interrupted && seen.contains("READY=1") && seen.contains("WATCHDOG=1") {
            Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()?;
            interrupted = true;
        }
    }
    // STOPPING=1 comes first; the clean exit follows shortly.
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait()?.is_none() {
        let _ = child.kill();
    }
    let status = child.wait()?;
    assert!(seen.contains("READY=1"), "{seen}");
    assert!(seen.contains("WATCHDOG=1"), "{seen}");
    assert!(seen.contains("STOPPING=1"), "{seen}");
    assert!(
        status.success(),
        "agent exits cleanly on SIGINT: {status:?}"
    );
    Ok(())
}
