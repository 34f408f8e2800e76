//! A model's layers split over several devices (`DeviceOptions::devices`), on lavapipe,
//! where one adapter named several times opens several devices: splits of 2 and 3, uneven
//! ones and a device with one layer give the same logits (so the same greedy tokens) as one
//! device, alone and batched; tied embeddings (the last device holds its own copy for the
//! output head) and Gemma's embedding scale and sliding-window layers go through a split;
//! and the errors: a bad device list, a bad `--split`, a model that fits no share, a device
//! lost mid-run.

mod common;

use std::path::Path;

use xpu_vulkan::{
    AdapterSelector, DeviceOptions, DeviceSelection, LlamaModel, LoadOptions, SeqChunk, VulkanError,
};

const NEW_TOKENS: usize = 12;

/// The options of a model on `devices` devices of adapter 0 (lavapipe in CI), with `split`.
fn options(devices: usize, split: Option<&[u32]>, slots: usize) -> LoadOptions {
    LoadOptions {
        device: DeviceOptions {
            devices: DeviceSelection::List(vec![AdapterSelector::Index(0); devices]),
            split: split.map(<[u32]>::to_vec),
            ..common::device_options(None)
        },
        ctx: Some(64),
        max_batch: 16,
        slots,
    }
}

fn load(path: &Path, devices: usize, split: Option<&[u32]>) -> LlamaModel {
    LlamaModel::load(path, &options(devices, split, 1)).unwrap()
}

/// Greedy generation after a prompt: each step's logits (the prompt's last, then one per
/// generated token).
fn generate(model: &mut LlamaModel, prompt: &[u32]) -> Vec<Vec<f32>> {
    model.reset();
    let mut logits = vec![model.forward(prompt, 0).unwrap()];
    for i in 0..NEW_TOKENS {
        let next = common::argmax(logits.last().unwrap());
        logits.push(model.forward(&[next], prompt.len() + i).unwrap());
    }
    logits
}

fn tokens(logits: &[Vec<f32>]) -> Vec<u32> {
    logits.iter().map(|l| common::argmax(l)).collect()
}

/// Each split runs the same kernels on the same device type, and the hidden state crosses
/// as exact bytes: the logits must be equal, not merely close.
/// A split to try: devices, `--split`, the layers each device should get.
type Split<'a> = (usize, Option<&'a [u32]>, &'a [usize]);

