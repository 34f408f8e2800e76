//! SentencePiece tokenizers from GGUF metadata (`tokenizer.ggml.model = "llama"`),
//! tested on a small vocabulary written into a real GGUF file. The expected ids
//! follow llama.cpp's SPM algorithm: repeatedly merge the adjacent pair whose merged
//! piece has the highest score; bytes without a piece fall back to `<0xXX>`.

use candle_core::quantized::gguf_file::{self, Value};
use xpu_runner::model::Tokenizer;

struct Vocab {
    pieces: Vec<(String, f32, i32)>,
}

impl Vocab {
    fn id(&self, piece: &str) -> u32 {
        self.pieces.iter().position(|(p, _, _)| p == piece).unwrap() as u32
    }
}

fn vocab() -> Vocab {
    let mut pieces: Vec<(String, f32, i32)> = vec![
        ("<unk>".into(), 0.0, 2),
        ("<s>".into(), 0.0, 3),
        ("</s>".into(), 0.0, 3),
    ];
    for b in 0..=255u8 {
        pieces.push((format!("<0x{b:02X}>"), 0.0, 6));
    }
    for (piece, score) in [
        ("▁hello", -1.0),
        ("▁world", -1.5),
        ("▁he", -3.0),
        ("▁h", -3.2),
        ("llo", -3.5),
        ("ll", -4.0),
        ("▁w", -4.0),
        ("orld", -5.0),
        ("he", -5.0),
        ("or", -6.0),
        ("ld", -6.0),
        ("lo", -7.0),
        ("▁", -10.0),
        ("h", -20.0),
        ("e", -20.0),
        ("l", -20.0),
        ("o", -20.0),
        ("w", -20.0),
        ("r", -20.0),
        ("d", -20.0),
    ] {
        pieces.push((piece.into(), score, 1));
    }
    pieces.push(("<|user|>".into(), 0.0, 4));
    Vocab { pieces }
}

fn tokenizer(v: &Vocab) -> Tokenizer {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spm.gguf");
    let tokens = Value::Array(
        v.pieces
            .iter()
            .map(|(p, _, _)| Value::String(p.clone()))
            .collect(),
    );
    let scores = Value::Array(v.pieces.iter().map(|(_, s, _)| Value::F32(*s)).collect());
    let types = Value::Array(v.pieces.iter().map(|(_, _, t)| Value::I32(*t)).collect());
    let md = [
        ("general.architecture", Value::String("llama".into())),
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", tokens),
        ("tokenizer.ggml.scores", scores),
        ("tokenizer.ggml.token_type", types),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
    ];
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let mut file = std::fs::File::create(&path).unwrap();
    gguf_file::write(&mut file, &md_refs, &[]).unwrap();
    drop(file);
    let mut reader = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut reader).unwrap();
    Tokenizer::from_gguf(&content).unwrap()
}

#[test]
fn merges_follow_piece_scores_and_add_bos() {
    let v = vocab();
    let t = tokenizer(&v);
    let ids = t.encode("hello world", true).unwrap();
    assert_eq!(ids, vec![1, v.id("▁hello"), v.id("▁world")]);
    // Without the BOS post-processor.
    assert_eq!(t.encode("hello", false).unwrap(), vec![v.id("▁hello")]);
    // A word without a whole piece stops at the best merges available.
    assert_eq!(
        t.encode("hell", false).unwrap(),
        vec![v.id("▁he"), v.id("ll")]
    );
}

#[test]
fn unknown_characters_fall_back_to_bytes() {
    let v = vocab();
    let t = tokenizer(&v);
    let ids = t.encode("hello é", false).unwrap();
    assert_eq!(
        ids,
        vec![v.id("▁hello"), v.id("▁"), v.id("<0xC3>"), v.id("<0xA9>")]
    );
    assert_eq!(t.decode(&ids, true).unwrap(), "hello é");
}

#[test]
fn decoding_restores_spaces_and_skips_control_tokens() {
    let v = vocab();
    let t = tokenizer(&v);
    let ids = vec![1, v.id("▁hello"), v.id("▁world"), 2];
    assert_eq!(t.decode(&ids, true).unwrap(), "hello world");
}

#[test]
fn special_pieces_in_text_are_single_tokens() {
    let v = vocab();
    let t = tokenizer(&v);
    // As in llama.cpp, text after a special token gets the space prefix again.
    let ids = t.encode("<|user|>hello", false).unwrap();
    assert_eq!(ids, vec![v.id("<|user|>"), v.id("▁hello")]);
    assert_eq!(t.bos_token(), Some("<s>"));
    assert_eq!(t.eos_token(), Some("</s>"));
}
