//! Batched forward passes of the CPU engine: several sequences, each in its own KV-cache
//! slot, share one pass, and a sequence's logits are bitwise the same as when it runs
//! alone, whatever shares its passes (prefill chunks and decode rows of other sequences)
//! and however its prompt is split into chunks. Checked on the real test model
//! (SmolLM2 Q4_1), on it requantized to Q4_K_M, on small random models of every weight
//! type the engine runs, and on the random-weight files of every architecture.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{test_model, write_small_llama};
use xpu_cpu::{CpuLlamaEngine, SeqChunk};

/// One sequence of a test: its prompt, the tokens fed after it one at a time, the sizes
/// its prompt is split into when batched, and the pass at which it joins.
struct Seq {
    prompt: Vec<u32>,
    then: Vec<u32>,
    chunks: Vec<usize>,
    joins: usize,
}

/// Logits as bits, for exact comparison.
fn bits(logits: &[f32]) -> Vec<u32> {
    logits.iter().map(|v| v.to_bits()).collect()
}

/// `n` token ids below `vocab`, from `seed`.
fn tokens(n: usize, vocab: u32, seed: u64) -> Vec<u32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as u32 % vocab
        })
        .collect()
}

/// Four sequences of different lengths that join at different passes; the first has
/// a prompt of `long` tokens (64 or more: llama.cpp's batch size for f32 attention).
fn sequences(vocab: u32, long: usize) -> Vec<Seq> {
    let seq = |prompt: usize, then: usize, chunks: &[usize], joins: usize, seed: u64| Seq {
        prompt: tokens(prompt, vocab, seed),
        then: tokens(then, vocab, seed + 100),
        chunks: chunks.to_vec(),
        joins,
    };
    vec![
        seq(long, 5, &[long / 2, 3, long], 0, 1),
        seq(9, 8, &[9], 0, 2),
        seq(23, 6, &[1, 10, 12], 2, 3),
        seq(3, 7, &[2, 1], 4, 4),
    ]
}

/// Logits of a sequence run alone in slot 0 of a fresh single-slot engine: after its
/// prompt (in chunks of `prompt_chunk` tokens) and after each further token.
fn alone(path: &Path, ctx: usize, seq: &Seq, prompt_chunk: usize) -> Vec<Vec<u32>> {
    let mut engine = CpuLlamaEngine::load(path, Some(ctx), 1).unwrap();
    let mut start = 0;
    let mut last = Vec::new();
    for piece in seq.prompt.chunks(prompt_chunk) {
        last = engine.forward(piece, start).unwrap();
        start += piece.len();
    }
    let mut out = vec![bits(&last)];
    for &t in &seq.then {
        out.push(bits(&engine.forward(&[t], start).unwrap()));
        start += 1;
    }
    out
}

/// The logits of every sequence (as [`alone`] returns them), all run on one engine of
/// `slots` slots in shared passes: each pass takes from every sequence that has joined
/// and is not done either its next prompt chunk or its next token. Sequence `i` uses
/// slot `slots - 1 - i`.
fn batched(path: &Path, ctx: usize, seqs: &[Seq], slots: usize) -> Vec<Vec<Vec<u32>>> {
    let mut engine = CpuLlamaEngine::load(path, Some(ctx), slots).unwrap();
    assert_eq!(engine.slots(), slots);
    let mut pos = vec![0; seqs.len()];
    let mut chunk_index = vec![0; seqs.len()];
    let mut out = vec![Vec::new(); seqs.len()];
    let mut pass = 0;
    loop {
        let mut members = Vec::new();
        let mut chunks = Vec::new();
        for (i, seq) in seqs.iter().enumerate() {
            let prompt = seq.prompt.len();
            if pass < seq.joins || pos[i] == prompt + seq.then.len() {
                continue;
            }
            let tokens = if pos[i] < prompt {
                let size = seq.chunks[chunk_index[i] % seq.chunks.len()];
                chunk_index[i] += 1;
                &seq.prompt[pos[i]..(pos[i] + size).min(prompt)]
            } else {
                std::slice::from_ref(&seq.then[pos[i] - prompt])
            };
            members.push(i);
            chunks.push(SeqChunk {
                slot: slots - 1 - i,
                tokens,
                start: pos[i],
            });
        }
        if members.is_empty() && seqs.iter().all(|s| s.joins <= pass) {
            return out;
        }
        if !chunks.is_empty() {
            let logits = engine.forward_batch(&chunks).unwrap();
            assert_eq!(logits.len(), chunks.len());
            for ((&i, chunk), logits) in members.iter().zip(&chunks).zip(logits) {
                pos[i] += chunk.tokens.len();
                if pos[i] >= seqs[i].prompt.len() {
                    out[i].push(bits(&logits));
                }
            }
        }
        pass += 1;
    }
}

/// Batched and alone with the prompt in one pass, and alone with the prompt token by
/// token, give the same bits for every sequence at every step.
fn check_batching_is_invisible(path: &Path, ctx: usize, vocab: u32, long: usize) {
    let seqs = sequences(vocab, long);
    let together = batched(path, ctx, &seqs, 4);
    for (i, seq) in seqs.iter().enumerate() {
        let reference = alone(path, ctx, seq, seq.prompt.len());
        assert_eq!(reference.len(), seq.then.len() + 1);
        assert!(
            together[i] == reference,
            "{}: sequence {i} batched differs from alone (first step that differs: {:?})",
            path.display(),
            together[i].iter().zip(&reference).position(|(a, b)| a != b)
        );
        assert!(
            alone(path, ctx, seq, 1) == reference,
            "{}: sequence {i} with its prompt token by token differs from one pass",
            path.display()
        );
    }
}

