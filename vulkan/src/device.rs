//! Picking a Vulkan adapter and creating the logical device.
//!
//! Policy: Vulkan backend only; prefer a discrete GPU, then an integrated one, then a virtual one.
//! CPU adapters (Mesa lavapipe/llvmpipe) run the same shaders but far slower than the CPU engine,
//! so they are skipped unless [`DeviceOptions::allow_cpu_adapter`] is set (tests set it).

use std::sync::{Arc, Mutex};

use crate::kernels::KernelTuning;
use crate::VulkanError;

pub use wgpu::{AdapterInfo, DeviceType};

/// Environment variable that the binaries read into [`DeviceOptions::allow_cpu_adapter`]
/// (`1`, `true` or `yes` allow); the error for a skipped CPU adapter names it.
pub const ALLOW_CPU_ADAPTER_ENV: &str = "XPU_RUNNER_ALLOW_CPU_ADAPTER";

/// How to pick and configure the device.
#[derive(Debug, Clone, Default)]
pub struct DeviceOptions {
    /// Accept CPU adapters (lavapipe): correct but slower than the CPU engine, so only for
    /// tests and debugging.
    pub allow_cpu_adapter: bool,
    /// Cap on the bytes of one storage binding, below the device's limit. Weights larger than
    /// this are split into chunks. Tests lower it to exercise chunking on small tensors.
    pub max_binding_bytes: Option<u64>,
    /// Use at most this many bytes of device memory (default: 90 % of the largest
    /// device-local heap). Tests lower it to exercise the context choice and its errors.
    pub memory_limit: Option<u64>,
    /// Use subgroup operations (wgpu `SUBGROUP`) in the reductions when the adapter has them.
    /// `Some(false)` forces the workgroup-memory fallback (tests run both paths).
    pub subgroups: Option<bool>,
    /// Kernel settings for benchmarks (the default is what the engine runs).
    pub tuning: KernelTuning,
}

/// The selected device with its queue and the error state reported by the driver.
pub struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    max_binding: u64,
    /// The kernels reduce with subgroup operations (the adapter has them and they are wanted).
    subgroups: bool,
    /// Timestamp queries can be written between dispatches of one pass (per-kernel profiling).
    timestamps: bool,
    /// First error wgpu reported outside of an error scope (validation, out of memory).
    errors: Arc<Mutex<Option<wgpu::Error>>>,
    /// Set by the device-lost callback.
    lost: Arc<Mutex<Option<String>>>,
    /// Bytes of the largest device-local memory heap, when the driver tells.
    memory: Option<u64>,
    tuning: KernelTuning,
}

/// Checks that the Vulkan loader library can be opened, so that "no loader" and "no adapter"
/// give different messages.
fn check_loader() -> Result<(), VulkanError> {
    // SAFETY: loading the Vulkan loader runs its initialisers, which is what wgpu does next anyway.
    match unsafe { libloading::Library::new("libvulkan.so.1") } {
        Ok(_) => Ok(()),
        Err(e) => Err(VulkanError::NoLoader {
            detail: format!("cannot open libvulkan.so.1 ({e})"),
        }),
    }
}

fn preference(t: wgpu::DeviceType) -> Option<u8> {
    match t {
        wgpu::DeviceType::DiscreteGpu => Some(0),
        wgpu::DeviceType::IntegratedGpu => Some(1),
        wgpu::DeviceType::VirtualGpu => Some(2),
        wgpu::DeviceType::Other => Some(3),
        wgpu::DeviceType::Cpu => None,
    }
}

/// The size of the adapter's largest device-local memory heap (VRAM on a discrete GPU, the
/// shared system memory on an integrated one or lavapipe), read from Vulkan's memory
/// properties, which wgpu does not expose itself.
fn device_local_heap(adapter: &wgpu::Adapter) -> Option<u64> {
    // SAFETY: the hal adapter is only read (its instance and physical device handles), while
    // `adapter` keeps it alive.
    let hal = unsafe { adapter.as_hal::<wgpu::hal::api::Vulkan>() }?;
    let instance = hal.shared_instance().raw_instance();
    // SAFETY: the physical device belongs to this instance.
    let props =
        unsafe { instance.get_physical_device_memory_properties(hal.raw_physical_device()) };
    let heaps =
        &props.memory_heaps[..(props.memory_heap_count as usize).min(props.memory_heaps.len())];
    heaps
        .iter()
        .filter(|h| h.flags.contains(ash::vk::MemoryHeapFlags::DEVICE_LOCAL))
        .map(|h| h.size)
        .max()
}

fn describe(info: &wgpu::AdapterInfo) -> String {
    format!(
        "{} ({:?}, driver {} {})",
        info.name, info.device_type, info.driver, info.driver_info
    )
}

