//! Prints the model description (`xpu_gguf::arch`) of each GGUF file given, or the one
//! line that says why it has none: `cargo run -p xpu-gguf --example describe FILE...`.

use std::process::ExitCode;

use xpu_gguf::{GgufFile, ModelDesc};

fn main() -> ExitCode {
    let mut status = ExitCode::SUCCESS;
    for path in std::env::args_os().skip(1) {
        let path = std::path::PathBuf::from(path);
        let result = GgufFile::open(&path)
            .map_err(|e| e.to_string())
            .and_then(|file| ModelDesc::read(&file.content).map_err(|e| e.to_string()));
        match result {
            Ok(desc) => {
                println!("{}: {} {:#?}", path.display(), desc.arch.name, desc.hparams);
                for block in &desc.blocks {
                    let names: Vec<&str> =
                        block.tensors().iter().map(|t| t.name.as_str()).collect();
                    println!(
                        "  block {}: window {:?}, rope base {}, {}",
                        block.index,
                        block.sliding_window,
                        block.rope_base,
                        names.join(" ")
                    );
                }
            }
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                status = ExitCode::FAILURE;
            }
        }
    }
    status
}