#[test]
fn batched_logits_equal_alone_on_the_test_model() {
    check_batching_is_invisible(&test_model(), 256, 49152, 70);
}

#[test]
fn batched_logits_equal_alone_on_a_k_quant_model() {
    // scripts/make-test-models.sh needs llama.cpp's llama-quantize, which CI builds.
    if std::env::var_os("XPU_LLAMA_CPP_BIN").is_none() {
        eprintln!(
            "skipped: XPU_LLAMA_CPP_BIN is not set, so scripts/make-test-models.sh cannot make \
             the Q4_K_M file (scripts/build-llama-cpp.sh prints the directory)"
        );
        return;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/make-test-models.sh"
    );
    let out = Command::new(script)
        .arg("Q4_K_M")
        .env("XPU_TEST_MODEL", test_model())
        .output()
        .expect("run scripts/make-test-models.sh");
    assert!(
        out.status.success(),
        "make-test-models.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    check_batching_is_invisible(&path, 256, 49152, 66);
}

#[test]
fn batched_logits_equal_alone_for_every_weight_type() {
    use candle_core::quantized::GgmlDType;
    let dir = tempfile::tempdir().unwrap();
    for dtype in [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
        GgmlDType::F16,
        GgmlDType::BF16,
        GgmlDType::F32,
    ] {
        let path = dir.path().join(format!("{dtype:?}.gguf"));
        write_small_llama(&path, dtype);
        // The small model's context is 64 positions and its vocabulary 300 tokens.
        check_batching_is_invisible(&path, 64, 300, 40);
    }
}

#[test]
fn batched_logits_equal_alone_for_every_architecture() {
    // The random-weight files of scripts/make-test-gguf.py: qwen2's biases, qwen3's q/k
    // norms, phi3's fused matrices, gemma3's sliding windows (8 positions) and norms.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/make-test-gguf.py");
    let out = Command::new(script)
        .args(["--types", "F32", "--reference"])
        .arg(test_model())
        .output()
        .expect("run scripts/make-test-gguf.py");
    assert!(
        out.status.success(),
        "make-test-gguf.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files = String::from_utf8(out.stdout).unwrap();
    assert!(files.lines().count() >= 5, "files: {files}");
    for file in files.lines() {
        check_batching_is_invisible(Path::new(file), 128, 49152, 64);
    }
}

#[test]
fn a_slot_continues_from_a_cached_prefix() {
    // What the server's prompt cache does: a new sequence that shares the first 12
    // tokens of what a slot holds starts at position 12, overwriting the rest.
    let path = test_model();
    let held = tokens(30, 49152, 7);
    let mut prompt = held[..12].to_vec();
    prompt.extend(tokens(9, 49152, 8));
    let mut engine = CpuLlamaEngine::load(&path, Some(128), 2).unwrap();
    engine
        .forward_batch(&[SeqChunk {
            slot: 1,
            tokens: &held,
            start: 0,
        }])
        .unwrap();
    let reused = engine
        .forward_batch(&[SeqChunk {
            slot: 1,
            tokens: &prompt[12..],
            start: 12,
        }])
        .unwrap();
    let fresh = CpuLlamaEngine::load(&path, Some(128), 1)
        .unwrap()
        .forward(&prompt, 0)
        .unwrap();
    assert_eq!(bits(&reused[0]), bits(&fresh));
}

#[test]
fn bad_batches_are_clear_errors() {
    let path = test_model();
    let mut engine = CpuLlamaEngine::load(&path, Some(32), 2).unwrap();
    assert_eq!(engine.context_length(), 32);
    let chunk = |slot, tokens, start| SeqChunk {
        slot,
        tokens,
        start,
    };
    let mut error = |chunks: &[SeqChunk<'_>]| engine.forward_batch(chunks).unwrap_err().to_string();

    let err = error(&[chunk(2, &[1], 0)]);
    assert!(
        err.contains("slot 2 does not exist") && err.contains("2 sequence"),
        "{err}"
    );
    let err = error(&[chunk(1, &[1], 0), chunk(1, &[2], 0)]);
    assert!(err.contains("slot 1 appears in two chunks"), "{err}");
    let err = error(&[chunk(0, &[1, 2], 0), chunk(1, &[1], 3)]);
    assert!(
        err.contains("slot 1 holds positions 0..0") && err.contains("start at position 3"),
        "{err}"
    );
    let err = error(&[chunk(0, &[1; 33], 0)]);
    assert!(err.contains("context length 32"), "{err}");
    let err = error(&[chunk(1, &[5, 1_000_000], 0)]);
    assert!(
        err.contains("token id 1000000 is outside the vocabulary"),
        "{err}"
    );
    let err = error(&[chunk(0, &[], 0)]);
    assert!(err.contains("no tokens"), "{err}");
    let err = error(&[]);
    assert!(err.contains("at least one"), "{err}");

    // A refused pass changes nothing: the slots still hold nothing, and work.
    let first = engine.forward_batch(&[chunk(1, &[1, 2, 3], 0)]).unwrap();
    let again = CpuLlamaEngine::load(&path, Some(32), 1)
        .unwrap()
        .forward(&[1, 2, 3], 0)
        .unwrap();
    assert_eq!(bits(&first[0]), bits(&again));
}
