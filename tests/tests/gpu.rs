//! The `gpu` build trains through wgpu and agrees with the CPU backend: the
//! same one-round federation run once with a vehicle on `backend = "gpu"` and
//! once on `backend = "cpu"` gives the same global model within a small
//! tolerance, and the ledger records which backend trained.
//!
//!   cargo test -p convoy-tests --features gpu --test gpu
//!
//! Needs a Vulkan (or other wgpu) adapter; Mesa's lavapipe
//! (apt mesa-vulkan-drivers) is enough.
#![cfg(feature = "gpu")]

use convoy_tests::api::Backend;
use convoy_tests::*;

/// One round with one vehicle on `backend`; the new global weights and the
/// ledger's device name.
async fn one_round(backend: Backend) -> anyhow::Result<(Vec<f32>, String, f64)> {
    let mut fleet = Fleet::digits("gpu", 1, 9)?
        .agent(0, |c| c.training.backend = backend)
        .start()
        .await?;
    let round = fleet.next_round(180).await?;
    fleet.finish().await?;
    let store = fleet.store()?;
    let device = store.clients(round.round)?[0].device.clone();
    let latest = store.latest_version()?.expect("a version");
    let params = store.load_version(&latest)?.params;
    Ok((
        params.values().collect(),
        device,
        round.accuracy.expect("the server evaluated the round"),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_round_agrees_with_the_cpu_backend() -> anyhow::Result<()> {
    init_tracing();
    let probe = api::backend::probe();
    let (gpu, gpu_device, gpu_acc) = one_round(Backend::Gpu).await?;
    let (cpu, cpu_device, cpu_acc) = one_round(Backend::Cpu).await?;
    println!("gpu: {gpu_device} accuracy {gpu_acc:.4}; cpu: {cpu_device} accuracy {cpu_acc:.4}");
    assert!(probe.gpu.is_ok(), "no GPU adapter: {:?}", probe.gpu);
    assert!(gpu_device.starts_with("gpu-wgpu"), "{gpu_device}");
    assert_eq!(cpu_device, "cpu-flex");
    assert_eq!(gpu.len(), cpu.len());
    let max_diff = gpu
        .iter()
        .zip(&cpu)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let scale = cpu.iter().map(|v| v.abs()).fold(0f32, f32::max);
    println!("max |gpu - cpu| = {max_diff:.2e} (largest weight {scale:.3})");
    assert!(max_diff < 1e-3, "backends disagree by {max_diff}");
    assert!((gpu_acc - cpu_acc).abs() < 0.02);
    Ok(())
}
