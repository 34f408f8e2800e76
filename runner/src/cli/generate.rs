//! `xpu-runner generate`: one completion, streamed to stdout; counts and speeds
//! go to stderr.

use std::io::Write;
use std::ops::ControlFlow;

use clap::{ArgGroup, Args};
use xpu_runner::generate::{generate, GenerationRequest};
use xpu_runner::model::ChatMessage;
use xpu_runner::sampling::SamplingParams;

use super::ModelArgs;

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("input").required(true).args(["prompt", "chat", "prompt_ids"])))]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Raw prompt text, tokenized as is (no chat template).
    #[arg(long, value_name = "TEXT")]
    pub prompt: Option<String>,

    /// A user message, wrapped in the model's chat template.
    #[arg(long, value_name = "TEXT")]
    pub chat: Option<String>,

    /// Prompt as token ids, comma-separated (for comparisons with other engines).
    #[arg(long, value_name = "IDS", value_delimiter = ',')]
    pub prompt_ids: Option<Vec<u32>>,

    /// A system message to put before --chat.
    #[arg(long, value_name = "TEXT", requires = "chat")]
    pub system: Option<String>,

    /// Maximum number of tokens to generate.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_tokens: usize,

    /// Sampling temperature; 0 is greedy (always the most likely token).
    #[arg(long, default_value_t = 0.8, value_name = "T")]
    pub temperature: f32,

    /// Keep only the K most likely tokens (0: off).
    #[arg(long, default_value_t = 40, value_name = "K")]
    pub top_k: usize,

    /// Nucleus sampling: keep the most likely tokens up to this total probability (1: off).
    #[arg(long, default_value_t = 0.95, value_name = "P")]
    pub top_p: f32,

    /// Drop tokens less likely than this fraction of the most likely one (0: off).
    #[arg(long, default_value_t = 0.05, value_name = "P")]
    pub min_p: f32,

    /// Penalise tokens already generated, llama.cpp style (1: off).
    #[arg(long, default_value_t = 1.0, value_name = "X")]
    pub repeat_penalty: f32,

    /// OpenAI presence penalty, -2..2 (0: off).
    #[arg(
        long,
        default_value_t = 0.0,
        value_name = "X",
        allow_negative_numbers = true
    )]
    pub presence_penalty: f32,

    /// OpenAI frequency penalty, -2..2 (0: off).
    #[arg(
        long,
        default_value_t = 0.0,
        value_name = "X",
        allow_negative_numbers = true
    )]
    pub frequency_penalty: f32,

    /// Random seed; the same seed and settings give the same text.
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,

    /// Stop before this string (repeat for several).
    #[arg(long, value_name = "TEXT")]
    pub stop: Vec<String>,

    /// Print one JSON object at the end (prompt text and ids, generated ids and
    /// text, finish reason, timings) instead of streaming text.
    #[arg(long)]
    pub json: bool,

    /// With --json, list for each generated token the N most likely tokens of the model's
    /// distribution (before sampling) with their log-probabilities, under `steps` (for
    /// comparisons with other engines, such as scripts/compare-llama.py).
    #[arg(long, value_name = "N", default_value_t = 0, requires = "json")]
    pub logprobs: usize,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repetition_penalty: args.repeat_penalty,
        presence_penalty: args.presence_penalty,
        frequency_penalty: args.frequency_penalty,
        seed: args.seed,
    };
    // Bad flags fail before the model is loaded.
    sampling.validate()?;

    let mut model = args.model.load()?;
    let (prompt_text, prompt_tokens) = match (&args.prompt, &args.chat, &args.prompt_ids) {
        (Some(prompt), _, _) => (Some(prompt.clone()), model.tokenizer.encode(prompt, true)?),
        (None, Some(chat), _) => {
            let mut messages = Vec::new();
            if let Some(system) = &args.system {
                messages.push(ChatMessage::new("system", system.as_str()));
            }
            messages.push(ChatMessage::new("user", chat.as_str()));
            let text = model.chat_template()?.render(&messages, true)?;
            (Some(text), model.chat_prompt_tokens(&messages)?)
        }
        (None, None, Some(ids)) => {
            let vocab = model.tokenizer.vocab_size();
            if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                anyhow::bail!(
                    "--prompt-ids: token id {bad} is outside the vocabulary ({vocab} tokens)"
                );
            }
            (None, ids.clone())
        }
        _ => unreachable!("clap requires --prompt, --chat or --prompt-ids"),
    };
    let prompt_ids = prompt_tokens.clone();

    let request = GenerationRequest {
        prompt_tokens,
        sampling,
        stop: args.stop,
        max_new_tokens: args.max_tokens,
        top_logprobs: args.logprobs,
    };
    if args.json {
        let mut ids = Vec::new();
        let mut steps = Vec::new();
        let outcome = generate(&mut model, &request, |event| {
            if !event.flush {
                ids.push(event.token_id);
                if args.logprobs > 0 {
                    steps.push(serde_json::json!({"token": event.token_id, "top_logprobs": event.top_logprobs}));
                }
            }
            ControlFlow::Continue(())
        })?;
        let report = serde_json::json!({
            "prompt_text": prompt_text,
            "prompt_tokens": prompt_ids,
            "tokens": ids,
            "text": outcome.text,
            "finish_reason": outcome.finish_reason,
            "prefill_seconds": outcome.prefill_seconds,
            "decode_seconds": outcome.decode_seconds,
            "device": model.engine.device_description(),
            "context_length": model.engine.context_length(),
            "steps": steps,
        });
        println!("{report}");
        return Ok(());
    }

    let mut stdout = std::io::stdout().lock();
    let mut write_error = None;
    let outcome = generate(&mut model, &request, |event| {
        let result = stdout
            .write_all(event.text.as_bytes())
            .and_then(|_| stdout.flush());
        match result {
            Ok(()) => ControlFlow::Continue(()),
            // A closed pipe (`| head`) ends generation quietly.
            Err(e) => {
                write_error = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    if let Some(e) = write_error {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(anyhow::anyhow!("cannot write to stdout: {e}"));
        }
        return Ok(());
    }
    let _ = writeln!(stdout);
    drop(stdout);

    let rate = |tokens: usize, seconds: f64| {
        if seconds > 0.0 {
            tokens as f64 / seconds
        } else {
            0.0
        }
    };
    eprintln!(
        "prompt: {} tokens, {:.1} tok/s | generated: {} tokens, {:.1} tok/s | finish: {:?} | {}",
        outcome.prompt_tokens,
        rate(outcome.prompt_tokens, outcome.prefill_seconds),
        outcome.completion_tokens,
        rate(outcome.completion_tokens, outcome.decode_seconds),
        outcome.finish_reason,
        model.engine.device_description(),
    );
    Ok(())
}
