//! Parsers for the values found in sysfs and procfs files.
//!
//! Each parser takes the raw file content (with its trailing newline) and returns a typed
//! value or a [`ParseError`] saying what was expected. They never panic, whatever the input;
//! property tests in `tests/parsers_prop.rs` check that.

use crate::facts::{Bar, Cpu, CpuFlags, NvidiaDriver};

/// A value that does not have the expected format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected}")]
pub struct ParseError {
    /// What the value should look like, e.g. "a hex number like 0x8086".
    pub expected: String,
}

fn expected(what: impl Into<String>) -> ParseError {
    ParseError {
        expected: what.into(),
    }
}

/// Parses a hex number such as `0x8086` (the `0x` is optional) that fits in `max`.
fn parse_hex(text: &str, max: u64, what: &str) -> Result<u64, ParseError> {
    let trimmed = text.trim();
    let digits = trimmed
        .strip_prefix("0x")
        .or_else(|| trimmed.strip_prefix("0X"))
        .unwrap_or(trimmed);
    if digits.is_empty() || digits.len() > 16 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(expected(what));
    }
    match u64::from_str_radix(digits, 16) {
        Ok(value) if value <= max => Ok(value),
        _ => Err(expected(what)),
    }
}

/// A 16-bit id (`vendor`, `device`, `subsystem_*`), e.g. `0x8086`.
pub fn hex_u16(text: &str) -> Result<u16, ParseError> {
    parse_hex(text, u16::MAX as u64, "a 16-bit hex id like 0x8086").map(|v| v as u16)
}

/// An 8-bit value (`revision`), e.g. `0xa1`.
pub fn hex_u8(text: &str) -> Result<u8, ParseError> {
    parse_hex(text, u8::MAX as u64, "an 8-bit hex value like 0xa1").map(|v| v as u8)
}

/// The 24-bit `class` attribute, e.g. `0x030200`, split into (base, sub, prog-if).
pub fn pci_class(text: &str) -> Result<(u8, u8, u8), ParseError> {
    let value = parse_hex(text, 0xff_ffff, "a 24-bit hex class code like 0x030200")?;
    Ok(((value >> 16) as u8, (value >> 8) as u8, value as u8))
}

/// A link speed such as `32.0 GT/s PCIe`, `8 GT/s` or `2.5 GT/s`, in GT/s.
/// `Unknown` (a link that is down) gives `None`.
pub fn link_speed(text: &str) -> Result<Option<f64>, ParseError> {
    let trimmed = text.trim();
    if trimmed.starts_with("Unknown") {
        return Ok(None);
    }
    let what = "a link speed like \"16.0 GT/s PCIe\" or \"Unknown\"";
    let mut words = trimmed.split_whitespace();
    let number = words.next().ok_or_else(|| expected(what))?;
    if words.next() != Some("GT/s") {
        return Err(expected(what));
    }
    if !number.bytes().all(|b| b.is_ascii_digit() || b == b'.') || number.len() > 8 {
        return Err(expected(what));
    }
    match number.parse::<f64>() {
        Ok(speed) if speed.is_finite() && speed > 0.0 => Ok(Some(speed)),
        _ => Err(expected(what)),
    }
}

/// A link width such as `16` (an `x` prefix is accepted). `0` means unknown and gives `None`.
pub fn link_width(text: &str) -> Result<Option<u32>, ParseError> {
    let trimmed = text.trim();
    let digits = trimmed.strip_prefix('x').unwrap_or(trimmed);
    match decimal_u32(digits) {
        Ok(0) => Ok(None),
        Ok(width) => Ok(Some(width)),
        Err(_) => Err(expected("a link width like 16")),
    }
}

/// An unsigned decimal number such as `16`.
pub fn decimal_u32(text: &str) -> Result<u32, ParseError> {
    let trimmed = text.trim();
    if trimmed.is_empty() || !trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return Err(expected("a decimal number"));
    }
    trimmed
        .parse()
        .map_err(|_| expected("a decimal number below 2^32"))
}

