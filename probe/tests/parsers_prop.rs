//! Property tests for the sysfs/procfs value parsers: no input makes them panic, and values
//! written the way the kernel writes them parse back exactly.

use proptest::prelude::*;
use xpu_probe::parse;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_parser_panics_on_any_text(text in any::<String>()) {
        let _ = parse::hex_u16(&text);
        let _ = parse::hex_u8(&text);
        let _ = parse::pci_class(&text);
        let _ = parse::link_speed(&text);
        let _ = parse::link_width(&text);
        let _ = parse::numa_node(&text);
        let _ = parse::decimal_u32(&text);
        let _ = parse::resource(&text);
        let _ = parse::cpuinfo(&text);
        let _ = parse::cpuinfo_has_hypervisor(&text);
        let _ = parse::meminfo_total_bytes(&text);
        let _ = parse::nvidia_version(&text);
        let ids = parse::force_probe_ids(&text, "xe");
        let _ = parse::force_probe_allows(&ids, "e20b");
    }

    #[test]
    fn no_parser_panics_on_sysfs_like_text(text in "[0-9a-fA-Fx .:/GTsPCIeUnknown\n-]{0,80}") {
        let _ = parse::hex_u16(&text);
        let _ = parse::pci_class(&text);
        let _ = parse::link_speed(&text);
        let _ = parse::link_width(&text);
        let _ = parse::resource(&text);
        let _ = parse::meminfo_total_bytes(&text);
    }

    #[test]
    fn hex_ids_round_trip(id in any::<u16>(), upper in any::<bool>()) {
        let text = if upper { format!("0x{id:04X}\n") } else { format!("0x{id:04x}\n") };
        prop_assert_eq!(parse::hex_u16(&text), Ok(id));
    }

    #[test]
    fn hex_ids_reject_wider_values(id in 0x1_0000u32..) {
        let text = format!("0x{id:x}");
        prop_assert!(parse::hex_u16(&text).is_err());
    }

    #[test]
    fn class_codes_split_into_bytes(base in any::<u8>(), sub in any::<u8>(), prog_if in any::<u8>()) {
        let text = format!("0x{base:02x}{sub:02x}{prog_if:02x}\n");
        prop_assert_eq!(parse::pci_class(&text), Ok((base, sub, prog_if)));
    }

    #[test]
    fn link_speeds_round_trip(tenths in 1u32..1000, pcie in any::<bool>()) {
        let speed = tenths as f64 / 10.0;
        let text = format!("{speed:.1} GT/s{}\n", if pcie { " PCIe" } else { "" });
        prop_assert_eq!(parse::link_speed(&text), Ok(Some(speed)));
    }

    #[test]
    fn link_widths_round_trip(width in 1u32..=64) {
        prop_assert_eq!(parse::link_width(&format!("{width}\n")), Ok(Some(width)));
    }

    #[test]
    fn resource_sizes_are_end_minus_start_plus_one(
        regions in proptest::collection::vec((0u64..(1 << 48), 0u64..(1 << 40), any::<u32>()), 0..13)
    ) {
        let mut text = String::new();
        for (start, len, flags) in &regions {
            let (start, end) = if *len == 0 { (0, 0) } else { (*start, start + len - 1) };
            text.push_str(&format!("0x{start:016x} 0x{end:016x} 0x{flags:016x}\n"));
        }
        let bars = parse::resource(&text).unwrap();
        let expected: Vec<(u32, u64)> = regions
            .iter()
            .enumerate()
            .filter(|(_, (_, len, _))| *len > 0)
            .map(|(i, (_, len, _))| (i as u32, *len))
            .collect();
        let parsed: Vec<(u32, u64)> = bars.iter().map(|b| (b.index, b.size)).collect();
        prop_assert_eq!(parsed, expected);
    }

    #[test]
    fn cpuinfo_counts_processors_and_cores(
        sockets in 1u32..3, cores in 1u32..9, smt in 1u32..3,
        flags in proptest::sample::subsequence(vec!["avx2", "fma", "f16c", "avx512f", "avx512_vnni", "amx_tile"], 0..=6)
    ) {
        let mut text = String::new();
        let mut n = 0;
        for socket in 0..sockets {
            for thread in 0..smt {
                for core in 0..cores {
                    let _ = thread;
                    text.push_str(&format!(
                        "processor\t: {n}\nvendor_id\t: GenuineIntel\nmodel name\t: Test CPU\nphysical id\t: {socket}\ncore id\t\t: {core}\nflags\t\t: fpu {}\n\n",
                        flags.join(" ")
                    ));
                    n += 1;
                }
            }
        }
        let cpu = parse::cpuinfo(&text).unwrap();
        prop_assert_eq!(cpu.threads, sockets * cores * smt);
        prop_assert_eq!(cpu.cores, sockets * cores);
        prop_assert_eq!(cpu.flags.avx2, flags.contains(&"avx2"));
        prop_assert_eq!(cpu.flags.avx512vnni, flags.contains(&"avx512_vnni"));
        prop_assert_eq!(cpu.flags.amx_tile, flags.contains(&"amx_tile"));
        prop_assert_eq!(cpu.model_name.as_deref(), Some("Test CPU"));
    }

    #[test]
    fn meminfo_round_trips(kib in 0u64..(1u64 << 40)) {
        let text = format!("MemTotal:       {kib} kB\nMemFree:  1 kB\n");
        prop_assert_eq!(parse::meminfo_total_bytes(&text), Ok(kib * 1024));
    }
}
