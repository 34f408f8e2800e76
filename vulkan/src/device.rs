//! Picking a Vulkan adapter and creating the logical device.
//!
//! Policy: Vulkan backend only; prefer a discrete GPU, then an integrated one, then a virtual one.
//! CPU adapters (Mesa lavapipe/llvmpipe) run the same shaders but far slower than the CPU engine,
//! so they are skipped unless [`DeviceOptions::allow_cpu_adapter`] is set (tests set it).

use std::sync::{Arc, Mutex};

use crate::kernels::{KernelTuning, Prefill};
use crate::VulkanError;

pub use wgpu::{AdapterInfo, DeviceType};

/// Environment variable that the binaries read into [`DeviceOptions::allow_cpu_adapter`]
/// (`1`, `true` or `yes` allow); the error for a skipped CPU adapter names it.
pub const ALLOW_CPU_ADAPTER_ENV: &str = "XPU_RUNNER_ALLOW_CPU_ADAPTER";

/// How to pick and configure the device.
#[derive(Debug, Clone, Default)]
pub struct DeviceOptions {
    /// Which adapters the model runs on (`--devices`): several split its layers.
    pub devices: DeviceSelection,
    /// Relative layer shares per selected device (`--split 3,1`); `None`: in proportion to
    /// each device's usable memory.
    pub split: Option<Vec<u32>>,
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

/// Environment variable that the binaries read into [`DeviceOptions::devices`].
pub const DEVICES_ENV: &str = "XPU_RUNNER_DEVICES";
/// Environment variable that the binaries read into [`DeviceOptions::split`].
pub const SPLIT_ENV: &str = "XPU_RUNNER_SPLIT";

/// Which Vulkan adapters a model runs on (`--devices`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DeviceSelection {
    /// Every discrete GPU; when there is none, the one preferred adapter (integrated, then
    /// virtual, then a CPU adapter when allowed). An integrated GPU joins only when named.
    #[default]
    Auto,
    /// These adapters, in this order (the first gets the embedding, the last the output
    /// head). An adapter named twice opens two devices on it.
    List(Vec<AdapterSelector>),
}

/// One entry of `--devices`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdapterSelector {
    /// The position in the adapter list the engine logs at start (`vulkan adapter found`):
    /// adapters with a PCI address sorted by it, then the others (CPU adapters) by name.
    Index(usize),
    /// A PCI address as `xpu-probe` reports it (`0000:03:00.0`; the domain may be left out).
    Pci(String),
}

impl std::fmt::Display for AdapterSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdapterSelector::Index(i) => write!(f, "{i}"),
            AdapterSelector::Pci(a) => f.write_str(a),
        }
    }
}

impl std::str::FromStr for DeviceSelection {
    type Err = String;

    /// `auto`, or a comma-separated list of adapter indices and PCI addresses (`0,1`,
    /// `0000:03:00.0,0000:04:00.0`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("auto") {
            return Ok(DeviceSelection::Auto);
        }
        let expected = "expected `auto` or a comma-separated list of adapter indices (0, 1, ...) and PCI addresses (0000:03:00.0)";
        if s.is_empty() {
            return Err(format!("empty device list; {expected}"));
        }
        s.split(',')
            .map(|entry| {
                let entry = entry.trim();
                if let Ok(i) = entry.parse::<usize>() {
                    return Ok(AdapterSelector::Index(i));
                }
                parse_pci_address(entry)
                    .map(AdapterSelector::Pci)
                    .ok_or_else(|| {
                        format!(
                            "`{entry}` is neither an adapter index nor a PCI address; {expected}"
                        )
                    })
            })
            .collect::<Result<_, _>>()
            .map(DeviceSelection::List)
    }
}

/// A PCI address in the form `xpu-probe` and wgpu write it (`dddd:bb:dd.f`, lower case);
/// `bb:dd.f` means domain 0.
fn parse_pci_address(s: &str) -> Option<String> {
    let s = s.to_ascii_lowercase();
    let full = if s.matches(':').count() == 1 {
        format!("0000:{s}")
    } else {
        s
    };
    let (domain, rest) = full.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (dev, func) = rest.split_once('.')?;
    let hex = |x: &str, max_len: usize| {
        (!x.is_empty() && x.len() <= max_len)
            .then(|| u32::from_str_radix(x, 16).ok())
            .flatten()
    };
    let function = func
        .parse::<u8>()
        .ok()
        .filter(|f| func.len() == 1 && *f < 8)?;
    Some(format!(
        "{:04x}:{:02x}:{:02x}.{function}",
        hex(domain, 8)?,
        hex(bus, 2)?,
        hex(dev, 2)?
    ))
}