/// The `numa_node` attribute: `-1` (no NUMA information) gives `None`.
pub fn numa_node(text: &str) -> Result<Option<u32>, ParseError> {
    if text.trim() == "-1" {
        return Ok(None);
    }
    decimal_u32(text)
        .map(Some)
        .map_err(|_| expected("a NUMA node number or -1"))
}

/// The `resource` attribute: one `start end flags` line of hex numbers per region.
/// Returns the regions with a non-zero size, indexed by line.
pub fn resource(text: &str) -> Result<Vec<Bar>, ParseError> {
    let mut bars = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let what = || {
            expected(format!(
                "line {} to be \"<start> <end> <flags>\" in hex",
                index + 1
            ))
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() != 3 {
            return Err(what());
        }
        let start = parse_hex(fields[0], u64::MAX, "").map_err(|_| what())?;
        let end = parse_hex(fields[1], u64::MAX, "").map_err(|_| what())?;
        parse_hex(fields[2], u64::MAX, "").map_err(|_| what())?;
        if start == 0 && end == 0 {
            continue; // an unused region
        }
        if end < start {
            return Err(what());
        }
        // Sizes stay below 2^63 for Nix; a region that large is garbage anyway.
        let size = match (end - start).checked_add(1) {
            Some(size) if size <= i64::MAX as u64 => size,
            _ => return Err(what()),
        };
        bars.push(Bar {
            index: index as u32,
            size,
        });
    }
    Ok(bars)
}

/// `/proc/cpuinfo`: vendor, model, core and thread counts, and the inference-relevant flags.
pub fn cpuinfo(text: &str) -> Result<Cpu, ParseError> {
    let mut vendor = None;
    let mut model_name = None;
    let mut threads = 0u32;
    let mut flags_line: Option<&str> = None;
    let mut physical_id: Option<&str> = None;
    let mut cores = std::collections::BTreeSet::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "processor" => {
                threads = threads.saturating_add(1);
                physical_id = None;
            }
            "vendor_id" if vendor.is_none() => vendor = Some(value.to_string()),
            "model name" if model_name.is_none() => model_name = Some(value.to_string()),
            // x86 says "flags", arm64 says "Features".
            "flags" | "Features" if flags_line.is_none() => flags_line = Some(value),
            "physical id" => physical_id = Some(value),
            "core id" => {
                cores.insert((physical_id.unwrap_or("0").to_string(), value.to_string()));
            }
            _ => {}
        }
    }
    if threads == 0 {
        return Err(expected("at least one \"processor : N\" line"));
    }
    let has = |flag: &str| {
        flags_line
            .map(|line| line.split_whitespace().any(|f| f == flag))
            .unwrap_or(false)
    };
    let flags = CpuFlags {
        avx2: has("avx2"),
        fma: has("fma"),
        f16c: has("f16c"),
        avx512f: has("avx512f"),
        avx512bw: has("avx512bw"),
        avx512vnni: has("avx512_vnni"),
        avx512bf16: has("avx512_bf16"),
        avx_vnni: has("avx_vnni"),
        amx_tile: has("amx_tile"),
        amx_int8: has("amx_int8"),
        amx_bf16: has("amx_bf16"),
    };
    let core_count = if cores.is_empty() {
        threads
    } else {
        (cores.len() as u32).min(threads)
    };
    Ok(Cpu {
        vendor,
        model_name,
        cores: core_count,
        threads,
        flags,
    })
}

/// `/proc/cpuinfo` has the `hypervisor` flag (x86 guests).
pub fn cpuinfo_has_hypervisor(text: &str) -> bool {
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(key, _)| key.trim() == "flags")
        .map(|(_, flags)| flags.split_whitespace().any(|f| f == "hypervisor"))
        .unwrap_or(false)
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
pub fn meminfo_total_bytes(text: &str) -> Result<u64, ParseError> {
    let what = "a line like \"MemTotal: 16384256 kB\"";
    let line = text
        .lines()
        .find(|line| line.starts_with("MemTotal:"))
        .ok_or_else(|| expected(what))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let number = words.next().ok_or_else(|| expected(what))?;
    if words.next() != Some("kB") || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(expected(what));
    }
    let kib: u64 = number.parse().map_err(|_| expected(what))?;
    kib.checked_mul(1024)
        .filter(|bytes| *bytes <= i64::MAX as u64)
        .ok_or_else(|| expected(what))
}

