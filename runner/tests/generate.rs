//! `generate` on the real SmolLM2 model: coherent greedy chat, reproducible seeds,
//! stop strings, token limits, end-of-sequence and cancellation.

mod support;

use std::ops::ControlFlow;

use support::{runner, test_model};
use xpu_runner::generate::{generate, FinishReason, GenerationRequest};
use xpu_runner::model::{self, ChatMessage, LoadOptions};
use xpu_runner::sampling::SamplingParams;

fn run_generate(args: &[&str]) -> (String, String) {
    let model = test_model();
    let mut full = vec![
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--threads",
        "2",
    ];
    full.extend_from_slice(args);
    let out = runner(&full);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "generate failed: {stderr}");
    (stdout, stderr)
}

#[test]
fn greedy_chat_answers_coherently() {
    let (stdout, stderr) = run_generate(&[
        "--chat",
        "What is the capital of France? Answer in one sentence.",
        "--temperature",
        "0",
        "--max-tokens",
        "24",
    ]);
    assert!(stdout.contains("Paris"), "unexpected answer: {stdout:?}");
    assert!(
        stderr.contains("prompt:") && stderr.contains("tok/s"),
        "{stderr}"
    );
}

#[test]
fn same_seed_same_text() {
    let args = [
        "--prompt",
        "Once upon a time",
        "--temperature",
        "1.0",
        "--seed",
        "7",
        "--max-tokens",
        "12",
    ];
    let (a, _) = run_generate(&args);
    let (b, _) = run_generate(&args);
    assert_eq!(a, b);
    assert!(!a.trim().is_empty());
}

#[test]
fn max_tokens_limits_the_output() {
    let (_, stderr) = run_generate(&[
        "--prompt",
        "The numbers are 1, 2, 3,",
        "--temperature",
        "0",
        "--max-tokens",
        "5",
    ]);
    assert!(stderr.contains("generated: 5 tokens"), "{stderr}");
    assert!(stderr.contains("finish: Length"), "{stderr}");
}

#[test]
fn stop_string_ends_the_output_before_it() {
    let (free, _) = run_generate(&[
        "--chat",
        "What is the capital of France? Answer in one sentence.",
        "--temperature",
        "0",
        "--max-tokens",
        "24",
    ]);
    let cut = free.find("Paris").expect("greedy answer names Paris");
    let (stopped, stderr) = run_generate(&[
        "--chat",
        "What is the capital of France? Answer in one sentence.",
        "--temperature",
        "0",
        "--max-tokens",
        "24",
        "--stop",
        "Paris",
    ]);
    assert_eq!(stopped.trim_end_matches('\n'), &free[..cut]);
    assert!(stderr.contains("finish: Stop"), "{stderr}");
}

#[test]
fn library_generation_stops_at_eos_and_can_be_cancelled() {
    let mut model = model::load(
        &test_model(),
        &LoadOptions {
            threads: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        model.eos_token_ids.contains(&2),
        "SmolLM2's <|im_end|> is id 2: {:?}",
        model.eos_token_ids
    );
    let prompt = model
        .chat_prompt_tokens(&[ChatMessage::new("user", "Say hello.")])
        .unwrap();

    // Greedy, enough room: the assistant turn ends with an EOS id.
    let request = GenerationRequest {
        prompt_tokens: prompt.clone(),
        sampling: SamplingParams::greedy(),
        stop: vec![],
        max_new_tokens: 200,
        top_logprobs: 0,
    };
    let mut streamed = String::new();
    let outcome = generate(&mut model, &request, |e| {
        streamed.push_str(&e.text);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(outcome.finish_reason, FinishReason::Stop);
    assert!(outcome.completion_tokens < 200);
    assert_eq!(streamed, outcome.text);
    assert!(!outcome.text.contains("<|im_end|>"));

    // Cancelled after three tokens.
    let mut seen = 0;
    let outcome = generate(&mut model, &request, |_| {
        seen += 1;
        if seen == 3 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert_eq!(outcome.finish_reason, FinishReason::Cancelled);
    assert_eq!(outcome.completion_tokens, 3);

    // The KV cache is reset between requests: the same greedy request gives the same text.
    let again = generate(&mut model, &request, |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(again.text, streamed);
}

#[test]
fn smollm2_tokenization_matches_llama_cpp() {
    // Reference ids from llama.cpp b11434 (`llama-server` /tokenize) on the same GGUF:
    // no space is added in front of the text, and digits are split one by one.
    let model = model::load(
        &test_model(),
        &LoadOptions {
            threads: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    let t = &model.tokenizer;
    assert_eq!(
        t.encode("The three primary colors are", true).unwrap(),
        vec![504, 1296, 3003, 4683, 359]
    );
    assert_eq!(
        t.encode("a 12345 b", true).unwrap(),
        vec![81, 216, 33, 34, 35, 36, 37, 278]
    );
    // After a special token the text is not prefixed with a space either.
    let chat = t.encode("<|im_start|>user\nHi", true).unwrap();
    assert_eq!(chat[..3], [1, 4093, 198]);
}
