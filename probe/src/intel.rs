//! Intel GPU device ids: family, integrated or discrete, and the kernel driver compute needs.
//!
//! Sources, read for this table (see `docs/probe.md` for the details):
//! - Linux `include/drm/intel/pciids.h` (formerly `include/drm/i915_pciids.h`): the
//!   `INTEL_*_IDS` macros per platform; which driver lists an id comes from
//!   `drivers/gpu/drm/i915/i915_pci.c` and `drivers/gpu/drm/xe/xe_pci.c` (`pciidlist`, with
//!   `require_force_probe` on the descriptors).
//! - intel/compute-runtime `shared/source/dll/devices/devices_base.inl`: the ids the compute
//!   runtime (Level Zero / OpenCL) supports, with marketing names; `E215` and `0BD0` come only
//!   from there.
//!
//! Force-probe flags change between kernel versions (for example DG2 and Meteor Lake lost
//! theirs in i915 over time). The flag here is what the kernels we read require; the probe
//! only asks for the parameter when the device is not already bound to the driver without it.

use crate::facts::IntelKernelDriver;

/// One family of Intel GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntelFamily {
    /// Family name as reported in facts, e.g. "Alchemist".
    pub name: &'static str,
    /// Integrated in the CPU package.
    pub integrated: bool,
    /// The kernel driver compute uses on it.
    pub driver: IntelKernelDriver,
    /// That driver binds it only with `<driver>.force_probe=<id>`.
    pub force_probe: bool,
    /// Mainline kernels do not drive it at all; Intel's out-of-tree backport driver is needed.
    pub out_of_tree: bool,
    /// Device ids, lowercase hex.
    pub ids: &'static [u16],
}

use IntelKernelDriver::{Xe, I915};

const fn family(
    name: &'static str,
    integrated: bool,
    driver: IntelKernelDriver,
    force_probe: bool,
    ids: &'static [u16],
) -> IntelFamily {
    IntelFamily {
        name,
        integrated,
        driver,
        force_probe,
        out_of_tree: false,
        ids,
    }
}