/// `/proc/driver/nvidia/version`: the first `NVRM version:` line carries the driver version,
/// e.g. `NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build`.
pub fn nvidia_version(text: &str) -> Result<NvidiaDriver, ParseError> {
    let what = "an \"NVRM version: ... <driver version> ...\" line";
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix("NVRM version:"))
        .ok_or_else(|| expected(what))?;
    let version = line
        .split_whitespace()
        .find(|word| {
            word.contains('.')
                && word.split('.').all(|part| {
                    !part.is_empty() && part.len() <= 6 && part.bytes().all(|b| b.is_ascii_digit())
                })
        })
        .ok_or_else(|| expected(what))?;
    Ok(NvidiaDriver {
        driver_version: version.to_string(),
        open_kernel_module: line.contains("Open Kernel Module"),
    })
}

/// The ids listed in `<driver>.force_probe=` parameters on a kernel command line, lowercased.
/// Several parameters accumulate; quotes around values are removed.
pub fn force_probe_ids(cmdline: &str, driver: &str) -> Vec<String> {
    let key = format!("{driver}.force_probe=");
    let mut ids = Vec::new();
    for word in cmdline.split_whitespace() {
        let Some(value) = word.strip_prefix(&key) else {
            continue;
        };
        let value = value.trim_matches(|c| c == '"' || c == '\'');
        ids.extend(
            value
                .split(',')
                .map(|id| id.trim().to_ascii_lowercase())
                .filter(|id| !id.is_empty()),
        );
    }
    ids
}

