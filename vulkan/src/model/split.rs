//! How a model's layers are shared out over several devices, and the context that fits all
//! of them.

use std::ops::Range;

use super::{choose_context, MemoryNeeds, CTX_GRANULE};
use crate::{Gpu, VulkanError};

/// The layers each device runs, contiguous and in device order: in proportion to `split`
/// (`--split 3,1`) when given, else to each device's usable memory (equal shares when a
/// driver does not tell). Every device gets at least one layer.
pub(super) fn plan_layers(
    n_layer: usize,
    memory: &[Option<u64>],
    split: Option<&[u32]>,
) -> Result<Vec<Range<usize>>, VulkanError> {
    let devices = memory.len();
    let shares: Vec<u128> = match split {
        Some(split) if split.len() != devices => {
            return Err(VulkanError::BadSplit(format!(
            "{} shares for {devices} device{}; give one share per device that --devices selects",
            split.len(),
            if devices == 1 { "" } else { "s" }
        )))
        }
        Some(split) => split.iter().map(|&s| s as u128).collect(),
        None if memory.iter().all(Option::is_some) => {
            memory.iter().map(|m| m.unwrap_or(1) as u128).collect()
        }
        None => vec![1; devices],
    };
    if devices > n_layer {
        return Err(VulkanError::BadSplit(format!(
            "{devices} devices for a model of {n_layer} layers; every device needs at least one layer, so select at most {n_layer} (--devices)"
        )));
    }
    let total: u128 = shares.iter().sum::<u128>().max(1);
    let n = n_layer as u128;
    // Largest remainder: each device its whole share, then the layers left over to the
    // devices furthest below their exact share; no device below one layer.
    let mut counts: Vec<u128> = shares.iter().map(|s| (n * s / total).max(1)).collect();
    // How far a device is below its exact share, in units of 1 / total layers.
    let under = |counts: &[u128], i: usize| (n * shares[i]) as i128 - (counts[i] * total) as i128;
    while counts.iter().sum::<u128>() < n {
        let i = (0..devices)
            .max_by_key(|&i| (under(&counts, i), std::cmp::Reverse(i)))
            .expect("a device");
        counts[i] += 1;
    }
    while counts.iter().sum::<u128>() > n {
        let i = (0..devices)
            .filter(|&i| counts[i] > 1)
            .min_by_key(|&i| (under(&counts, i), i))
            .expect("a device with more than one layer");
        counts[i] -= 1;
    }
    let mut start = 0;
    Ok(counts
        .iter()
        .map(|&c| {
            let range = start..start + c as usize;
            start = range.end;
            range
        })
        .collect())
}

/// The context per slot that every device's share fits (see `choose_context`, which decides
/// it for one device). When a share does not fit, the error gives each device's needs and
/// memory.
pub(super) fn choose_split_context(
    requested: Option<usize>,
    train_ctx: usize,
    gpus: &[Gpu],
    needs: &[MemoryNeeds],
    memory: &[Option<u64>],
) -> Result<usize, VulkanError> {
    if let ([gpu], [needs], [memory]) = (gpus, needs, memory) {
        return choose_context(requested, train_ctx, needs, *memory, gpu.max_binding());
    }
    let mut ctx = usize::MAX;
    let mut short = false;
    for ((gpu, needs), memory) in gpus.iter().zip(needs).zip(memory) {
        match choose_context(requested, train_ctx, needs, *memory, gpu.max_binding()) {
            Ok(c) => ctx = ctx.min(c),
            Err(VulkanError::DoesNotFit { .. }) => short = true,
            Err(e) => return Err(e),
        }
    }
    if !short {
        return Ok(ctx);
    }
    let at = requested.unwrap_or(CTX_GRANULE);
    Err(VulkanError::DoesNotFitSplit {
        devices: gpus
            .iter()
            .zip(needs)
            .zip(memory)
            .map(|((gpu, needs), memory)| {
                (
                    format!("device {} ({})", gpu.index(), gpu.description()),
                    needs.total(at),
                    memory.unwrap_or(u64::MAX),
                )
            })
            .collect(),
        hint: format!(
            "(a context of {at} tokens per sequence); select more devices (--devices), move layers to the larger ones (--split), or use a smaller context (--ctx), fewer sequences (--parallel) or a smaller model"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(n: usize, memory: &[Option<u64>], split: Option<&[u32]>) -> Vec<usize> {
        plan_layers(n, memory, split)
            .unwrap()
            .iter()
            .map(Range::len)
            .collect()
    }

    #[test]
    fn layers_follow_the_shares_and_cover_the_model_in_order() {
        let equal = [Some(8 << 30), Some(8 << 30)];
        assert_eq!(counts(30, &equal, None), [15, 15]);
        assert_eq!(counts(30, &[Some(12 << 30), Some(4 << 30)], None), [23, 7]);
        assert_eq!(counts(30, &equal, Some(&[3, 1])), [23, 7]);
        assert_eq!(counts(3, &equal, Some(&[100, 1])), [2, 1]);
        assert_eq!(counts(7, &[None, Some(1), Some(1)], None), [3, 2, 2]);
        assert_eq!(counts(30, &[Some(1)], Some(&[5])), [30]);
        let ranges = plan_layers(31, &[Some(3), Some(2), Some(2)], None).unwrap();
        assert_eq!(ranges.first().unwrap().start, 0);
        assert_eq!(ranges.last().unwrap().end, 31);
        assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
    }

    #[test]
    fn bad_splits_say_what_to_change() {
        let two = [Some(1), Some(1)];
        let e = plan_layers(30, &two, Some(&[1, 2, 3])).unwrap_err();
        assert!(e.to_string().contains("3 shares for 2 devices"), "{e}");
        let e = plan_layers(2, &[Some(1); 3], None).unwrap_err();
        assert!(e.to_string().contains("select at most 2"), "{e}");
    }
}