/// The table. Ids from pciids.h unless noted; see the module comment.
#[rustfmt::skip]
pub const FAMILIES: &[IntelFamily] = &[
    // Xe-LP (Gen12) integrated: i915 by default, xe only with force_probe.
    family("Tiger Lake", true, I915, false, &[
        0x9a40, 0x9a49, 0x9a59, 0x9a60, 0x9a68, 0x9a70, 0x9a78, 0x9ac0, 0x9ac9, 0x9ad9, 0x9af8,
    ]),
    family("Rocket Lake", true, I915, false, &[0x4c80, 0x4c8a, 0x4c8b, 0x4c8c, 0x4c90, 0x4c9a]),
    family("Alder Lake-S", true, I915, false, &[
        0x4680, 0x4682, 0x4688, 0x468a, 0x468b, 0x4690, 0x4692, 0x4693,
    ]),
    family("Raptor Lake-S", true, I915, false, &[
        0xa780, 0xa781, 0xa782, 0xa783, 0xa788, 0xa789, 0xa78a, 0xa78b,
    ]),
    family("Alder Lake-P", true, I915, false, &[
        0x46a0, 0x46a1, 0x46a2, 0x46a3, 0x46a6, 0x46a8, 0x46aa, 0x462a, 0x4626, 0x4628, 0x46b0,
        0x46b1, 0x46b2, 0x46b3, 0x46c0, 0x46c1, 0x46c2, 0x46c3,
    ]),
    family("Raptor Lake-P", true, I915, false, &[
        0xa720, 0xa7a0, 0xa7a8, 0xa7aa, 0xa7ab, 0xa721, 0xa7a1, 0xa7a9, 0xa7ac, 0xa7ad,
    ]),
    family("Alder Lake-N", true, I915, false, &[0x46d0, 0x46d1, 0x46d2, 0x46d3, 0x46d4]),
    // Xe-LP discrete.
    family("DG1", false, I915, false, &[0x4905, 0x4906, 0x4907, 0x4908, 0x4909]),
    // Xe-HPG discrete (Arc A-series). 56AF and 4F80-4F88 are in devices_base.inl.
    family("Alchemist", false, I915, false, &[
        0x56a0, 0x56a1, 0x56a2, 0x56be, 0x56bf, 0x5690, 0x5691, 0x5692, // DG2-G10
        0x56a5, 0x56a6, 0x56b0, 0x56b1, 0x56ba, 0x56bb, 0x56bc, 0x56bd, 0x5693, 0x5694,
        0x5695, // DG2-G11
        0x56a3, 0x56a4, 0x56b2, 0x56b3, 0x5696, 0x5697, // DG2-G12
        0x56af, 0x4f80, 0x4f81, 0x4f82, 0x4f83, 0x4f84, 0x4f85, 0x4f86, 0x4f87, 0x4f88,
    ]),
    // ATS-M: `require_force_probe` in both i915 (ats_m_info) and xe.
    family("Flex", false, I915, true, &[0x56c0, 0x56c1, 0x56c2]),
    // Xe-LPG integrated.
    family("Meteor Lake", true, I915, false, &[0x7d40, 0x7d45, 0x7d55, 0x7d60, 0x7dd5]),
    family("Arrow Lake", true, I915, false, &[0x7d41, 0x7d51, 0x7d67, 0x7dd1, 0xb640]),
    // Xe-HPC (Ponte Vecchio): in no mainline pciidlist; see `out_of_tree` below.
    IntelFamily {
        name: "Data Center Max",
        integrated: false,
        driver: I915,
        force_probe: false,
        out_of_tree: true,
        ids: &[
            0x0b69, 0x0b6e, 0x0bd0, 0x0bd4, 0x0bd5, 0x0bd6, 0x0bd7, 0x0bd8, 0x0bd9, 0x0bda, 0x0bdb,
            0x0be0, 0x0be1, 0x0be5,
        ],
    },
    // Xe2 and later: xe only.
    family("Lunar Lake", true, Xe, false, &[0x6420, 0x64a0, 0x64b0]),
    // E215 is in devices_base.inl only.
    family("Battlemage", false, Xe, false, &[
        0xe202, 0xe209, 0xe20b, 0xe20c, 0xe20d, 0xe210, 0xe211, 0xe212, 0xe215, 0xe216, // G21
        0xe220, 0xe221, 0xe222, 0xe223, // G31
    ]),
    family("Panther Lake", true, Xe, true, &[
        0xb080, 0xb081, 0xb082, 0xb083, 0xb084, 0xb085, 0xb086, 0xb087, 0xb08f, 0xb090, 0xb0a0,
        0xb0b0,
    ]),
];

/// Intel NPUs (class 0x1200, driven by `intel_vpu`): processing accelerators that xpu does
/// not compute on. Listed so that they are named rather than reported as unknown devices.
/// Source: Linux `drivers/accel/ivpu/ivpu_drv.h` (`PCI_DEVICE_ID_MTL`, `_ARL`, `_LNL`, `_PTL_P`).
pub const NPU_IDS: &[u16] = &[0x7d1d, 0xad1d, 0x643e, 0xb03e];

/// The family of an Intel device id, if the table knows it.
pub fn family_of(device_id: u16) -> Option<&'static IntelFamily> {
    FAMILIES
        .iter()
        .find(|family| family.ids.contains(&device_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for family in FAMILIES {
            for id in family.ids {
                assert!(seen.insert(*id), "{id:04x} is listed twice");
            }
        }
    }

    #[test]
    fn known_devices() {
        assert_eq!(family_of(0x56a0).unwrap().name, "Alchemist");
        assert_eq!(family_of(0xe20b).unwrap().driver, IntelKernelDriver::Xe);
        assert!(family_of(0x56c0).unwrap().force_probe);
        assert!(family_of(0x0bd5).unwrap().out_of_tree);
        assert!(family_of(0x9a49).unwrap().integrated);
        assert!(family_of(0x1234).is_none());
    }
}