/// Whether a force_probe list lets `device_id` bind: listed (or `*`) and not blocked (`!id`).
pub fn force_probe_allows(ids: &[String], device_id: &str) -> bool {
    let device_id = device_id.to_ascii_lowercase();
    let blocked = ids
        .iter()
        .any(|id| id == &format!("!{device_id}") || id == "!*");
    let listed = ids.iter().any(|id| id == &device_id || id == "*");
    listed && !blocked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_ids() {
        assert_eq!(hex_u16("0x8086\n"), Ok(0x8086));
        assert_eq!(hex_u16("56A0"), Ok(0x56a0));
        assert!(hex_u16("0x18086").is_err());
        assert!(hex_u16("0x").is_err());
        assert!(hex_u16("zz").is_err());
        assert!(hex_u16("").is_err());
        assert_eq!(hex_u8("0xa1\n"), Ok(0xa1));
        assert_eq!(pci_class("0x030200\n"), Ok((3, 2, 0)));
        assert_eq!(pci_class("0x120000"), Ok((0x12, 0, 0)));
        assert!(pci_class("0x1030200").is_err());
    }

    #[test]
    fn link_values() {
        assert_eq!(link_speed("32.0 GT/s PCIe\n"), Ok(Some(32.0)));
        assert_eq!(link_speed("2.5 GT/s PCIe"), Ok(Some(2.5)));
        assert_eq!(link_speed("8 GT/s"), Ok(Some(8.0)));
        assert_eq!(link_speed("Unknown"), Ok(None));
        assert_eq!(link_speed("Unknown speed\n"), Ok(None));
        assert!(link_speed("fast").is_err());
        assert!(link_speed("16.0 MB/s").is_err());
        assert!(link_speed("NaN GT/s").is_err());
        assert!(link_speed("0 GT/s").is_err());
        assert_eq!(link_width("16\n"), Ok(Some(16)));
        assert_eq!(link_width("x8"), Ok(Some(8)));
        assert_eq!(link_width("0"), Ok(None));
        assert!(link_width("-1").is_err());
    }

    #[test]
    fn numa() {
        assert_eq!(numa_node("-1\n"), Ok(None));
        assert_eq!(numa_node("1\n"), Ok(Some(1)));
        assert!(numa_node("-2").is_err());
    }

    #[test]
    fn resource_lines() {
        let text = "0x0000004000000000 0x000000400007ffff 0x0000000000140204\n\
                    0x0000000000000000 0x0000000000000000 0x0000000000000000\n\
                    0x0000100000000000 0x0000101fffffffff 0x000000000014220c\n";
        assert_eq!(
            resource(text),
            Ok(vec![
                Bar {
                    index: 0,
                    size: 512 << 10
                },
                Bar {
                    index: 2,
                    size: 128 << 30
                },
            ])
        );
        assert!(resource("0x0 0x1\n").is_err());
        assert!(resource("0x10 0x1 0x0\n").is_err());
        assert!(resource("x y z\n").is_err());
        assert_eq!(resource(""), Ok(vec![]));
    }

    #[test]
    fn cpuinfo_counts_cores_and_flags() {
        let text = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\nphysical id\t: 0\ncore id\t\t: 0\nflags\t\t: fpu avx2 fma f16c avx512f avx512_vnni amx_tile hypervisor\n\n\
                    processor\t: 1\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\nphysical id\t: 0\ncore id\t\t: 0\nflags\t\t: fpu avx2\n\n\
                    processor\t: 2\nphysical id\t: 0\ncore id\t\t: 1\n\nprocessor\t: 3\nphysical id\t: 1\ncore id\t\t: 1\n";
        let cpu = cpuinfo(text).unwrap();
        assert_eq!(cpu.vendor.as_deref(), Some("GenuineIntel"));
        assert_eq!(cpu.threads, 4);
        assert_eq!(cpu.cores, 3);
        assert!(cpu.flags.avx2 && cpu.flags.fma && cpu.flags.f16c && cpu.flags.avx512f);
        assert!(cpu.flags.avx512vnni && cpu.flags.amx_tile);
        assert!(!cpu.flags.avx512bw && !cpu.flags.amx_bf16);
        assert!(cpuinfo_has_hypervisor(text));
        assert!(cpuinfo("garbage").is_err());
    }

    #[test]
    fn meminfo() {
        assert_eq!(
            meminfo_total_bytes("MemTotal:       24576000 kB\nMemFree: 1 kB\n"),
            Ok(24_576_000 * 1024)
        );
        assert!(meminfo_total_bytes("MemTotal: lots\n").is_err());
        assert!(meminfo_total_bytes("MemFree: 1 kB\n").is_err());
    }

    #[test]
    fn nvidia() {
        let open = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (nixbld@)  Tue Jan 1 00:00:00 UTC 1980\nGCC version:  gcc version 15.3.0 (GCC)\n";
        assert_eq!(
            nvidia_version(open),
            Ok(NvidiaDriver {
                driver_version: "580.159.04".into(),
                open_kernel_module: true
            })
        );
        let legacy = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n";
        let parsed = nvidia_version(legacy).unwrap();
        assert_eq!(parsed.driver_version, "535.104.05");
        assert!(!parsed.open_kernel_module);
        assert!(nvidia_version("hello").is_err());
    }

    #[test]
    fn force_probe() {
        let cmdline = "BOOT_IMAGE=/vmlinuz quiet xe.force_probe=E20B,56a0 i915.force_probe=!e20b xe.force_probe=\"7d55\"\n";
        let xe = force_probe_ids(cmdline, "xe");
        assert_eq!(xe, vec!["e20b", "56a0", "7d55"]);
        assert!(force_probe_allows(&xe, "e20b"));
        assert!(!force_probe_allows(&xe, "e20c"));
        let i915 = force_probe_ids(cmdline, "i915");
        assert!(!force_probe_allows(&i915, "e20b"));
        assert!(force_probe_allows(&["*".to_string()], "56c0"));
        assert!(!force_probe_allows(
            &["*".to_string(), "!56c0".to_string()],
            "56c0"
        ));
    }
}
