//! The command line: options, output files, errors a user can cause.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{fixture, run};

#[test]
fn bad_arguments_get_clap_messages() {
    let output = run(&["--format", "yaml"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid value 'yaml' for '--format"),
        "{stderr}"
    );
    assert!(
        stderr.contains("json") && stderr.contains("nix") && stderr.contains("text"),
        "{stderr}"
    );

    let output = run(&["--frobnicate"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unexpected argument '--frobnicate'"));

    let output = run(&["-o"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn root_must_be_a_directory() {
    let output = run(&["--root", "/nonexistent/xpu-root", "--no-level-zero"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--root /nonexistent/xpu-root: not a directory"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn help_and_version() {
    let output = run(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for option in ["--root", "--format", "--output", "--no-level-zero"] {
        assert!(help.contains(option), "{option} missing from --help");
    }
    let output = run(&["--version"]);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("xpu-probe {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn output_file_is_replaced_atomically_and_readable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("facts.json");
    std::fs::write(&path, "old content").unwrap();
    let root = fixture("h100");
    let output = run(&[
        "--root",
        root.to_str().unwrap(),
        "--no-level-zero",
        "-o",
        path.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.stdout.is_empty(), "-o writes nothing to stdout");
    let written = std::fs::read_to_string(&path).unwrap();
    let stdout = run(&["--root", root.to_str().unwrap(), "--no-level-zero"]).stdout;
    assert_eq!(written.as_bytes(), stdout.as_slice());
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o644
    );
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("facts.json")]);
}

#[test]
fn output_errors_are_clear_and_keep_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/dir/facts.json");
    let output = run(&["--no-level-zero", "-o", missing.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot write") && stderr.contains("no/such/dir/facts.json"),
        "{stderr}"
    );

    let output = run(&["--no-level-zero", "-o", dir.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("it is a directory"));
}

#[test]
fn text_format_summarises() {
    let output = run(&[
        "--root",
        fixture("flex-170-unbound").to_str().unwrap(),
        "--no-level-zero",
        "--format",
        "text",
    ]);
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.starts_with("Recommended variant: exo-intel\n"),
        "{text}"
    );
    assert!(
        text.contains("Kernel parameters: i915.force_probe=56c0"),
        "{text}"
    );
    assert!(
        text.contains("0000:b3:00.0 8086 56c0 Data Center GPU Flex 170 [Flex], driver none"),
        "{text}"
    );
    assert!(
        text.contains("ASPEED Graphics Family, driver ast, not for compute"),
        "{text}"
    );
    assert!(text.contains("Memory: 512.0 GiB"), "{text}");
    assert!(text.contains("Level Zero: skipped"), "{text}");
    assert!(
        text.contains("! Data Center GPU Flex 170 (0000:b3:00.0) is bound to no kernel driver"),
        "{text}"
    );
}

/// Copies a fixture into a temporary directory, so a test can change it.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", fixture(name).display()))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    dir
}

/// Runs the probe as an unprivileged user when this test runs as root (root reads everything).
fn run_unprivileged(root: &std::path::Path) -> xpu_probe::Facts {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let is_root = unsafe { libc::geteuid() } == 0;
    let mut command = if is_root {
        // The build directory may sit where nobody cannot reach it (e.g. under /root):
        // run a copy from the (traversable) tree's directory.
        let binary = root.join("xpu-probe");
        if !binary.exists() {
            std::fs::copy(env!("CARGO_BIN_EXE_xpu-probe"), &binary).unwrap();
        }
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
        c.arg(&binary);
        c
    } else {
        common::probe_command()
    };
    let output = command
        .args(["--root", root.to_str().unwrap(), "--no-level-zero"])
        .output()
        .expect("setpriv (util-linux) runs the probe as nobody");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn make_traversable(dir: &std::path::Path) {
    // The temporary directory is 0700; nobody must be able to reach the tree.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn render_node_the_user_cannot_open_is_a_warning() {
    let tree = copy_fixture("arc-b580-xe");
    make_traversable(tree.path());
    let node = tree.path().join("dev/dri/renderD128");
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o660)).unwrap();
    let facts = run_unprivileged(tree.path());
    assert_eq!(facts.recommendation.variant, xpu_probe::Variant::ExoIntel);
    assert!(
        facts
            .recommendation
            .warnings
            .iter()
            .any(|w| w.contains("cannot open /dev/dri/renderD128 read-write")
                && w.contains("group render")),
        "{:?}",
        facts.recommendation.warnings
    );

    // Readable and writable: no warning.
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o666)).unwrap();
    let facts = run_unprivileged(tree.path());
    assert!(
        facts.recommendation.warnings.is_empty(),
        "{:?}",
        facts.recommendation.warnings
    );

    // Missing node.
    std::fs::remove_file(&node).unwrap();
    let facts = common::facts_of_root(tree.path());
    assert!(facts
        .recommendation
        .warnings
        .iter()
        .any(|w| w.contains("render node /dev/dri/renderD128") && w.contains("does not exist")));
}

#[test]
fn unreadable_files_are_warnings() {
    let tree = copy_fixture("h100");
    make_traversable(tree.path());
    let device = tree.path().join("sys/devices/pci0000:00/0000:00:06.0");
    std::fs::set_permissions(device.join("class"), std::fs::Permissions::from_mode(0o000)).unwrap();
    std::fs::set_permissions(
        tree.path().join("proc/meminfo"),
        std::fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    let facts = run_unprivileged(tree.path());
    assert!(
        facts.warnings.iter().any(|w| w == "cannot read /sys/bus/pci/devices/0000:00:06.0/class: Permission denied (os error 13)"),
        "{:?}",
        facts.warnings
    );
    assert!(facts
        .warnings
        .iter()
        .any(|w| w.starts_with("cannot read /proc/meminfo: Permission denied")));
    assert!(facts.memory.is_none());
    // Without its class the H100 is not recognised as a GPU; the rest is still there.
    assert!(facts.gpus.is_empty());
    assert_eq!(facts.pci.len(), 5);
    assert_eq!(facts.nvidia.as_ref().unwrap().driver_version, "580.159.04");
}

#[test]
fn missing_sysfs_and_proc_are_warnings() {
    let empty = tempfile::tempdir().unwrap();
    let facts = common::facts_of_root(empty.path());
    assert!(facts.pci.is_empty() && facts.gpus.is_empty());
    assert!(facts
        .warnings
        .iter()
        .any(|w| w.starts_with("cannot list /sys/bus/pci/devices")));
    assert!(facts
        .warnings
        .iter()
        .any(|w| w == "/proc/cpuinfo is missing"));
    assert!(facts
        .warnings
        .iter()
        .any(|w| w == "/proc/cmdline is missing"));
    assert_eq!(facts.recommendation.variant, xpu_probe::Variant::ExoCpu);
}

#[test]
fn nvidia_gpu_without_driver_is_explained() {
    let tree = copy_fixture("h100");
    std::fs::remove_dir_all(tree.path().join("proc/driver")).unwrap();
    std::fs::remove_file(
        tree.path()
            .join("sys/devices/pci0000:00/0000:00:06.0/driver"),
    )
    .unwrap();
    let facts = common::facts_of_root(tree.path());
    assert!(
        facts.warnings.is_empty(),
        "an absent /proc/driver/nvidia is not a file error: {:?}",
        facts.warnings
    );
    assert_eq!(facts.nvidia, None);
    assert_eq!(facts.recommendation.variant, xpu_probe::Variant::ExoCuda);
    assert!(common::has_warning(
        &facts,
        "NVIDIA kernel driver is not loaded"
    ));
    assert!(common::has_warning(&facts, "bound to no kernel driver"));
}

#[test]
fn vfio_bound_gpu_is_not_used() {
    let tree = copy_fixture("h100");
    let link = tree
        .path()
        .join("sys/devices/pci0000:00/0000:00:06.0/driver");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("../../../bus/pci/drivers/vfio-pci", &link).unwrap();
    let facts = common::facts_of_root(tree.path());
    assert_eq!(facts.recommendation.variant, xpu_probe::Variant::ExoCpu);
    assert!(common::has_warning(&facts, "bound to vfio-pci"));
}

#[test]
fn force_probe_on_the_command_line_is_present() {
    let tree = copy_fixture("flex-170-unbound");
    std::fs::write(
        tree.path().join("proc/cmdline"),
        "quiet i915.force_probe=56c0,56c1\n",
    )
    .unwrap();
    // Bound thanks to the parameter: still needed (dropping it would unbind the GPU).
    let device = tree
        .path()
        .join("sys/devices/pci0000:b0/0000:b0:01.0/0000:b1:00.0/0000:b2:01.0/0000:b3:00.0");
    std::os::unix::fs::symlink(
        "../../../../../../bus/pci/drivers/i915",
        device.join("driver"),
    )
    .unwrap();
    let facts = common::facts_of_root(tree.path());
    let flex = facts
        .gpus
        .iter()
        .find(|g| g.pci_address == "0000:b3:00.0")
        .unwrap();
    let fp = &flex.intel.as_ref().unwrap().force_probe;
    assert!(fp.needed && fp.present);
    assert_eq!(
        facts.recommendation.kernel_params,
        vec!["i915.force_probe=56c0"]
    );
    assert!(!common::has_warning(&facts, "bound to no kernel driver"));
}

#[test]
fn pipe_closed_early_is_not_an_error() {
    use std::io::Read;
    let mut child = common::probe_command()
        .args(["--no-level-zero"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(status.success(), "{status:?}");
}

#[test]
fn containers_are_detected_from_their_marker_files() {
    let tree = copy_fixture("virtio-vm");
    assert_eq!(common::facts_of_root(tree.path()).container, None);
    std::fs::write(tree.path().join(".dockerenv"), "").unwrap();
    assert_eq!(
        common::facts_of_root(tree.path()).container.as_deref(),
        Some("docker")
    );
    std::fs::create_dir_all(tree.path().join("run/systemd")).unwrap();
    std::fs::write(
        tree.path().join("run/systemd/container"),
        "systemd-nspawn\n",
    )
    .unwrap();
    let facts = common::facts_of_root(tree.path());
    assert_eq!(facts.container.as_deref(), Some("systemd-nspawn"));
    // The hypervisor underneath is still reported.
    assert_eq!(facts.virtualization.as_deref(), Some("qemu"));
}

#[test]
fn bare_metal_has_no_virtualization() {
    let tree = copy_fixture("virtio-vm");
    std::fs::remove_dir_all(tree.path().join("sys/class/dmi")).unwrap();
    let cpuinfo = std::fs::read_to_string(tree.path().join("proc/cpuinfo")).unwrap();
    std::fs::write(
        tree.path().join("proc/cpuinfo"),
        cpuinfo.replace(" hypervisor", ""),
    )
    .unwrap();
    assert_eq!(common::facts_of_root(tree.path()).virtualization, None);
    std::fs::write(tree.path().join("proc/cpuinfo"), cpuinfo).unwrap();
    assert_eq!(
        common::facts_of_root(tree.path()).virtualization.as_deref(),
        Some("vm-other")
    );
}

#[test]
fn text_format_for_cuda_and_cpu_hosts() {
    let output = run(&[
        "--root",
        fixture("h100").to_str().unwrap(),
        "--no-level-zero",
        "--format",
        "text",
    ]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.starts_with("Recommended variant: exo-cuda\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "DeviceAllow: char-nvidiactl, char-nvidia-caps, char-nvidia-frontend, char-nvidia-uvm"
        ),
        "{text}"
    );
    assert!(text.contains("NVIDIA driver: 580.159.04"), "{text}");
    assert!(text.contains("(virtual machine: vm-other)"), "{text}");
    assert!(!text.contains("Warnings:"), "{text}");

    let output = run(&[
        "--root",
        fixture("aspeed-only").to_str().unwrap(),
        "--no-level-zero",
        "--format",
        "text",
    ]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.starts_with("Recommended variant: exo-cpu\n"), "{text}");
    assert!(!text.contains("DeviceAllow"), "{text}");
}

#[test]
fn small_bar_on_a_discrete_intel_gpu_is_a_warning() {
    let tree = copy_fixture("arc-b580-xe");
    let resource = tree.path().join(
        "sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:01.0/0000:03:00.0/resource",
    );
    let text = std::fs::read_to_string(&resource).unwrap();
    // BAR2: 16 GiB with Resizable BAR, the legacy 256 MiB window without.
    let small = text.replace(
        "0x0000004000000000 0x00000043ffffffff",
        "0x0000004000000000 0x000000400fffffff",
    );
    assert_ne!(
        small, text,
        "the fixture's BAR2 line changed; update this test"
    );
    assert!(common::facts_of_root(tree.path())
        .recommendation
        .warnings
        .is_empty());
    std::fs::write(&resource, small).unwrap();
    let facts = common::facts_of_root(tree.path());
    assert!(
        facts
            .recommendation
            .warnings
            .iter()
            .any(|w| w.contains("Resizable BAR looks disabled")
                && w.contains("refuses to start on xe")),
        "{:?}",
        facts.recommendation.warnings
    );
}
