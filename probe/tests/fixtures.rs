//! The probe on captured sysfs/procfs trees (tests/fixtures/*, built by generate.py), run as
//! the real binary: facts and recommendation per machine type.

mod common;

use common::{facts, has_warning};
use xpu_probe::facts::{GpuVendor, IntelKernelDriver};
use xpu_probe::Variant;

fn gpu<'a>(facts: &'a xpu_probe::Facts, address: &str) -> &'a xpu_probe::facts::Gpu {
    facts
        .gpus
        .iter()
        .find(|g| g.pci_address == address)
        .unwrap_or_else(|| panic!("no GPU {address} in {:#?}", facts.gpus))
}

fn pci<'a>(facts: &'a xpu_probe::Facts, address: &str) -> &'a xpu_probe::facts::PciDevice {
    facts
        .pci
        .iter()
        .find(|d| d.address == address)
        .unwrap_or_else(|| panic!("no PCI function {address}"))
}

#[test]
fn arc_a770_on_i915_with_igpu() {
    let facts = facts("arc-a770-igpu");
    assert!(facts.warnings.is_empty(), "{:?}", facts.warnings);
    assert_eq!(facts.pci.len(), 5);

    let arc = pci(&facts, "0000:03:00.0");
    assert_eq!(arc.vendor_id.as_deref(), Some("8086"));
    assert_eq!(arc.device_id.as_deref(), Some("56a0"));
    assert_eq!(arc.subsystem_vendor_id.as_deref(), Some("8086"));
    assert_eq!(arc.subsystem_device_id.as_deref(), Some("1020"));
    assert_eq!(arc.revision.as_deref(), Some("08"));
    let class = arc.class.as_ref().unwrap();
    assert_eq!(
        (
            class.base.as_str(),
            class.sub.as_str(),
            class.prog_if.as_str()
        ),
        ("03", "00", "00")
    );
    assert_eq!(arc.vendor_name.as_deref(), Some("Intel Corporation"));
    assert_eq!(arc.device_name.as_deref(), Some("DG2 [Arc A770]"));
    assert_eq!(arc.driver.as_deref(), Some("i915"));
    assert_eq!(arc.numa_node, Some(0));
    assert_eq!(arc.iommu_group, Some(15));
    let link = arc.link.as_ref().unwrap();
    assert_eq!(
        (link.current_speed, link.current_width),
        (Some(2.5), Some(1))
    );
    let drm = arc.drm.as_ref().unwrap();
    assert_eq!(drm.card.as_deref(), Some("/dev/dri/card1"));
    assert_eq!(drm.render.as_deref(), Some("/dev/dri/renderD129"));
    // BAR0 16 MiB, BAR2 16 GiB (resizable BAR), ROM 2 MiB.
    let bars: Vec<(u32, u64)> = arc.bars.iter().map(|b| (b.index, b.size)).collect();
    assert_eq!(bars, vec![(0, 16 << 20), (2, 16 << 30), (6, 2 << 20)]);
    assert!(arc.sriov.is_none());

    let bridge = pci(&facts, "0000:00:01.0");
    assert_eq!(bridge.driver.as_deref(), Some("pcieport"));
    assert_eq!(bridge.link.as_ref().unwrap().max_speed, Some(32.0));

    let dgpu = gpu(&facts, "0000:03:00.0");
    assert_eq!(dgpu.vendor, GpuVendor::Intel);
    assert_eq!(dgpu.family.as_deref(), Some("Alchemist"));
    assert_eq!(dgpu.name.as_deref(), Some("Arc A770"));
    assert!(!dgpu.integrated && dgpu.compute_capable);
    assert_eq!(dgpu.render_node.as_deref(), Some("/dev/dri/renderD129"));
    let intel = dgpu.intel.as_ref().unwrap();
    assert_eq!(intel.required_driver, IntelKernelDriver::I915);
    assert!(!intel.force_probe.needed && !intel.force_probe.present);
    assert_eq!(intel.force_probe.param, "i915.force_probe=56a0");

    let igpu = gpu(&facts, "0000:00:02.0");
    assert_eq!(igpu.family.as_deref(), Some("Alder Lake-S"));
    assert!(igpu.integrated && igpu.compute_capable);
    assert_eq!(igpu.card_node.as_deref(), Some("/dev/dri/card0"));

    let cpu = facts.cpu.as_ref().unwrap();
    assert_eq!(cpu.vendor.as_deref(), Some("GenuineIntel"));
    assert_eq!((cpu.cores, cpu.threads), (2, 4));
    assert!(cpu.flags.avx_vnni && cpu.flags.avx2 && !cpu.flags.avx512f);
    assert_eq!(facts.memory.as_ref().unwrap().total_bytes, 32 << 30);
    assert_eq!(facts.kernel.as_ref().unwrap().release, "6.12.8");
    assert_eq!(facts.virtualization, None);
    assert_eq!(facts.nvidia, None);
    assert!(facts.level_zero.skipped);

    let r = &facts.recommendation;
    assert_eq!(r.variant, Variant::ExoIntel);
    assert_eq!(r.device_allow, vec!["char-drm"]);
    assert_eq!(r.supplementary_groups, vec!["render"]);
    assert!(r.kernel_params.is_empty());
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert!(r.reasons.iter().any(|s| s.contains("Arc A770")));
}

