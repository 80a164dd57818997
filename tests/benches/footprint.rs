//! Agent footprint, measured on real processes: cold start to the first MQTT
//! status message, peak RSS while training the reference MLP (784-128-10,
//! Fashion-MNIST, 3,000 local rows, batch 32, codec topk:0.1+q8+zstd), and
//! RSS and CPU while idle between rounds. Prints one row per agent binary.
//!
//!   cargo build --release -p convoy-agent
//!   CONVOY_AGENT_BIN=$PWD/target/release/convoy-agent \
//!   CONVOY_CROSS_AGENT=$PWD/dist/aarch64-musl/convoy-agent \
//!   cargo bench -p convoy-tests --bench footprint
//!
//! Rows: the native binary (`CONVOY_AGENT_BIN`) and, when set, the
//! cross-built one under `CONVOY_CROSS_RUNNER` (default qemu-aarch64); the
//! emulator's own memory is included in that row's RSS. Needs Debian's
//! dataset-fashion-mnist.

use anyhow::Context;
use convoy_tests::Fleet;
use convoy_tests::api::{ClientTopic, DEFAULT_CODEC, TaskKind, idx};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const DATA: &str = "/usr/share/datasets/fashion-mnist";
const TRAIN_ROWS: usize = 3000;
const TEST_ROWS: usize = 1000;
const IDLE_SECS: u64 = 10;

/// Writes `rows` images with their labels as a CSV (features px0.., label).
fn write_csv(
    path: &Path,
    images: &idx::Images,
    labels: &[u8],
    rows: std::ops::Range<usize>,
) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let names = idx::feature_names(images.rows, images.cols);
    writeln!(out, "{},label", names.join(","))?;
    let dims = images.rows * images.cols;
    for r in rows {
        let px = &images.pixels[r * dims..(r + 1) * dims];
        let line: Vec<String> = px.iter().map(|p| p.to_string()).collect();
        writeln!(out, "{},{}", line.join(","), labels[r])?;
    }
    Ok(())
}

fn proc_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

struct Row {
    name: String,
    start_ms: f64,
    train_s: f64,
    peak_mb: f64,
    idle_mb: f64,
    idle_cpu: f64,
}

async fn measure(
    name: &str,
    command: &[PathBuf],
    test_csv: &Path,
    client_csv: &Path,
) -> anyhow::Result<Row> {
    let mut fleet = Fleet::digits(&format!("footprint-{name}"), 1, 1)?
        .server(|s| {
            s.model.schema_csv = Some(test_csv.to_path_buf());
            s.model.label = Some("label".into());
            s.model.hidden = vec![128];
            s.eval.test_csv = Some(test_csv.to_path_buf());
            s.training.batch_size = 32;
            s.rounds.codec = DEFAULT_CODEC.parse().expect("the demo codec parses");
            s.rounds.deadline_secs = 600;
        })
        .agent(0, |a| {
            a.data.path = client_csv.to_path_buf();
            a.data.label = "label".into();
            a.data.task = TaskKind::Classification;
        })
        .hold_server()
        .hold_agent(0)
        .start()
        .await?;
    let agent = fleet.agents[0].config.clone();
    let config = fleet.dir().join("agent.toml");
    std::fs::write(&config, toml::to_string(&agent)?)?;

    let mut watch = fleet.wire("footprint-watch").await?;
    watch
        .subscribe(&fleet.topic(ClientTopic::Status, &agent.client_id))
        .await?;

    fleet.start_server();
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", command[0].display()))?;
    let pid = child.id().context("agent pid")?;
    watch.next(120).await?;
    let start_ms = started.elapsed().as_secs_f64() * 1e3;

    let round = fleet.next_round(600).await?;
    anyhow::ensure!(
        round.clients_reported == 1,
        "agent did not report: {round:?}"
    );
    fleet.server_finished().await?;
    let train_s = fleet.store()?.clients(round.round)?[0].train_seconds;
    // Idle: the round is over, the agent waits for the next one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ticks0 = cpu_ticks(pid).context("agent exited")?;
    tokio::time::sleep(Duration::from_secs(IDLE_SECS)).await;
    let ticks1 = cpu_ticks(pid).context("agent exited")?;
    let idle_kb = proc_field(pid, "VmRSS:").unwrap_or(0);
    let peak_kb = proc_field(pid, "VmHWM:").unwrap_or(0);
    child.start_kill()?;
    let _ = child.wait().await;
    Ok(Row {
        name: name.into(),
        start_ms,
        train_s,
        peak_mb: peak_kb as f64 / 1024.0,
        idle_mb: idle_kb as f64 / 1024.0,
        idle_cpu: (ticks1 - ticks0) as f64 / 100.0 / IDLE_SECS as f64 * 100.0,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let open = |f: &str| {
        std::fs::File::open(Path::new(DATA).join(f))
            .with_context(|| format!("{DATA}/{f} (apt-get install dataset-fashion-mnist)"))
    };
    let images = idx::read_images(open("train-images-idx3-ubyte.gz")?, 100_000)?;
    let labels = idx::read_labels(open("train-labels-idx1-ubyte.gz")?, 100_000)?;
    let work = tempfile::tempdir()?;
    let test_csv = work.path().join("test.csv");
    let client_csv = work.path().join("client.csv");
    write_csv(&test_csv, &images, &labels, 0..TEST_ROWS)?;
    write_csv(
        &client_csv,
        &images,
        &labels,
        TEST_ROWS..TEST_ROWS + TRAIN_ROWS,
    )?;

    let mut runs: Vec<(String, Vec<PathBuf>)> = Vec::new();
    let native = std::env::var_os("CONVOY_AGENT_BIN")
        .map(PathBuf::from)
        .context("set CONVOY_AGENT_BIN to a release agent binary")?;
    runs.push(("native".into(), vec![native]));
    if let Some(cross) = std::env::var_os("CONVOY_CROSS_AGENT") {
        let runner = std::env::var("CONVOY_CROSS_RUNNER").unwrap_or_else(|_| "qemu-aarch64".into());
        runs.push((runner.clone(), vec![runner.into(), cross.into()]));
    }
    let mut rows = Vec::new();
    for (name, command) in &runs {
        eprintln!("measuring {name} ...");
        rows.push(measure(name, command, &test_csv, &client_csv).await?);
    }
    println!(
        "\n{:<14} {:>16} {:>10} {:>14} {:>13} {:>14}",
        "agent", "start->status ms", "train s", "peak RSS MiB", "idle RSS MiB", "idle CPU %"
    );
    for r in rows {
        println!(
            "{:<14} {:>16.0} {:>10.2} {:>14.1} {:>13.1} {:>14.2}",
            r.name, r.start_ms, r.train_s, r.peak_mb, r.idle_mb, r.idle_cpu
        );
    }
    Ok(())
}
