//! `bench` on the real model: JSON output with positive medians; impossible sizes
//! are refused.

mod support;

use support::{assert_one_line_error, runner, test_model};

#[test]
fn bench_reports_medians_as_json() {
    let model = test_model();
    let out = runner(&[
        "bench",
        "--model",
        model.to_str().unwrap(),
        "--threads",
        "2",
        "--prompt-tokens",
        "16",
        "--gen-tokens",
        "4",
        "--repetitions",
        "2",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "prefill_tokens_per_second",
        "decode_tokens_per_second",
        "time_to_first_token_ms",
    ] {
        let v = report[key].as_f64().unwrap_or(0.0);
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
    assert_eq!(report["runs"].as_array().unwrap().len(), 2);
    assert_eq!(report["prompt_tokens"], 16);
}

#[test]
fn bench_refuses_more_tokens_than_the_context() {
    let model = test_model();
    let out = runner(&[
        "bench",
        "--model",
        model.to_str().unwrap(),
        "--ctx",
        "64",
        "--prompt-tokens",
        "60",
        "--gen-tokens",
        "10",
    ]);
    assert_one_line_error(&out, &["exceeds the context length 64"]);
}