#[test]
fn arc_b580_on_xe() {
    let facts = facts("arc-b580-xe");
    assert!(facts.warnings.is_empty(), "{:?}", facts.warnings);
    let b580 = gpu(&facts, "0000:03:00.0");
    assert_eq!(b580.family.as_deref(), Some("Battlemage"));
    assert_eq!(b580.name.as_deref(), Some("Arc B580"));
    assert_eq!(b580.driver.as_deref(), Some("xe"));
    let intel = b580.intel.as_ref().unwrap();
    assert_eq!(intel.required_driver, IntelKernelDriver::Xe);
    assert_eq!(intel.force_probe.param, "xe.force_probe=e20b");
    assert!(!intel.force_probe.needed);
    let link = pci(&facts, "0000:03:00.0").link.clone().unwrap();
    assert_eq!(
        (link.current_speed, link.current_width, link.max_width),
        (Some(16.0), Some(8), Some(8))
    );
    assert_eq!(facts.recommendation.variant, Variant::ExoIntel);
    assert!(facts.recommendation.kernel_params.is_empty());
}

#[test]
fn data_center_max_1550() {
    let facts = facts("max-1550");
    assert!(facts.warnings.is_empty(), "{:?}", facts.warnings);
    let max = gpu(&facts, "0000:4d:00.0");
    assert_eq!(max.family.as_deref(), Some("Data Center Max"));
    assert_eq!(max.name.as_deref(), Some("Data Center GPU Max 1550"));
    assert!(max.compute_capable && !max.integrated);
    assert_eq!(
        max.intel.as_ref().unwrap().required_driver,
        IntelKernelDriver::I915
    );
    let device = pci(&facts, "0000:4d:00.0");
    let class = device.class.as_ref().unwrap();
    assert_eq!((class.base.as_str(), class.sub.as_str()), ("03", "80"));
    let sriov = device.sriov.as_ref().unwrap();
    assert_eq!((sriov.total_vfs, sriov.num_vfs), (63, 0));
    assert_eq!(
        device.bars.iter().find(|b| b.index == 2).unwrap().size,
        128 << 30
    );
    // The BMC next to it is a GPU-class function but not for compute.
    let bmc = gpu(&facts, "0000:03:00.0");
    assert_eq!(bmc.vendor, GpuVendor::Other);
    assert!(!bmc.compute_capable);
    assert_eq!(facts.recommendation.variant, Variant::ExoIntel);
    assert!(facts.cpu.as_ref().unwrap().flags.amx_bf16);
}

