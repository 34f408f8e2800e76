#!/usr/bin/env python3
"""Writes random-weight GGUF files in the exact shape of a real Llama, for decode/prefill
benchmarks (decode speed does not depend on the weights' values).

Shapes (`--shape`):
- `llama-1b` (default): Llama-3.2-1B's transformer (16 layers, dim 2048, FFN 8192, 32 query
  heads, 8 KV heads, head dim 64, rope base 500000, RMS eps 1e-5) with an untied output matrix.
- `llama-8b`: Llama-3.1-8B's transformer (32 layers, dim 4096, FFN 14336, 32 query heads,
  8 KV heads, head dim 128, rope base 500000), the size class Arc users run.
The vocabulary is SmolLM2's gpt2-BPE vocabulary (49,152 tokens), whose tokenizer metadata
(tokens, merges, token types, special ids, chat template) is copied from the reference model,
so that the engines tokenize these files exactly as they do SmolLM2. Llama 3's own vocabulary
has 128,256 tokens; with 49,152 the embedding and output matrices are smaller (1.07 B instead
of 1.24 B parameters at 1B, 7.4 B instead of 8.0 B at 8B); the transformer blocks are
identical.

Q8_0, Q4_0 and Q4_1 blocks are written directly as random bytes with a fixed scale chosen so
that weights have a standard deviation of about 0.02 (like a trained model), which keeps
activations finite; norms are ones. The K-quant mixes users download (Q4_K_M, Q5_K_M, Q6_K)
are made from the Q8_0 file with llama.cpp's llama-quantize (`--quantize`, default
$XPU_LLAMA_CPP_BIN/llama-quantize), so their tensor types are exactly llama.cpp's.

Usage: scripts/make-bench-gguf.py [--shape llama-1b|llama-8b] [--types q8_0,q4_0,q4_1]
                                  [--out DIR] [--quantize PATH] [--force]
Prints the path of each file. Files go to
${XPU_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xpu}/bench-models, never into the
repository. The `gguf` package is installed into a virtual environment under the same
cache directory on first use.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

from gguf_common import CACHE, copy_tokenizer, ensure_gguf

SCRIPTS = Path(__file__).resolve().parent

SHAPES = {
    # Llama-3.2-1B's transformer.
    "llama-1b": dict(name="llama-1b", n_layer=16, n_embd=2048, n_ff=8192, n_head=32,
                     n_head_kv=8, rope_base=500000.0, rms_eps=1e-5, ctx=8192),
    # Llama-3.1-8B's transformer.
    "llama-8b": dict(name="llama-8b", n_layer=32, n_embd=4096, n_ff=14336, n_head=32,
                     n_head_kv=8, rope_base=500000.0, rms_eps=1e-5, ctx=8192),
}
DIRECT_TYPES = ("q8_0", "q4_0", "q4_1")
# llama-quantize's names for the mixes made from the Q8_0 file.
QUANTIZED_TYPES = {"q4_k_m": "Q4_K_M", "q5_k_m": "Q5_K_M", "q6_k": "Q6_K"}
WEIGHT_STD = 0.02


def random_blocks(np, rng, rows, cols, qtype):
    """Random quantized rows of `cols` weights as raw block bytes (rows, bytes_per_row)."""
    import gguf

    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    assert cols % block == 0
    nblocks = rows * (cols // block)
    out = np.empty((nblocks, type_size), dtype=np.uint8)
    Q = gguf.GGMLQuantizationType
    if qtype == Q.Q8_0:
        # d (f16) + 32 x int8 in [-127, 127]: std of q is ~73.
        d = np.float16(WEIGHT_STD / 73.0)
        out[:, :2] = np.frombuffer(d.tobytes(), dtype=np.uint8)
        out[:, 2:] = rng.integers(-127, 128, size=(nblocks, 32), dtype=np.int8).view(np.uint8)
    elif qtype == Q.Q4_0:
        # d (f16) + 16 bytes of nibbles; weight = d * (q - 8), std of q - 8 is ~4.6.
        d = np.float16(WEIGHT_STD / 4.6)
        out[:, :2] = np.frombuffer(d.tobytes(), dtype=np.uint8)
        out[:, 2:] = rng.integers(0, 256, size=(nblocks, 16), dtype=np.uint8)
    elif qtype == Q.Q4_1:
        # d (f16), m (f16) + 16 bytes of nibbles; weight = d * q + m with m = -8 d.
        d = np.float16(WEIGHT_STD / 4.6)
        m = np.float16(-8 * float(d))
        out[:, 0:2] = np.frombuffer(d.tobytes(), dtype=np.uint8)
        out[:, 2:4] = np.frombuffer(m.tobytes(), dtype=np.uint8)
        out[:, 4:] = rng.integers(0, 256, size=(nblocks, 16), dtype=np.uint8)
    else:
        raise ValueError(f"unsupported type {qtype.name}")
    return out.reshape(rows, (cols // block) * type_size)


def write_model(shape, qtype_name, out_dir, reference, force):
    import gguf
    import numpy as np

    Q = gguf.GGMLQuantizationType
    qtype = Q[qtype_name.upper()]
    s = SHAPES[shape]
    path = out_dir / f"{s['name']}-random.{qtype.name}.gguf"
    if path.exists() and not force:
        return path
    head_dim = s["n_embd"] // s["n_head"]
    reader = gguf.GGUFReader(str(reference))
    tmp = path.with_suffix(".tmp")
    writer = gguf.GGUFWriter(str(tmp), "llama", use_temp_file=False)
    writer.add_name(f"{s['name']} random weights ({qtype.name})")
    vocab = copy_tokenizer("make-bench-gguf", writer, reader)
    writer.add_vocab_size(vocab)
    writer.add_context_length(s["ctx"])
    writer.add_embedding_length(s["n_embd"])
    writer.add_block_count(s["n_layer"])
    writer.add_feed_forward_length(s["n_ff"])
    writer.add_head_count(s["n_head"])
    writer.add_head_count_kv(s["n_head_kv"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(s["rope_base"])
    writer.add_layer_norm_rms_eps(s["rms_eps"])
    file_type = {Q.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0, Q.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0,
                 Q.Q4_1: gguf.LlamaFileType.MOSTLY_Q4_1}[qtype]
    writer.add_file_type(file_type)

    rng = np.random.default_rng(0)
    dim, kv_dim, ff = s["n_embd"], s["n_head_kv"] * head_dim, s["n_ff"]
    ones = np.ones(dim, dtype=np.float32)

    def matrix(name, rows, cols):
        # GGUF shapes are (columns, rows); numpy's are (rows, columns).
        writer.add_tensor(name, random_blocks(np, rng, rows, cols, qtype), raw_dtype=qtype)

    matrix("token_embd.weight", vocab, dim)
    for i in range(s["n_layer"]):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", ones)
        matrix(p + "attn_q.weight", dim, dim)
        matrix(p + "attn_k.weight", kv_dim, dim)
        matrix(p + "attn_v.weight", kv_dim, dim)
        matrix(p + "attn_output.weight", dim, dim)
        writer.add_tensor(p + "ffn_norm.weight", ones)
        matrix(p + "ffn_gate.weight", ff, dim)
        matrix(p + "ffn_up.weight", ff, dim)
        matrix(p + "ffn_down.weight", dim, ff)
    writer.add_tensor("output_norm.weight", ones)
    matrix("output.weight", vocab, dim)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    tmp.rename(path)
    return path


def quantize_model(shape, mix, out_dir, reference, force, quantize):
    """Makes the `mix` file (a QUANTIZED_TYPES key) from the shape's Q8_0 file."""
    s = SHAPES[shape]
    path = out_dir / f"{s['name']}-random.{QUANTIZED_TYPES[mix]}.gguf"
    if path.exists() and not force:
        return path
    source = write_model(shape, "q8_0", out_dir, reference, False)
    tmp = path.with_suffix(".tmp")
    # --allow-requantize: the source is already quantized (Q8_0), as llama.cpp's own
    # benchmark files made from Q8_0 are.
    done = subprocess.run([str(quantize), "--allow-requantize", str(source), str(tmp),
                           QUANTIZED_TYPES[mix]], capture_output=True, text=True)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        sys.exit(f"make-bench-gguf: {quantize} failed on {source}:\n{done.stderr[-2000:]}")
    tmp.rename(path)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="llama-1b", choices=sorted(SHAPES),
                        help="the model shape (default: llama-1b)")
    parser.add_argument("--types", default="q8_0,q4_0,q4_1",
                        help="comma-separated types: q8_0, q4_0, q4_1, and through llama-quantize "
                             "q4_k_m, q5_k_m, q6_k")
    parser.add_argument("--quantize", type=Path,
                        help="llama-quantize for the K-quant types (default: "
                             "$XPU_LLAMA_CPP_BIN/llama-quantize)")
    parser.add_argument("--out", type=Path, default=CACHE / "bench-models",
                        help="output directory (default: the cache directory)")
    parser.add_argument("--reference", type=Path,
                        help="GGUF whose tokenizer is copied (default: scripts/fetch-model.sh's SmolLM2)")
    parser.add_argument("--force", action="store_true", help="rewrite files that exist")
    args = parser.parse_args()

    types = [t.strip().lower() for t in args.types.split(",") if t.strip()]
    known = DIRECT_TYPES + tuple(QUANTIZED_TYPES)
    bad = [t for t in types if t not in known]
    if bad or not types:
        sys.exit(f"make-bench-gguf: unsupported --types {','.join(bad) or '(none)'}; "
                 f"choose from {', '.join(known)}")
    quantize = args.quantize
    if any(t in QUANTIZED_TYPES for t in types):
        if quantize is None:
            bin_dir = os.environ.get("XPU_LLAMA_CPP_BIN")
            if not bin_dir:
                sys.exit("make-bench-gguf: the K-quant types need llama-quantize: pass --quantize "
                         "PATH or set XPU_LLAMA_CPP_BIN (scripts/build-llama-cpp.sh prints it)")
            quantize = Path(bin_dir) / "llama-quantize"
        if not os.access(quantize, os.X_OK):
            sys.exit(f"make-bench-gguf: {quantize} is not an executable llama-quantize")

    ensure_gguf("make-bench-gguf", __file__)
    reference = args.reference
    if reference is None:
        reference = Path(subprocess.run([str(SCRIPTS / "fetch-model.sh")], check=True,
                                        capture_output=True, text=True).stdout.strip())
    if not reference.is_file():
        sys.exit(f"make-bench-gguf: reference model {reference} does not exist")
    args.out.mkdir(parents=True, exist_ok=True)
    for t in types:
        if t in QUANTIZED_TYPES:
            path = quantize_model(args.shape, t, args.out, reference, args.force, quantize)
        else:
            path = write_model(args.shape, t, args.out, reference, args.force)
        print(path, flush=True)


if __name__ == "__main__":
    main()