impl std::str::FromStr for AdapterSelector {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<DeviceSelection>()? {
            DeviceSelection::List(mut one) if one.len() == 1 => Ok(one.remove(0)),
            _ => Err(format!("`{s}` is not one adapter")),
        }
    }
}

/// Parses `--split 3,1`: a positive share per device.
pub fn parse_split(s: &str) -> Result<Vec<u32>, String> {
    s.split(',')
        .map(|x| match x.trim().parse::<u32>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "`{}` in --split {s} is not a positive whole number; give one share per device, e.g. --split 3,1",
                x.trim()
            )),
        })
        .collect()
}

/// The selected device with its queue and the error state reported by the driver.
pub struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    /// Position of the adapter in the engine's adapter list (see [`AdapterSelector::Index`]).
    index: usize,
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
    lost: LostFlag,
    /// Bytes of the largest device-local memory heap, when the driver tells.
    memory: Option<u64>,
    tuning: KernelTuning,
    /// The cooperative-matrix configurations the driver lists, described (see
    /// [`Gpu::cooperative_matrices`]).
    cooperative_matrices: String,
    /// The subgroup size `matmul_coop` is built for, where prompt batches use it.
    coop_subgroup: Option<u32>,
    /// Which prompt-batch product runs and why, for [`Gpu::prefill_product`].
    prefill_product: String,
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

/// Logs every adapter with the index that `--devices` names it by.
fn log_adapters(adapters: &[wgpu::Adapter]) {
    for (i, adapter) in adapters.iter().enumerate() {
        tracing::info!(adapter = %list_entry(i, &adapter.get_info()), "vulkan adapter found");
    }
}

/// The index of the preferred adapter (discrete, integrated, virtual, other, then a CPU
/// adapter when allowed).
fn preferred(adapters: &[wgpu::Adapter], allow_cpu: bool) -> Result<usize, VulkanError> {
    let mut found = Vec::new();
    let mut best: Option<(u8, usize)> = None;
    for (i, adapter) in adapters.iter().enumerate() {
        let info = adapter.get_info();
        // CPU adapters rank last, and only when allowed.
        match preference(info.device_type).or(allow_cpu.then_some(4)) {
            Some(rank) => {
                found.push(format!("{} [usable]", list_entry(i, &info)));
                if best.is_none_or(|(b, _)| rank < b) {
                    best = Some((rank, i));
                }
            }
            None => found.push(format!(
                "{} [skipped: CPU adapter; set {ALLOW_CPU_ADAPTER_ENV}=1 to allow]",
                list_entry(i, &info)
            )),
        }
    }
    best.map(|(_, i)| i)
        .ok_or(VulkanError::NoSuitableAdapter { found })
}

/// The index of the adapter one `--devices` entry names.
fn resolve(
    adapters: &[wgpu::Adapter],
    selector: &AdapterSelector,
    allow_cpu: bool,
) -> Result<usize, VulkanError> {
    let choices = || {
        adapters
            .iter()
            .enumerate()
            .map(|(i, a)| list_entry(i, &a.get_info()))
            .collect::<Vec<_>>()
    };
    let index = match selector {
        AdapterSelector::Index(i) if *i < adapters.len() => *i,
        AdapterSelector::Pci(address) => adapters
            .iter()
            .position(|a| a.get_info().device_pci_bus_id == *address)
            .ok_or_else(|| VulkanError::NoSuchDevice {
                asked: selector.to_string(),
                choices: choices(),
            })?,
        AdapterSelector::Index(_) => {
            return Err(VulkanError::NoSuchDevice {
                asked: selector.to_string(),
                choices: choices(),
            })
        }
    };
    let info = adapters[index].get_info();
    if info.device_type == wgpu::DeviceType::Cpu && !allow_cpu {
        return Err(VulkanError::NoSuitableAdapter {
            found: vec![format!(
                "{} [named in --devices but a CPU adapter; set {ALLOW_CPU_ADAPTER_ENV}=1 to allow]",
                list_entry(index, &info)
            )],
        });
    }
    Ok(index)
}

fn describe(info: &wgpu::AdapterInfo) -> String {
    format!(
        "{} ({:?}, driver {} {})",
        info.name, info.device_type, info.driver, info.driver_info
    )
}