#[test]
fn flex_170_bound_to_no_driver() {
    let facts = facts("flex-170-unbound");
    assert!(facts.warnings.is_empty(), "{:?}", facts.warnings);
    let flex = gpu(&facts, "0000:b3:00.0");
    assert_eq!(flex.family.as_deref(), Some("Flex"));
    assert_eq!(flex.driver, None);
    assert_eq!(flex.render_node, None);
    let fp = &flex.intel.as_ref().unwrap().force_probe;
    assert!(fp.needed && !fp.present);
    assert_eq!(fp.param, "i915.force_probe=56c0");
    assert_eq!(pci(&facts, "0000:b3:00.0").numa_node, Some(1));
    let r = &facts.recommendation;
    assert_eq!(r.variant, Variant::ExoIntel);
    assert_eq!(r.kernel_params, vec!["i915.force_probe=56c0"]);
    assert!(
        has_warning(&facts, "bound to no kernel driver"),
        "{:?}",
        r.warnings
    );
    assert!(has_warning(&facts, "i915.force_probe=56c0"));
}

#[test]
fn nvidia_h100() {
    let facts = facts("h100");
    assert!(facts.warnings.is_empty(), "{:?}", facts.warnings);
    let h100 = gpu(&facts, "0000:00:06.0");
    assert_eq!(h100.vendor, GpuVendor::Nvidia);
    assert_eq!(h100.family.as_deref(), Some("Hopper"));
    assert!(h100.compute_capable);
    assert!(h100.intel.is_none());
    let device = pci(&facts, "0000:00:06.0");
    assert_eq!(device.class.as_ref().unwrap().sub, "02");
    assert_eq!(device.numa_node, None);
    let bars: Vec<(u32, u64)> = device.bars.iter().map(|b| (b.index, b.size)).collect();
    assert_eq!(bars, vec![(0, 16 << 20), (2, 128 << 30), (4, 32 << 20)]);
    let nvidia = facts.nvidia.as_ref().unwrap();
    assert_eq!(nvidia.driver_version, "580.159.04");
    assert!(nvidia.open_kernel_module);
    assert_eq!(facts.virtualization.as_deref(), Some("vm-other"));
    assert_eq!(facts.cpu.as_ref().unwrap().threads, 16);
    let r = &facts.recommendation;
    assert_eq!(r.variant, Variant::ExoCuda);
    assert_eq!(
        r.device_allow,
        vec![
            "char-nvidiactl",
            "char-nvidia-caps",
            "char-nvidia-frontend",
            "char-nvidia-uvm"
        ]
    );
    assert!(r.supplementary_groups.is_empty());
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert!(r.reasons.iter().any(|s| s.contains("580.159.04")));
}

#[test]
fn amd_mi300x_runs_on_cpu() {
    let facts = facts("mi300x");
    let mi = gpu(&facts, "0000:11:00.0");
    assert_eq!(mi.vendor, GpuVendor::Amd);
    assert_eq!(mi.name.as_deref(), Some("Instinct MI300X"));
    assert!(mi.compute_capable);
    assert_eq!(
        pci(&facts, "0000:11:00.0").class.as_ref().unwrap().sub,
        "80"
    );
    let r = &facts.recommendation;
    assert_eq!(r.variant, Variant::ExoCpu);
    assert!(r.device_allow.is_empty());
    assert!(has_warning(&facts, "AMD GPU"));
    assert!(r.reasons.iter().any(|s| s.contains("ROCm")));
}

#[test]
fn aspeed_bmc_only_server() {
    let facts = facts("aspeed-only");
    assert!(facts.warnings.is_empty(), "{:?}", facts.warnings);
    assert_eq!(facts.gpus.len(), 1);
    let bmc = &facts.gpus[0];
    assert_eq!(bmc.vendor_id.as_deref(), Some("1a03"));
    assert_eq!(bmc.driver.as_deref(), Some("ast"));
    assert_eq!(bmc.card_node.as_deref(), Some("/dev/dri/card0"));
    assert!(!bmc.compute_capable);
    let nic = pci(&facts, "0000:41:00.0");
    assert_eq!(nic.sriov.as_ref().unwrap().total_vfs, 64);
    assert_eq!(facts.recommendation.variant, Variant::ExoCpu);
    assert!(facts.recommendation.warnings.is_empty());
}

