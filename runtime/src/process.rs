//! Process plumbing shared by the convoy binaries: logging and signals.

use tokio_util::sync::CancellationToken;

/// Cancels `token` on SIGINT or SIGTERM.
pub async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    token.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    token.cancel();
}

/// Runs `job` to its end on a fresh multi-threaded runtime (`workers`
/// threads, or one per core), handing it a shutdown token that SIGINT and
/// SIGTERM cancel: every binary's `main` starts its library this way.
pub fn block_until_signal<F: std::future::Future>(
    workers: Option<usize>,
    job: impl FnOnce(CancellationToken) -> F,
) -> std::io::Result<F::Output> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    let runtime = builder.enable_all().build()?;
    Ok(runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        job(shutdown).await
    }))
}

/// Sets up `tracing` to stderr; `RUST_LOG` sets the filter, else `default`
/// (e.g. `info`). Unless `RUST_LOG` names them, the embedded broker's own
/// logs are kept to errors (it would log a warning per refused publish,
/// which a misbehaving client could turn into a flood; convoy logs the
/// refusals that matter itself), and wgpu's GL-backend errors are off, which its adapter probe
/// prints on every machine without a GL driver even when Vulkan works.
pub fn init_logging(json: bool, default: &str) {
    let mut spec = std::env::var("RUST_LOG").unwrap_or_else(|_| default.to_string());
    if !spec.contains("mqtt5") {
        spec.push_str(",mqtt5=error");
    }
    if !spec.contains("wgpu") {
        spec.push_str(",wgpu_hal::gles=off");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default},mqtt5=error")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// What `job` logs at INFO and above on this thread, as the plain text an
/// operator reads: how tests check what a run says at the default level.
pub fn logged_at_info(job: impl FnOnce()) -> String {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, job);
    let bytes = captured.0.lock().map(|b| b.clone()).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Log text written by [`logged_at_info`]'s job.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut text) = self.0.lock() {
            text.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// systemd integration for `Type=notify` units: `READY=1` once the process
/// is set up, `WATCHDOG=1` from its main loop while that loop is alive.
/// Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op.
#[derive(Debug)]
pub struct Systemd {
    watchdog: Option<std::time::Duration>,
    last_ping: std::time::Instant,
}

impl Default for Systemd {
    fn default() -> Self {
        Self::new()
    }
}

impl Systemd {
    /// Reads `WATCHDOG_USEC`; pings will come at half that interval.
    pub fn new() -> Self {
        let mut usec = 0;
        let watchdog = sd_notify::watchdog_enabled(false, &mut usec)
            .then(|| std::time::Duration::from_micros(usec) / 2);
        Self {
            watchdog,
            last_ping: std::time::Instant::now(),
        }
    }

    /// Tells systemd start-up is complete.
    pub fn ready(&self, status: &str) {
        let _ = sd_notify::notify(
            false,
            &[
                sd_notify::NotifyState::Ready,
                sd_notify::NotifyState::Status(status),
            ],
        );
    }

    /// Pings the watchdog when due; call from the main loop.
    pub fn tick(&mut self) {
        if let Some(every) = self.watchdog
            && self.last_ping.elapsed() >= every
        {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            self.last_ping = std::time::Instant::now();
        }
    }

    /// Tells systemd the process is shutting down.
    pub fn stopping(&self) {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    }
}