/// Why a device stopped working, set by wgpu's device-lost callback; shared with whoever
/// reports the engine's health (`/health`), which reads it from another thread.
#[derive(Debug, Clone, Default)]
pub struct LostFlag(Arc<Mutex<Option<String>>>);

impl LostFlag {
    /// `Some(reason)` once the device is lost.
    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, reason: String) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
        }
    }
}

/// The Vulkan adapters in the engine's order: those with a PCI address sorted by it, then
/// the others (CPU adapters) by name. `--devices` indices count in this list.
/// `cooperative_matrices`' text: the configurations (wgpu lists the subgroup-scope ones of
/// 8 and 16 rows and columns) and whether wgpu offers the feature (it also needs the device
/// scope of the Vulkan memory model).
fn describe_cooperative_matrices(
    offered: bool,
    configurations: &[wgpu::CooperativeMatrixProperties],
) -> String {
    if configurations.is_empty() {
        return "none listed".into();
    }
    let list: Vec<String> = configurations
        .iter()
        .map(|c| {
            format!(
                "{}x{}x{} {:?}->{:?}",
                c.m_size, c.n_size, c.k_size, c.ab_type, c.cr_type
            )
        })
        .collect();
    let offer = if offered {
        "offered by wgpu"
    } else {
        "not offered by wgpu: the driver lacks the Vulkan memory model's device scope"
    };
    format!("{} ({offer})", list.join(", "))
}

/// Subgroup sizes `matmul_coop` is built for: its workgroup is four subgroups, and it needs
/// to know their size when the pipeline is made (see matmul_coop.wgsl).
const COOP_SUBGROUP_SIZES: [u32; 3] = [8, 16, 32];

/// Whether the prompt product on cooperative matrices (`matmul_coop`) can run on this
/// adapter: `Ok(subgroup size)`, else why not. It needs a 16x16x16 configuration with f16
/// A and B and f32 C (the only 16-row one WGSL's `coop_mat16x16` can name), wgpu's
/// cooperative-matrix feature, f16 in shaders (the operands are staged as f16), subgroup
/// operations (`subgroup_id`) and one fixed subgroup size among COOP_SUBGROUP_SIZES.
fn cooperative_prefill(
    available: wgpu::Features,
    configurations: &[wgpu::CooperativeMatrixProperties],
    subgroups: bool,
    (subgroup_min, subgroup_max): (u32, u32),
) -> Result<u32, String> {
    use wgpu::CooperativeScalarType as S;
    let matching = configurations.iter().any(|c| {
        (c.m_size, c.n_size, c.k_size) == (16, 16, 16) && c.ab_type == S::F16 && c.cr_type == S::F32
    });
    if !matching {
        return Err(format!(
            "the driver lists no 16x16x16 F16->F32 cooperative-matrix configuration ({})",
            describe_cooperative_matrices(
                available.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX),
                configurations
            )
        ));
    }
    if !available.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
        return Err("wgpu does not offer cooperative matrices on this adapter (the driver lacks the Vulkan memory model's device scope)".into());
    }
    coop_kernel_needs(available, subgroups, (subgroup_min, subgroup_max))
}

/// What `matmul_coop` needs besides the matrices (also its emulation, `prefill=coop-emulated`):
/// `Ok(subgroup size)`, else why not.
fn coop_kernel_needs(
    available: wgpu::Features,
    subgroups: bool,
    (subgroup_min, subgroup_max): (u32, u32),
) -> Result<u32, String> {
    if !available.contains(wgpu::Features::SHADER_F16) {
        return Err("the adapter has no f16 shader arithmetic (wgpu SHADER_F16)".into());
    }
    if !subgroups {
        return Err("subgroup operations are missing or turned off".into());
    }
    if subgroup_min != subgroup_max || !COOP_SUBGROUP_SIZES.contains(&subgroup_min) {
        return Err(format!(
            "the subgroup size is {subgroup_min}..{subgroup_max}, not one fixed size of 8, 16 or 32"
        ));
    }
    Ok(subgroup_min)
}

/// The GPU adapter (not a CPU one such as lavapipe) the engine would take, described; the
/// error says why there is none (no loader, no driver for the GPU, only CPU adapters). Cheap
/// enough to ask before choosing an engine: it enumerates adapters and opens none.
pub fn gpu_adapter() -> Result<String, VulkanError> {
    let adapters = list_adapters()?;
    let i = preferred(&adapters, false)?;
    Ok(describe(&adapters[i].get_info()))
}