#[test]
fn virtio_only_vm() {
    let facts = facts("virtio-vm");
    assert!(facts.warnings.is_empty(), "{:?}", facts.warnings);
    assert_eq!(facts.virtualization.as_deref(), Some("qemu"));
    assert_eq!(facts.pci.len(), 5);
    assert!(facts
        .pci
        .iter()
        .all(|d| d.link.is_none() && d.numa_node.is_none()));
    let virtio_gpu = gpu(&facts, "0000:00:04.0");
    assert!(!virtio_gpu.compute_capable);
    assert_eq!(facts.recommendation.variant, Variant::ExoCpu);
}

#[test]
fn broken_tree_gives_partial_facts_and_warnings() {
    let output = common::run(&[
        "--root",
        common::fixture("broken").to_str().unwrap(),
        "--no-level-zero",
    ]);
    assert_eq!(output.status.code(), Some(0));
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let facts: xpu_probe::Facts = serde_json::from_slice(&output.stdout).unwrap();

    // Garbage values: null fields, one warning each, naming file and value.
    let garbage = pci(&facts, "0000:00:02.0");
    assert_eq!(garbage.vendor_id, None);
    assert_eq!(garbage.device_id.as_deref(), Some("56a0"));
    assert_eq!(garbage.revision, None);
    assert_eq!(garbage.numa_node, None);
    assert_eq!(garbage.iommu_group, None);
    assert_eq!(garbage.sriov, None);
    assert!(garbage.bars.is_empty());
    let link = garbage.link.as_ref().unwrap();
    assert_eq!(
        (link.current_speed, link.current_width, link.max_speed),
        (None, None, Some(32.0))
    );
    for needle in [
        "0000:00:02.0/vendor: expected a 16-bit hex id like 0x8086, found \"0xZZZZ\"",
        "0000:00:02.0/revision",
        "0000:00:02.0/numa_node",
        "0000:00:02.0/iommu_group",
        "0000:00:02.0/current_link_speed",
        "0000:00:02.0/current_link_width",
        "0000:00:02.0/sriov_totalvfs",
        "0000:00:02.0/resource",
        "0000:00:03.0/vendor is missing",
        "0000:00:03.0/class is missing",
        "cannot read /sys/bus/pci/devices/0000:00:04.0/device",
        "ignoring /sys/bus/pci/devices/0000:00:05.0: dangling link",
        "ignoring /sys/bus/pci/devices/not-a-device",
        "/proc/cpuinfo",
        "/proc/meminfo is missing",
        "/proc/sys/kernel/osrelease",
        "/proc/driver/nvidia/version",
    ] {
        assert!(
            facts.warnings.iter().any(|w| w.contains(needle)),
            "no warning containing {needle:?} in {:#?}",
            facts.warnings
        );
    }
    // A dangling driver link still names the driver.
    assert_eq!(pci(&facts, "0000:00:03.0").driver.as_deref(), Some("gone"));
    assert_eq!(pci(&facts, "0000:00:04.0").device_id, None);
    assert_eq!(facts.pci.len(), 3);
    assert!(
        facts.cpu.is_none()
            && facts.memory.is_none()
            && facts.kernel.is_none()
            && facts.nvidia.is_none()
    );
    assert_eq!(facts.recommendation.variant, Variant::ExoCpu);
}

#[test]
fn every_fixture_probes_cleanly() {
    for name in common::all_fixtures() {
        let facts = facts(&name);
        assert_eq!(facts.schema_version, 1, "{name}");
        assert!(!facts.pci.is_empty(), "{name}: no PCI functions");
        // Addresses are sorted and unique.
        let addresses: Vec<&str> = facts.pci.iter().map(|d| d.address.as_str()).collect();
        let mut sorted = addresses.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(addresses, sorted, "{name}");
        // Every GPU is a PCI function.
        for gpu in &facts.gpus {
            assert!(
                addresses.contains(&gpu.pci_address.as_str()),
                "{name}: {}",
                gpu.pci_address
            );
        }
    }
}