impl Gpu {
    /// Selects an adapter per the policy above and creates a device with the adapter's full limits.
    pub fn new(opts: &DeviceOptions) -> Result<Gpu, VulkanError> {
        check_loader()?;
        let allow_cpu = opts.allow_cpu_adapter;
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = wgpu::Backends::VULKAN;
        let instance = wgpu::Instance::new(desc);
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::VULKAN));

        let mut found = Vec::new();
        let mut candidates = Vec::new();
        for adapter in adapters {
            let info = adapter.get_info();
            // CPU adapters rank last, and only when allowed.
            let rank = preference(info.device_type).or(allow_cpu.then_some(4));
            match rank {
                Some(r) => {
                    found.push(format!("{} [usable]", describe(&info)));
                    candidates.push((r, adapter));
                }
                None => found.push(format!(
                    "{} [skipped: CPU adapter; set {ALLOW_CPU_ADAPTER_ENV}=1 to allow]",
                    describe(&info)
                )),
            }
        }
        for line in &found {
            tracing::info!(adapter = %line, "vulkan adapter found");
        }
        candidates.sort_by_key(|(r, _)| *r);
        let Some((_, adapter)) = candidates.into_iter().next() else {
            return Err(VulkanError::NoSuitableAdapter { found });
        };

        let info = adapter.get_info();
        let limits = adapter.limits();
        let memory = device_local_heap(&adapter);
        let available = adapter.features();
        let subgroups =
            opts.subgroups.unwrap_or(true) && available.contains(wgpu::Features::SUBGROUP);
        let timestamp_features = wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
        let timestamps = available.contains(timestamp_features);
        let mut features = wgpu::Features::empty();
        if subgroups {
            features |= wgpu::Features::SUBGROUP;
        }
        if timestamps {
            features |= timestamp_features;
        }
        let device_desc = wgpu::DeviceDescriptor {
            label: Some("xpu-vulkan"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) =
            pollster::block_on(adapter.request_device(&device_desc)).map_err(|e| {
                VulkanError::RequestDevice {
                    adapter: describe(&info),
                    detail: e.to_string(),
                }
            })?;

        let errors: Arc<Mutex<Option<wgpu::Error>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(e);
            }
        }));
        let lost: Arc<Mutex<Option<String>>> = Arc::default();
        let lost_sink = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            // Dropping the device also reports "lost" with reason Destroyed; that is not a failure.
            if reason != wgpu::DeviceLostReason::Destroyed {
                *lost_sink.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("{reason:?}: {message}"));
            }
        });

        let device_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let max_binding = opts
            .max_binding_bytes
            .map_or(device_binding, |cap| cap.min(device_binding));
        tracing::info!(
            adapter = %describe(&info),
            max_storage_buffer_binding_size = limits.max_storage_buffer_binding_size,
            max_buffer_size = limits.max_buffer_size,
            max_compute_workgroup_storage_size = limits.max_compute_workgroup_storage_size,
            max_storage_buffers_per_shader_stage = limits.max_storage_buffers_per_shader_stage,
            chunk_bytes = max_binding,
            subgroups,
            subgroup_size_min = info.subgroup_min_size,
            subgroup_size_max = info.subgroup_max_size,
            timestamps,
            device_local_memory = ?memory,
            "vulkan device selected"
        );
        Ok(Gpu {
            device,
            queue,
            info,
            limits,
            max_binding,
            subgroups,
            timestamps,
            errors,
            lost,
            memory,
            tuning: opts.tuning,
        })
    }

    /// The kernel settings every pipeline on this device is compiled with.
    pub fn tuning(&self) -> &KernelTuning {
        &self.tuning
    }

    /// `name (type, driver ...)` of the selected adapter.
    pub fn description(&self) -> String {
        describe(&self.info)
    }

    /// The adapter's identity as the driver reports it.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// The limits the device was created with (the adapter's maximum).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Largest number of bytes one storage binding may cover (device limit, or the test cap).
    pub fn max_binding(&self) -> u64 {
        self.max_binding
    }

    /// Bytes of the device's largest device-local memory heap, when the driver reports it.
    pub fn memory_bytes(&self) -> Option<u64> {
        self.memory
    }

    /// Whether the kernels use subgroup operations for their reductions.
    pub fn subgroups(&self) -> bool {
        self.subgroups
    }

    /// Whether per-kernel GPU timestamps can be recorded (see `LlamaModel::profile_step`).
    pub fn timestamps(&self) -> bool {
        self.timestamps
    }

    /// Turns an error reported by the driver since the last check into a typed error.
    /// `what` says what the engine was doing, for the message.
    pub(crate) fn check(&self, what: &str) -> Result<(), VulkanError> {
        if let Some(detail) = self.lost.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Err(VulkanError::DeviceLost { detail });
        }
        let err = self.errors.lock().unwrap_or_else(|p| p.into_inner()).take();
        match err {
            None => Ok(()),
            Some(wgpu::Error::OutOfMemory { .. }) => Err(VulkanError::OutOfDeviceMemory {
                what: what.to_string(),
                detail: "the driver reported VK_ERROR_OUT_OF_DEVICE_MEMORY".to_string(),
            }),
            Some(e) => Err(VulkanError::Internal {
                detail: format!("while {what}: {e}"),
            }),
        }
    }

    /// Waits until all submitted work has finished.
    pub(crate) fn wait(&self, what: &str) -> Result<(), VulkanError> {
        if let Err(e) = self.device.poll(wgpu::PollType::wait_indefinitely()) {
            return match e {
                wgpu::PollError::Timeout => Err(VulkanError::Internal {
                    detail: format!("timeout while {what}"),
                }),
                other => Err(VulkanError::DeviceLost {
                    detail: format!("while {what}: {other}"),
                }),
            };
        }
        self.check(what)
    }

    /// Creates a storage buffer of `size` bytes (at least 4), usable as copy source/destination.
    pub(crate) fn storage(&self, label: &str, size: u64) -> Result<wgpu::Buffer, VulkanError> {
        self.buffer(
            label,
            size.max(4),
            wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
        )
    }

    /// Creates a storage buffer holding `data` (padded to a multiple of 16 bytes, so that
    /// kernels may read it as an array of vec4).
    pub(crate) fn storage_init(
        &self,
        label: &str,
        data: &[u8],
    ) -> Result<wgpu::Buffer, VulkanError> {
        let padded = (data.len() as u64).div_ceil(16) * 16;
        let buf = self.buffer_mapped(
            label,
            padded.max(4),
            wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
        )?;
        {
            let mut view =
                buf.slice(..)
                    .get_mapped_range_mut()
                    .map_err(|e| VulkanError::Internal {
                        detail: format!("mapping {label}: {e}"),
                    })?;
            view.slice(..data.len()).copy_from_slice(data);
        }
        buf.unmap();
        Ok(buf)
    }

    /// Creates a uniform buffer holding `data`.
    pub(crate) fn uniform_init(
        &self,
        label: &str,
        data: &[u8],
    ) -> Result<wgpu::Buffer, VulkanError> {
        let size = (data.len() as u64).div_ceil(16) * 16;
        let buf = self.buffer_mapped(
            label,
            size.max(16),
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        )?;
        {
            let mut view =
                buf.slice(..)
                    .get_mapped_range_mut()
                    .map_err(|e| VulkanError::Internal {
                        detail: format!("mapping {label}: {e}"),
                    })?;
            view.slice(..data.len()).copy_from_slice(data);
        }
        buf.unmap();
        Ok(buf)
    }

    /// Creates a host-readable buffer that results are copied into.
    pub(crate) fn buffer_map_read(
        &self,
        label: &str,
        size: u64,
    ) -> Result<wgpu::Buffer, VulkanError> {
        self.buffer(
            label,
            size,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )
    }

    /// Creates a buffer that timestamp queries are resolved into.
    pub(crate) fn buffer_query_resolve(
        &self,
        label: &str,
        size: u64,
    ) -> Result<wgpu::Buffer, VulkanError> {
        self.buffer(
            label,
            size,
            wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        )
    }

    fn buffer(
        &self,
        label: &str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer, VulkanError> {
        self.alloc(label, size, usage, false)
    }

    fn buffer_mapped(
        &self,
        label: &str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer, VulkanError> {
        self.alloc(label, size, usage, true)
    }

    fn alloc(
        &self,
        label: &str,
        size: u64,
        usage: wgpu::BufferUsages,
        mapped: bool,
    ) -> Result<wgpu::Buffer, VulkanError> {
        if size > self.limits.max_buffer_size {
            return Err(VulkanError::OutOfDeviceMemory {
                what: format!("allocating {label}"),
                detail: format!(
                    "{size} bytes exceed the device's max_buffer_size of {}",
                    self.limits.max_buffer_size
                ),
            });
        }
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: mapped,
        });
        self.check(&format!("allocating {label} ({size} bytes)"))?;
        Ok(buf)
    }

    /// Copies `size` bytes from a storage buffer back to the host.
    pub(crate) fn read_back(&self, src: &wgpu::Buffer, size: u64) -> Result<Vec<u8>, VulkanError> {
        let staging = self.buffer(
            "read-back staging",
            size,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("read-back"),
            });
        enc.copy_buffer_to_buffer(src, 0, &staging, 0, size);
        self.queue.submit([enc.finish()]);
        self.map_read(&staging, size)
    }

    /// Maps a MAP_READ buffer after the submitted work finished and copies it out.
    pub(crate) fn map_read(
        &self,
        staging: &wgpu::Buffer,
        size: u64,
    ) -> Result<Vec<u8>, VulkanError> {
        let slice = staging.slice(..size);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait("waiting for the GPU")?;
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(VulkanError::Internal {
                    detail: format!("mapping results: {e}"),
                })
            }
            Err(_) => {
                return Err(VulkanError::DeviceLost {
                    detail: "the map callback never ran".into(),
                })
            }
        }
        let out = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| VulkanError::Internal {
                    detail: format!("mapping results: {e}"),
                })?;
            view.to_vec()
        };
        staging.unmap();
        Ok(out)
    }
}
