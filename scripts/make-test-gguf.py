#!/usr/bin/env python3
"""Writes small random-weight GGUF test files of the architectures users download, for the
correctness comparisons against llama.cpp (scripts/compare-llama.py, runner/tests/llama_cpp.rs).

Each file has the real tensor names, shapes and metadata keys of its architecture (as
llama.cpp b11434 loads them) and SmolLM2's tokenizer (gpt2 BPE, 49,152 tokens, chat template),
read from the SmolLM2 GGUF with gguf's reader, so that prompts tokenize the same in every
engine. The transformer is small (4-6 layers, width 256, head dimension 64) so that a
comparison runs in seconds on lavapipe.

Peaked output. Random weights give logits whose top two are often closer than the rounding
differences between two correct engines (f16 KV cache, int8 activations, other reduction
orders), so greedy tokens would disagree by chance. Here the residual stream is dominated by a
structured component: the token embedding, which every block only perturbs (the blocks'
weights are small next to it), and the output matrix maps it to a fixed successor:
row π(t) of output.weight is γ·(embedding of t), for a random permutation π. The most likely
next token is then π(current token) with a margin of about 15 logits over the runner-up, far
above any rounding. The other logits (rank 2 and below, about -14 in log-probability) are
<normed hidden state, embedding of k> and carry everything the blocks computed (attention,
RoPE, norms, the FFN), so the log-probability comparison checks them. Files with tied
embeddings (no output.weight) cannot remap tokens: their most likely next token is the
current one, and their output_norm.weight is γ instead of 1, which gives the same margin
(without it the current token's logit is about n_embd above the rest, every other token's
probability underflows to 0 in llama.cpp, and its log-probabilities cannot be compared).

RoPE frequency factors (`llama3`): rope_freqs.weight is computed with Llama 3.1's formula
(factor 8, low/high frequency factors 1 and 4) but for an original context of 32 tokens
instead of 8192, so that most rotary pairs get factors between 2 and 8 and the factors change
the angles already at the first positions of a short prompt. (Converted Llama 3.1/3.2 files
carry only this tensor; llama.cpp reads no rope-scaling metadata for it.)

Variants written: `F32` (every tensor as generated), then `Q8_0` and `Q4_K_M` made from it by
llama.cpp's llama-quantize. Only 2-D weights are quantized; norms, biases and rope factors
stay F32, as in downloaded files.

Usage: scripts/make-test-gguf.py [--arch llama3,...] [--types F32,Q8_0,Q4_K_M] [--out DIR]
                                 [--llama-bin DIR] [--reference GGUF] [--force]
       scripts/make-test-gguf.py --list
Prints the path of each file. Files go to
${XPU_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xpu}/test-models, never into the repository; a
file that exists is reused (the generator's version is part of the name). The `gguf` package
is installed into a virtual environment under the same cache directory on first use.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

from gguf_common import CACHE, copy_tokenizer, ensure_gguf

# Part of every file name: bump it when a change here changes the files' contents.
GENERATOR_VERSION = 3
SCRIPTS = Path(__file__).resolve().parent

# The shared small shape: widths are multiples of 256 (the K-quant block) so that every
# matrix can be Q4_K.
BASE = dict(
    n_layer=4,
    n_embd=256,
    n_ff=768,
    n_head=4,
    n_head_kv=2,
    head_dim=64,
    rope_base=10000.0,
    rms_eps=1e-5,
    ctx=8192,
    tied=False,
    # Standard deviations of the random weights (see the module docstring).
    std_qk=0.06,
    std_vo=0.04,
    std_ffn=0.04,
    # Scale of the output rows (γ): the most likely token's logit is about γ·n_embd.
    gamma=0.08,
)

# One entry per architecture variant. Everything an entry leaves out comes from BASE. Tensor
# names are per block (blk.N. is prepended); `layer` lists (name, shape kind, init).
ATTN_QKV = [("attn_q.weight", "q", "qk"), ("attn_k.weight", "kv", "qk"), ("attn_v.weight", "kv", "vo")]
FFN = [("ffn_gate.weight", "ff", "ffn"), ("ffn_up.weight", "ff", "ffn"), ("ffn_down.weight", "down", "ffn")]
LLAMA_LAYER = [("attn_norm.weight", "norm", "ones"), *ATTN_QKV, ("attn_output.weight", "o", "vo"),
               ("ffn_norm.weight", "norm", "ones"), *FFN]

ARCHS = {
    # Llama 3.1/3.2: GQA, rope base 500000, rope_freqs, a 128k trained context, untied output.
    "llama3": dict(arch="llama", rope_base=500000.0, ctx=131072, rope_freqs=True, layer=LLAMA_LAYER),
    # Llama 3.2 1B/3B: the same with tied embeddings.
    "llama3-tied": dict(arch="llama", rope_base=500000.0, ctx=131072, rope_freqs=True, tied=True,
                        layer=LLAMA_LAYER),
    # Mistral 7B / Nemo style: llama architecture, 4:1 GQA, rope base 1e6, no rope factors.
    "mistral": dict(arch="llama", n_head=4, n_head_kv=1, rope_base=1000000.0, ctx=32768, layer=LLAMA_LAYER),
    # Qwen2/2.5: biases on q, k and v.
    "qwen2": dict(arch="qwen2", rope_base=1000000.0, ctx=32768, neox=True,
                  layer=[*LLAMA_LAYER, ("attn_q.bias", "q_bias", "bias"), ("attn_k.bias", "kv_bias", "bias"),
                         ("attn_v.bias", "kv_bias", "bias")]),
    # Qwen3: per-head RMSNorm of q and k before RoPE, no biases.
    "qwen3": dict(arch="qwen3", rope_base=1000000.0, ctx=40960, neox=True,
                  layer=[*LLAMA_LAYER, ("attn_q_norm.weight", "head", "norm"), ("attn_k_norm.weight", "head", "norm")]),
    # Phi-3/Phi-4-mini: fused q|k|v and fused gate|up matrices.
    "phi3": dict(arch="phi3", rope_base=10000.0, ctx=4096, neox=True,
                 layer=[("attn_norm.weight", "norm", "ones"), ("attn_qkv.weight", "qkv", "qk"),
                        ("attn_output.weight", "o", "vo"), ("ffn_norm.weight", "norm", "ones"),
                        ("ffn_up.weight", "gate_up", "ffn"), ("ffn_down.weight", "down", "ffn")]),
    # Gemma 3: four norms per block, q/k norms, GeGLU, interleaved sliding-window (window 8,
    # every third layer global) and global layers, tied embeddings scaled by sqrt(n_embd).
    "gemma3": dict(arch="gemma3", n_layer=6, rope_base=1000000.0, ctx=32768, neox=True, tied=True,
                   swa=dict(window=8, pattern=3, rope_base=10000.0), rms_eps=1e-6,
                   layer=[("attn_norm.weight", "norm", "ones"), *ATTN_QKV, ("attn_output.weight", "o", "vo"),
                          ("attn_q_norm.weight", "head", "norm"), ("attn_k_norm.weight", "head", "norm"),
                          ("post_attention_norm.weight", "norm", "norm"), ("ffn_norm.weight", "norm", "ones"),
                          *FFN, ("post_ffw_norm.weight", "norm", "norm")]),
}
TYPES = ("F32", "Q8_0", "Q4_K_M")


def llama3_rope_factors(np, head_dim, base, factor=8.0, low=1.0, high=4.0, old_ctx=32):
    """Llama 3.1's per-pair divisors (as its converter computes them) for `old_ctx`."""
    freqs = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    out = []
    for f in freqs:
        wavelen = 2 * np.pi / f
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_f32(name, spec, path, reference):
    """Writes the F32 file of architecture entry `name`."""
    import gguf
    import numpy as np

    s = {**BASE, **spec}
    arch, d, hd, nh, nkv, ff = s["arch"], s["n_embd"], s["head_dim"], s["n_head"], s["n_head_kv"], s["n_ff"]
    reader = gguf.GGUFReader(str(reference))
    tmp = path.with_name(path.name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), arch, use_temp_file=False)
    # No architecture name in general.name: llama.cpp sets token attributes by model name
    # (a "phi3" in it looks for Phi-3's special tokens, which SmolLM2's vocabulary lacks).
    w.add_name("xpu random-weight test model")
    vocab = copy_tokenizer("make-test-gguf", w, reader)
    w.add_vocab_size(vocab)
    w.add_context_length(s["ctx"])
    w.add_embedding_length(d)
    w.add_block_count(s["n_layer"])
    w.add_feed_forward_length(ff)
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(s["rope_base"])
    w.add_layer_norm_rms_eps(s["rms_eps"])
    if hd * nh != d:
        w.add_key_length(hd)
        w.add_value_length(hd)
    if "swa" in s:
        w.add_sliding_window(s["swa"]["window"])
        w.add_uint32(f"{arch}.attention.sliding_window_pattern", s["swa"]["pattern"])
        w.add_float32(f"{arch}.rope.freq_base_swa", s["swa"]["rope_base"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    rng = np.random.default_rng(sum(map(ord, name)))
    shapes = {
        "norm": (d,), "head": (hd,), "q": (nh * hd, d), "kv": (nkv * hd, d), "o": (d, nh * hd),
        "ff": (ff, d), "down": (d, ff), "qkv": ((nh + 2 * nkv) * hd, d), "gate_up": (2 * ff, d),
        "q_bias": (nh * hd,), "kv_bias": (nkv * hd,),
    }

    def init(kind, shape):
        if kind == "ones":
            return np.ones(shape, dtype=np.float32)
        if kind == "norm":  # norm weights around 1, so that a wrong norm shows
            return (1.0 + 0.2 * rng.standard_normal(shape)).astype(np.float32)
        if kind == "bias":
            return (0.5 * rng.standard_normal(shape)).astype(np.float32)
        return (s[f"std_{kind}"] * rng.standard_normal(shape)).astype(np.float32)

    # numpy shapes are (rows, columns); GGUF lists them the other way round.
    embd = rng.standard_normal((vocab, d)).astype(np.float32)
    w.add_tensor("token_embd.weight", embd)
    if s.get("rope_freqs"):
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(np, hd, s["rope_base"]))
    for i in range(s["n_layer"]):
        for tensor, shape, kind in s["layer"]:
            w.add_tensor(f"blk.{i}.{tensor}", init(kind, shapes[shape]))
    output_norm = s["gamma"] if s["tied"] else 1.0
    w.add_tensor("output_norm.weight", np.full(d, output_norm, dtype=np.float32))
    if not s["tied"]:
        successor = rng.permutation(vocab)
        output = np.empty_like(embd)
        output[successor] = s["gamma"] * embd
        w.add_tensor("output.weight", output)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()
    tmp.rename(path)


def quantize(llama_bin, src, dst, qtype):
    tmp = dst.with_name(dst.name + ".tmp")
    r = subprocess.run([str(Path(llama_bin) / "llama-quantize"), str(src), str(tmp), qtype],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"make-test-gguf: llama-quantize {src.name} {qtype} failed:\n{r.stderr[-2000:]}")
    tmp.rename(dst)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default=",".join(ARCHS), help="comma-separated entries (default: all; see --list)")
    parser.add_argument("--types", default=",".join(TYPES), help=f"comma-separated: {', '.join(TYPES)}")
    parser.add_argument("--out", type=Path, default=CACHE / "test-models", help="output directory")
    parser.add_argument("--llama-bin", help="llama.cpp's binaries (default: XPU_LLAMA_CPP_BIN, else scripts/build-llama-cpp.sh)")
    parser.add_argument("--reference", type=Path, help="GGUF whose tokenizer is copied (default: scripts/fetch-model.sh's SmolLM2)")
    parser.add_argument("--force", action="store_true", help="rewrite files that exist")
    parser.add_argument("--list", action="store_true", help="print the architecture entries and exit")
    args = parser.parse_args()

    if args.list:
        for name, spec in ARCHS.items():
            print(f"{name}: architecture {spec['arch']}")
        return
    archs = [a.strip() for a in args.arch.split(",") if a.strip()]
    types = [t.strip().upper() for t in args.types.split(",") if t.strip()]
    bad = [a for a in archs if a not in ARCHS] + [t for t in types if t not in TYPES]
    if bad or not archs or not types:
        sys.exit(f"make-test-gguf: unknown --arch/--types {', '.join(bad) or '(none)'}; "
                 f"architectures: {', '.join(ARCHS)}; types: {', '.join(TYPES)}")

    ensure_gguf("make-test-gguf", __file__)
    reference = args.reference or Path(subprocess.run([str(SCRIPTS / "fetch-model.sh")], check=True,
                                                      capture_output=True, text=True).stdout.strip())
    if not reference.is_file():
        sys.exit(f"make-test-gguf: reference model {reference} does not exist")
    args.out.mkdir(parents=True, exist_ok=True)
    llama_bin = None
    for name in archs:
        stem = f"{name}-v{GENERATOR_VERSION}"
        f32 = args.out / f"{stem}.F32.gguf"
        if args.force or not f32.exists():
            write_f32(name, ARCHS[name], f32, reference)
        for t in types:
            path = args.out / f"{stem}.{t}.gguf"
            if t != "F32" and (args.force or not path.exists()):
                if llama_bin is None:
                    llama_bin = args.llama_bin or os.environ.get("XPU_LLAMA_CPP_BIN") or subprocess.run(
                        [str(SCRIPTS / "build-llama-cpp.sh")], check=True, capture_output=True, text=True).stdout.strip()
                quantize(llama_bin, f32, path, t)
            print(path, flush=True)


if __name__ == "__main__":
    main()