fn assert_same(path: &Path, splits: &[Split<'_>]) {
    let prompt = [1u32, 415, 5565, 302, 4843, 349];
    let mut one = load(path, 1, None);
    let want = generate(&mut one, &prompt);
    drop(one);
    for &(devices, split, layers) in splits {
        let mut model = load(path, devices, split);
        let map: Vec<usize> = model.device_map().iter().map(|p| p.layers.len()).collect();
        assert_eq!(map, layers, "{devices} devices, split {split:?}");
        let got = generate(&mut model, &prompt);
        assert_eq!(
            tokens(&got),
            tokens(&want),
            "{devices} devices, split {split:?}"
        );
        assert!(
            got == want,
            "{devices} devices, split {split:?}: logits differ"
        );
        assert!(model.last_timing().cross_s > 0.0);
    }
}

#[test]
fn splits_of_two_and_three_give_the_logits_of_one_device() {
    // 4 layers, an output matrix of its own, grouped-query heads, K-quant weights.
    let path = common::test_file("llama3", "Q4_K_M");
    assert_same(
        &path,
        &[
            (2, None, &[2, 2]),
            (3, None, &[2, 1, 1]),
            (2, Some(&[3, 1]), &[3, 1]),
            (2, Some(&[1, 3]), &[1, 3]),
        ],
    );
}

#[test]
fn tied_embeddings_and_gemma_layers_split() {
    assert_same(
        &common::test_file("llama3-tied", "Q8_0"),
        &[(2, None, &[2, 2])],
    );
    // Embedding scale on the first device; sliding-window layers by their global index.
    assert_same(
        &common::test_file("gemma3", "Q8_0"),
        &[(3, Some(&[1, 3, 2]), &[1, 3, 2])],
    );
}

#[test]
fn smollm2_split_gives_the_tokens_of_one_device() {
    assert_same(&common::model_path(), &[(2, Some(&[2, 1]), &[20, 10])]);
}

#[test]
fn batched_sequences_through_a_split_match_one_device() {
    // Three sequences in one pass on every step, one joining late: each device runs every
    // step's rows.
    let path = common::test_file("llama3", "Q4_K_M");
    let prompts: [&[u32]; 3] = [&[1, 415, 5565, 302], &[1, 9, 33, 700, 12, 5], &[1, 77]];
    let run = |devices: usize| {
        let mut model = LlamaModel::load(&path, &options(devices, None, 3)).unwrap();
        let mut fed: Vec<Vec<u32>> = prompts.iter().map(|p| p.to_vec()).collect();
        let mut done = [0usize; 3];
        let mut out = vec![Vec::new(); 3];
        for step in 0..8 {
            let members: Vec<usize> = (0..3).filter(|&i| step >= i).collect();
            let chunks: Vec<SeqChunk<'_>> = members
                .iter()
                .map(|&i| SeqChunk {
                    slot: i,
                    tokens: &fed[i][done[i]..],
                    start: done[i],
                })
                .collect();
            let logits = model.forward_batch(&chunks).unwrap();
            for (&i, l) in members.iter().zip(logits) {
                done[i] = fed[i].len();
                fed[i].push(common::argmax(&l));
                out[i].push(l);
            }
        }
        out
    };
    let one = run(1);
    let two = run(2);
    for (i, (a, b)) in one.iter().zip(&two).enumerate() {
        assert_eq!(tokens(a), tokens(b), "sequence {i}");
        assert!(a == b, "sequence {i}: logits differ");
    }
}

#[test]
fn bad_device_lists_and_splits_are_clear_errors() {
    let path = common::test_file("llama3", "Q4_K_M");
    let mut opts = options(1, None, 1);
    opts.device.devices =
        DeviceSelection::List(vec![AdapterSelector::Index(0), AdapterSelector::Index(99)]);
    let e = LlamaModel::load(&path, &opts)
        .err()
        .expect("adapter 99 does not exist");
    assert!(matches!(e, VulkanError::NoSuchDevice { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("--devices 99") && msg.contains("0: "), "{msg}");

    opts.device.devices = "0000:7f:1f.7".parse().unwrap();
    let msg = LlamaModel::load(&path, &opts).err().unwrap().to_string();
    assert!(
        msg.contains("--devices 0000:7f:1f.7: no such Vulkan adapter"),
        "{msg}"
    );

    let e = LlamaModel::load(&path, &options(2, Some(&[1, 1, 1]), 1))
        .err()
        .unwrap();
    assert!(e.to_string().contains("3 shares for 2 devices"), "{e}");
    let e = LlamaModel::load(&path, &options(5, None, 1)).err().unwrap();
    assert!(
        e.to_string().contains("5 devices for a model of 4 layers"),
        "{e}"
    );

    for bad in ["", "x", "0,", "1:2:3:4", "0000:03:00.8"] {
        let e = bad.parse::<DeviceSelection>().unwrap_err();
        assert!(e.contains("auto") && e.contains("PCI"), "{bad}: {e}");
    }
    assert_eq!(
        "auto".parse::<DeviceSelection>().unwrap(),
        DeviceSelection::Auto
    );
    assert_eq!(
        "1, 03:00.0".parse::<DeviceSelection>().unwrap(),
        DeviceSelection::List(vec![
            AdapterSelector::Index(1),
            AdapterSelector::Pci("0000:03:00.0".into())
        ])
    );
    assert!(xpu_vulkan::parse_split("3,0")
        .unwrap_err()
        .contains("positive"));
    assert_eq!(xpu_vulkan::parse_split("3, 1").unwrap(), [3, 1]);
}

#[test]
fn a_model_that_fits_no_share_gives_each_devices_needs() {
    let path = common::test_file("llama3", "Q4_K_M");
    let mut opts = options(2, None, 1);
    opts.device.memory_limit = Some(1 << 20);
    let e = LlamaModel::load(&path, &opts)
        .err()
        .expect("1 MiB per device is too little");
    let msg = e.to_string();
    assert!(matches!(e, VulkanError::DoesNotFitSplit { .. }), "{msg}");
    assert!(msg.contains("across the 2 selected devices"), "{msg}");
    assert_eq!(msg.matches("1048576 available").count(), 2, "{msg}");
}

#[test]
fn a_lost_device_fails_the_pass_and_says_which() {
    let path = common::test_file("llama3", "Q4_K_M");
    let mut model = load(&path, 2, None);
    model.forward(&[1, 2, 3], 0).unwrap();
    let map = model.device_map();
    assert!(map.iter().all(|p| p.lost.get().is_none()));
    model
        .gpus()
        .nth(1)
        .unwrap()
        .simulate_loss("injected by the test");
    assert_eq!(map[1].lost.get().as_deref(), Some("injected by the test"));
    let e = model.forward(&[4], 3).unwrap_err();
    assert!(matches!(e, VulkanError::DeviceLost { .. }), "{e}");
    assert!(e.to_string().contains("injected by the test"), "{e}");
    // The failed step is not counted as cached: slot 0 still holds positions 0..3.
    assert!(model.forward(&[4], 3).is_err());
}
