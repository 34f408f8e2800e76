//! `xpu-runner pull`, `list` and `rm`: the model cache (see `xpu_runner::hub`).

use anyhow::Context;
use clap::Args;
use xpu_runner::hub::{Fetcher, Freshness, ModelRef};
use xpu_runner::server::pool::human_bytes;

#[derive(Args, Debug)]
pub struct PullArgs {
    /// hf:OWNER/REPO/FILE.gguf[@REVISION] or hf:OWNER/REPO:QUANT[@REVISION].
    #[arg(value_name = "REF")]
    pub reference: String,
}

#[derive(Args, Debug)]
pub struct ListArgs {}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// A hub reference as pulled, or a name as `xpu-runner list` shows it.
    #[arg(value_name = "REF")]
    pub reference: String,
}

/// Downloads (or checks) a hub model and prints its local path.
pub fn pull(args: PullArgs) -> anyhow::Result<()> {
    let ModelRef::Hub(reference) = ModelRef::parse(&args.reference)? else {
        anyhow::bail!(
            "`{}` is a local path; pull takes a hub reference: hf:OWNER/REPO/FILE.gguf[@REVISION] or hf:OWNER/REPO:QUANT[@REVISION]",
            args.reference
        );
    };
    let fetcher = Fetcher::from_env()?;
    let path = fetcher.fetch(&reference, Freshness::CheckHub)?;
    println!("{}", path.display());
    Ok(())
}

/// Prints the cached models: name, size and the reference to use them by.
pub fn list(_: ListArgs) -> anyhow::Result<()> {
    let fetcher = Fetcher::from_env()?;
    let models = fetcher.cache.list();
    if models.is_empty() {
        eprintln!("no models in {}", fetcher.cache.root().display());
        return Ok(());
    }
    let width = models
        .iter()
        .map(|m| m.name.len())
        .max()
        .unwrap_or(0)
        .max(4);
    println!("{:<width$}  {:>10}  REFERENCE", "NAME", "SIZE");
    for model in models {
        println!(
            "{:<width$}  {:>10}  {}",
            model.name,
            human_bytes(model.size),
            model.reference.as_deref().unwrap_or(&model.name)
        );
    }
    Ok(())
}

/// Removes one cached model.
pub fn rm(args: RmArgs) -> anyhow::Result<()> {
    let fetcher = Fetcher::from_env()?;
    let cache = &fetcher.cache;
    let found = match ModelRef::parse(&args.reference)? {
        ModelRef::Hub(reference) => cache
            .find_hub(&reference)
            .with_context(|| format!("{reference} in the model cache"))?,
        ModelRef::Path(_) => cache.find_name(&args.reference),
    };
    let path = found.with_context(|| {
        format!(
            "`{}` is not in the model cache ({}); `xpu-runner list` shows what is",
            args.reference,
            cache.root().display()
        )
    })?;
    cache.remove(&path)?;
    println!("removed {}", path.display());
    Ok(())
}