fn list_adapters() -> Result<Vec<wgpu::Adapter>, VulkanError> {
    check_loader()?;
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::VULKAN;
    let instance = wgpu::Instance::new(desc);
    let mut adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::VULKAN));
    adapters.sort_by_cached_key(|a| {
        let info = a.get_info();
        (
            info.device_pci_bus_id.is_empty(),
            info.device_pci_bus_id.clone(),
            info.name.clone(),
        )
    });
    Ok(adapters)
}

/// `index: name (type, driver ...) at pci` of one adapter, for logs and errors.
fn list_entry(index: usize, info: &wgpu::AdapterInfo) -> String {
    if info.device_pci_bus_id.is_empty() {
        format!("{index}: {}", describe(info))
    } else {
        format!("{index}: {} at {}", describe(info), info.device_pci_bus_id)
    }
}

impl Gpu {
    /// Selects an adapter per the policy above and creates a device with the adapter's full limits.
    pub fn new(opts: &DeviceOptions) -> Result<Gpu, VulkanError> {
        let adapters = list_adapters()?;
        log_adapters(&adapters);
        let index = preferred(&adapters, opts.allow_cpu_adapter)?;
        Gpu::on_adapter(&adapters[index], index, opts)
    }

    /// Opens one device per adapter that `opts.devices` selects, in its order (an adapter
    /// named twice gets two devices). Errors name the valid choices.
    pub fn open_all(opts: &DeviceOptions) -> Result<Vec<Gpu>, VulkanError> {
        let adapters = list_adapters()?;
        log_adapters(&adapters);
        let indices = match &opts.devices {
            DeviceSelection::Auto => {
                let discrete: Vec<usize> = (0..adapters.len())
                    .filter(|&i| {
                        adapters[i].get_info().device_type == wgpu::DeviceType::DiscreteGpu
                    })
                    .collect();
                if discrete.is_empty() {
                    vec![preferred(&adapters, opts.allow_cpu_adapter)?]
                } else {
                    discrete
                }
            }
            DeviceSelection::List(list) => list
                .iter()
                .map(|sel| resolve(&adapters, sel, opts.allow_cpu_adapter))
                .collect::<Result<_, _>>()?,
        };
        indices
            .into_iter()
            .map(|i| Gpu::on_adapter(&adapters[i], i, opts))
            .collect()
    }

