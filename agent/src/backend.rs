//! Where training runs: the GPU through wgpu when this build has the `gpu`
//! feature and an adapter answers, otherwise the CPU (burn's flex backend).
//!
//! The adapter is probed once per process. A probe never panics: no adapter,
//! no Vulkan driver or a driver that fails to open all read as "no GPU".

use crate::config::Backend;
use burn::prelude::Device;
use std::sync::OnceLock;

/// The device training uses and the name the ledger records for it.
#[derive(Debug, Clone)]
pub struct Compute {
    /// burn device (without autodiff).
    pub device: Device,
    /// e.g. `cpu-flex` or `gpu-wgpu:<adapter> (<api>)`.
    pub name: String,
}

/// What the GPU probe found: a usable device, or why not.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The GPU device, when one opened.
    pub gpu: Result<Compute, String>,
    /// The adapter is a software rasteriser (e.g. Mesa's lavapipe): usable
    /// when asked for by name, never picked by `auto`.
    pub software: bool,
}

/// The ledger's name for the CPU backend.
pub const CPU_NAME: &str = "cpu-flex";

/// The CPU device.
pub fn cpu() -> Compute {
    Compute {
        device: Device::flex(),
        name: CPU_NAME.into(),
    }
}

/// Probes for a GPU once; later calls return the same answer.
pub fn probe() -> &'static Probe {
    static PROBE: OnceLock<Probe> = OnceLock::new();
    PROBE.get_or_init(|| {
        std::panic::catch_unwind(probe_gpu).unwrap_or_else(|_| Probe {
            gpu: Err("the wgpu runtime panicked while opening the adapter".into()),
            software: false,
        })
    })
}

/// Resolves the configured backend to a device, silently (see [`explain`]).
pub fn select(backend: Backend) -> Compute {
    match backend {
        Backend::Cpu => cpu(),
        Backend::Gpu => probe().gpu.clone().unwrap_or_else(|_| cpu()),
        Backend::Auto => match probe() {
            Probe {
                gpu: Ok(gpu),
                software: false,
            } => gpu.clone(),
            _ => cpu(),
        },
    }
}

/// One log line saying which backend training will use and why.
pub fn explain(backend: Backend) {
    let chosen = select(backend);
    let device = chosen.name.as_str();
    if backend == Backend::Cpu {
        tracing::info!(device, "training on the CPU (backend = \"cpu\")");
        return;
    }
    if device != CPU_NAME {
        tracing::info!(device, "training on the GPU");
        return;
    }
    match &probe().gpu {
        Ok(gpu) => tracing::info!(
            device,
            adapter = %gpu.name,
            "only a software GPU adapter found; training on the CPU (backend = \"gpu\" uses it)"
        ),
        Err(why) if backend == Backend::Gpu => tracing::warn!(
            device,
            "backend = \"gpu\" but no GPU is usable ({why}); falling back to the CPU"
        ),
        Err(why) => tracing::info!(device, "no GPU: {why}; training on the CPU"),
    }
}

#[cfg(feature = "gpu")]
fn probe_gpu() -> Probe {
    use burn::backend::wgpu::graphics::AutoGraphicsApi;
    use burn::backend::wgpu::{RuntimeOptions, WgpuDevice, try_init_setup, wgpu::DeviceType};
    let device = WgpuDevice::default();
    match try_init_setup::<AutoGraphicsApi>(&device, RuntimeOptions::default()) {
        Ok(setup) => {
            let info = setup.adapter.get_info();
            Probe {
                gpu: Ok(Compute {
                    device: Device::new(device),
                    name: format!("gpu-wgpu:{} ({:?})", info.name, info.backend),
                }),
                software: info.device_type == DeviceType::Cpu,
            }
        }
        Err(err) => Probe {
            gpu: Err(err.to_string()),
            software: false,
        },
    }
}

#[cfg(not(feature = "gpu"))]
fn probe_gpu() -> Probe {
    Probe {
        gpu: Err("this build has no GPU support (built without the `gpu` feature)".into()),
        software: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_always_available_and_never_probes_a_gpu() {
        assert_eq!(select(Backend::Cpu).name, "cpu-flex");
    }

    #[cfg(not(feature = "gpu"))]
    #[test]
    fn without_the_gpu_feature_every_choice_falls_back_to_the_cpu() {
        assert!(probe().gpu.is_err());
        assert_eq!(select(Backend::Gpu).name, "cpu-flex");
        assert_eq!(select(Backend::Auto).name, "cpu-flex");
    }
}
