//! The dashboard in a real browser during a live demo run: headless
//! Chromium loads the page while rounds are still closing and again after
//! the last one, and the DOM it built is checked against the API; a
//! screenshot is kept.
//!
//! Opt-in (`--ignored`): it needs Chromium (`CONVOY_CHROMIUM`, default
//! `/usr/bin/chromium`) and the built `convoy-server` (`CONVOY_SERVER_BIN`,
//! default `$CARGO_TARGET_DIR/debug/convoy-server`). The screenshot goes
//! to `CONVOY_ARTIFACTS` (default: the system temp folder).

use convoy_tests::http::get;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

const ROUNDS: u64 = 20;
const VEHICLES: usize = 6;

fn server_bin() -> PathBuf {
    std::env::var_os("CONVOY_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
            target.join("debug/convoy-server")
        })
}

fn chromium(args: &[&str], profile: &std::path::Path) -> anyhow::Result<String> {
    let bin = std::env::var("CONVOY_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let out = Command::new(&bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            // let the page's script run its first poll before the DOM is read
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .map_err(|e| {
            anyhow::anyhow!("{bin}: {e} (install Debian's chromium, or set CONVOY_CHROMIUM)")
        })?;
    anyhow::ensure!(
        out.status.success(),
        "{bin} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Points per chart and vehicle-table rows of a DOM dump.
fn census(dom: &str) -> (Vec<(String, usize)>, usize) {
    let charts = dom
        .split("<figure class=\"chart\" data-metric=\"")
        .skip(1)
        .map(|c| {
            let metric = c.split('"').next().unwrap_or_default().to_string();
            let body = c.split("</figure>").next().unwrap_or_default();
            (metric, body.matches("class=\"pt\"").count())
        })
        .collect();
    let rows = dom
        .split("<tbody>")
        .nth(1)
        .and_then(|t| t.split("</tbody>").next())
        .map_or(0, |t| t.matches("<tr>").count());
    (charts, rows)
}

fn closed_rounds(addr: &str) -> anyhow::Result<u64> {
    let status: serde_json::Value = serde_json::from_str(&get(addr, "/api/v1/status")?.body)?;
    status["closed_rounds"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no closed_rounds in {status}"))
}

#[test]
#[ignore = "needs Chromium and the built convoy-server; run by .ci/run"]
fn the_dashboard_in_chromium_during_a_live_demo() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("demo.db");
    let mut demo = Command::new(server_bin())
        .args(["demo", "--serve-secs", "120", "--clients"])
        .arg(VEHICLES.to_string())
        .arg("--rounds")
        .arg(ROUNDS.to_string())
        .arg("--db")
        .arg(&db)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut lines = BufReader::new(demo.stdout.take().expect("piped")).lines();
    let mut next_line = |want: &str| -> anyhow::Result<String> {
        for line in lines.by_ref() {
            let line = line?;
            println!("demo: {line}");
            if line.contains(want) {
                return Ok(line);
            }
        }
        anyhow::bail!("the demo ended before printing {want:?}")
    };
    let url_line = next_line("dashboard: http://")?;
    let url = url_line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("no URL in {url_line:?}"))?
        .to_string();
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let profile = dir.path().join("chromium");

    // while rounds are still closing
    next_line("round   2")?;
    let started = Instant::now();
    let before = closed_rounds(&addr)?;
    let dom = chromium(&["--dump-dom", &url], &profile)?;
    let after = closed_rounds(&addr)?;
    let (charts, _) = census(&dom);
    println!(
        "live: {before}..{after} closed rounds around the load; points per chart {charts:?}; {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(charts.len(), 7, "one chart per metric");
    for (metric, points) in &charts {
        assert!(
            (before..=after).contains(&(*points as u64)),
            "{metric}: {points} points, {before}..{after} rounds closed"
        );
    }

    // after the last round, while the demo keeps serving
    next_line("ledger:")?;
    let started = Instant::now();
    let dom = chromium(&["--dump-dom", &url], &profile)?;
    let (charts, rows) = census(&dom);
    assert_eq!(closed_rounds(&addr)?, ROUNDS);
    for (metric, points) in &charts {
        assert_eq!(*points as u64, ROUNDS, "{metric}");
    }
    assert_eq!(rows, VEHICLES, "one table row per vehicle");
    let artifacts = std::env::var_os("CONVOY_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&artifacts)?;
    let shot = artifacts.join("dashboard.png");
    chromium(
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,1500",
            &url,
        ],
        &profile,
    )?;
    let png = std::fs::read(&shot)?;
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    println!(
        "final: {} charts x {ROUNDS} points, {rows} vehicle rows; screenshot {} ({} bytes); {:.1}s",
        charts.len(),
        shot.display(),
        png.len(),
        started.elapsed().as_secs_f64()
    );
    let _ = demo.kill();
    let _ = demo.wait();
    Ok(())
}