    fn on_adapter(
        adapter: &wgpu::Adapter,
        index: usize,
        opts: &DeviceOptions,
    ) -> Result<Gpu, VulkanError> {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let memory = device_local_heap(adapter);
        let available = adapter.features();
        let subgroups =
            opts.subgroups.unwrap_or(true) && available.contains(wgpu::Features::SUBGROUP);
        let timestamp_features = wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
        let timestamps = available.contains(timestamp_features);
        let cooperative_matrices = describe_cooperative_matrices(
            available.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX),
            &adapter.cooperative_matrix_properties(),
        );
        let sizes = (info.subgroup_min_size, info.subgroup_max_size);
        let coop = cooperative_prefill(
            available,
            &adapter.cooperative_matrix_properties(),
            subgroups,
            sizes,
        );
        let emulated = opts.tuning.prefill() == Prefill::CoopEmulated;
        let tuning = opts
            .tuning
            .with_coop_tile_for(limits.max_compute_workgroup_storage_size as u64);
        let coop_setting = tuning.coop_setting(limits.max_compute_workgroup_storage_size as u64);
        let (coop_subgroup, prefill_product) = match (tuning.prefill(), coop) {
            (Prefill::CoopEmulated, _) => match coop_kernel_needs(available, subgroups, sizes) {
                Ok(size) => (
                    Some(size),
                    format!("coop-emulated (matmul_coop with its matrix operations in plain code, subgroups of {size}, {coop_setting}; prefill=coop-emulated)"),
                ),
                Err(why) => {
                    return Err(VulkanError::TuningUnsupported {
                        setting: "prefill=coop-emulated".into(),
                        adapter: list_entry(index, &info),
                        detail: why,
                    })
                }
            },
            (Prefill::Auto | Prefill::Coop, Ok(size)) => (
                Some(size),
                format!("coop (matmul_coop: 16x16x16 F16->F32 cooperative matrices, subgroups of {size}, {coop_setting})"),
            ),
            (Prefill::Coop, Err(why)) => {
                return Err(VulkanError::TuningUnsupported {
                    setting: "prefill=coop".into(),
                    adapter: list_entry(index, &info),
                    detail: why,
                })
            }
            (Prefill::Auto, Err(why)) => (
                None,
                format!("tiled (matmul_tiled, f32 FMA tiles; cooperative matrices not used: {why})"),
            ),
            (Prefill::Tiled, _) => (None, "tiled (matmul_tiled, f32 FMA tiles; prefill=tiled)".into()),
            (Prefill::Rows, _) => (None, "rows (matmul, one row per workgroup; prefill=rows)".into()),
        };
        // Tiles larger than the default need more workgroup memory than WebGPU's default
        // 16 KiB; the device is opened with the adapter's own limit (`required_limits`).
        let shape = tuning.coop_shape();
        if coop_subgroup.is_some()
            && shape.workgroup_bytes() > limits.max_compute_workgroup_storage_size as u64
        {
            return Err(VulkanError::TuningUnsupported {
                setting: shape.setting(),
                adapter: list_entry(index, &info),
                detail: format!(
                    "matmul_coop with tiles of {} rows x {} tokens and {} units of k per stage needs {} bytes of workgroup memory and the adapter allows {}; ask for a smaller cooptile or coopk",
                    shape.rows,
                    shape.tokens,
                    shape.units,
                    shape.workgroup_bytes(),
                    limits.max_compute_workgroup_storage_size
                ),
            });
        }
        let mut features = wgpu::Features::empty();
        if subgroups {
            features |= wgpu::Features::SUBGROUP;
        }
        if timestamps {
            features |= timestamp_features;
        }
        // Cooperative matrices are requested only where matmul_coop runs, so that devices
        // without them (or with prefill=tiled) open exactly as before.
        if coop_subgroup.is_some() {
            features |= wgpu::Features::SHADER_F16;
        }
        let experimental_features = if coop_subgroup.is_some() && !emulated {
            features |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
            // SAFETY: wgpu asks callers of experimental features to accept that its
            // implementation may have bugs. The one requested is used only by matmul_coop,
            // whose matrix shapes and types are a configuration the driver lists (checked in
            // `cooperative_prefill`) and whose SPIR-V passes spirv-val (tests/coop_spirv.rs).
            unsafe { wgpu::ExperimentalFeatures::enabled() }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        };
        let device_desc = wgpu::DeviceDescriptor {
            label: Some("xpu-vulkan"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features,
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
        let lost = LostFlag::default();
        let lost_sink = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            // Dropping the device also reports "lost" with reason Destroyed; that is not a failure.
            if reason != wgpu::DeviceLostReason::Destroyed {
                lost_sink.set(format!("{reason:?}: {message}"));
            }
        });

        let device_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let max_binding = opts
            .max_binding_bytes
            .map_or(device_binding, |cap| cap.min(device_binding));
        tracing::info!(
            adapter = %list_entry(index, &info),
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
            prefill = %prefill_product,
            "vulkan device selected"
        );
        Ok(Gpu {
            device,
            queue,
            index,
            info,
            limits,
            max_binding,
            subgroups,
            timestamps,
            errors,
            lost,
            memory,
            tuning,
            cooperative_matrices,
            coop_subgroup,
            prefill_product,
        })
    }

    /// The cooperative-matrix (matrix core) configurations the driver lists through wgpu, as
    /// `MxNxK A/B type -> C type`, and whether wgpu offers them to shaders; printed by the
    /// benchmark next to [`prefill_product`](Self::prefill_product).
    pub fn cooperative_matrices(&self) -> &str {
        &self.cooperative_matrices
    }

    /// Which product prompt batches of many tokens run on this device (`coop`, `tiled` or
    /// `rows`, see `prefill=` in [`KernelTuning`]) and, for `tiled` by default, why not
    /// `coop`.
    pub fn prefill_product(&self) -> &str {
        &self.prefill_product
    }

    /// Whether prompt batches run the cooperative-matrix product `matmul_coop` (or its
    /// emulation, `prefill=coop-emulated`: the same numerics).
    pub fn uses_cooperative_prefill(&self) -> bool {
        self.coop_subgroup.is_some()
    }

    /// The subgroup size `matmul_coop` is built for, where it runs.
    pub(crate) fn coop_subgroup(&self) -> Option<u32> {
        self.coop_subgroup
    }

    /// The kernel settings every pipeline on this device is compiled with.
    pub fn tuning(&self) -> &KernelTuning {
        &self.tuning
    }

    /// `name (type, driver ...)` of the selected adapter.
    pub fn description(&self) -> String {
        describe(&self.info)
    }

    /// The adapter's position in the engine's adapter list (what `--devices` indices count).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The adapter's PCI address (`0000:03:00.0`), when the driver reports one.
    pub fn pci_address(&self) -> Option<&str> {
        Some(self.info.device_pci_bus_id.as_str()).filter(|a| !a.is_empty())
    }

    /// The device-lost state, to read from another thread.
    pub fn lost_flag(&self) -> LostFlag {
        self.lost.clone()
    }

    /// Marks the device lost as the driver's callback would, so that tests can check how a
    /// lost device fails its work and is reported (a real loss needs a GPU reset).
    #[doc(hidden)]
    pub fn simulate_loss(&self, reason: &str) {
        self.lost.set(reason.to_string());
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
        if let Some(detail) = self.lost.get() {
            return Err(VulkanError::DeviceLost {
                detail: format!("{} ({detail})", list_entry(self.index, &self.info)),
            });
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
        self.buffer_init(
            label,
            4,
            wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            data,
        )
    }

    /// Creates a uniform buffer holding `data`.
    pub(crate) fn uniform_init(
        &self,
        label: &str,
        data: &[u8],
    ) -> Result<wgpu::Buffer, VulkanError> {
        self.buffer_init(
            label,
            16,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            data,
        )
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

    /// Creates a buffer that starts with `data`, written through a mapping at creation; its
    /// size is `data`'s padded to a multiple of 16 bytes, and at least `min_size`.
    fn buffer_init(
        &self,
        label: &str,
        min_size: u64,
        usage: wgpu::BufferUsages,
        data: &[u8],
    ) -> Result<wgpu::Buffer, VulkanError> {
        let size = (data.len() as u64).div_ceil(16) * 16;
        let buf = self.alloc(label, size.max(min_size), usage, true)?;
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
        self.map_read_with(staging, size, <[u8]>::to_vec)
    }

    /// Reads `rows` rows of `len` floats from the start of `staging` (as
    /// [`map_read`](Self::map_read)) straight into one vector per row: a batched step's
    /// logits are copied once, not through an intermediate byte vector.
    pub(crate) fn map_read_rows(
        &self,
        staging: &wgpu::Buffer,
        rows: usize,
        len: usize,
    ) -> Result<Vec<Vec<f32>>, VulkanError> {
        let row_bytes = len * 4;
        self.map_read_with(staging, (rows * row_bytes) as u64, |bytes| {
            bytes
                .chunks_exact(row_bytes)
                .map(|row| {
                    let mut v = vec![0f32; len];
                    bytemuck::cast_slice_mut::<f32, u8>(&mut v).copy_from_slice(row);
                    v
                })
                .collect()
        })
    }

    /// Maps the first `size` bytes of `staging` for reading, waits for the GPU, and returns
    /// what `read` makes of them.
    fn map_read_with<T>(
        &self,
        staging: &wgpu::Buffer,
        size: u64,
        read: impl FnOnce(&[u8]) -> T,
    ) -> Result<T, VulkanError> {
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
            read(&view)
        };
        staging.unmap();
        Ok(out)
    }
}

#[cfg(test)]
mod cooperative_matrix_tests {
    use super::describe_cooperative_matrices;
    use wgpu::{CooperativeMatrixProperties, CooperativeScalarType};

    #[test]
    fn configurations_and_the_offer_are_described() {
        assert_eq!(describe_cooperative_matrices(false, &[]), "none listed");
        let f16 = CooperativeMatrixProperties {
            m_size: 16,
            n_size: 16,
            k_size: 16,
            ab_type: CooperativeScalarType::F16,
            cr_type: CooperativeScalarType::F32,
            saturating_accumulation: false,
        };
        let f32 = CooperativeMatrixProperties {
            m_size: 8,
            n_size: 8,
            k_size: 8,
            ab_type: CooperativeScalarType::F32,
            cr_type: CooperativeScalarType::F32,
            ..f16
        };
        assert_eq!(
            describe_cooperative_matrices(true, &[f16, f32]),
            "16x16x16 F16->F32, 8x8x8 F32->F32 (offered by wgpu)"
        );
        assert!(describe_cooperative_matrices(false, &[f16]).contains("not offered"));
    }
}
