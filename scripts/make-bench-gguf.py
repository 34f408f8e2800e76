#!/usr/bin/env python3
"""Writes random-weight GGUF files in the exact shape of a real 1B-class Llama, for
decode/prefill benchmarks (decode speed does not depend on the weights' values).

Shape (`llama-1b`): Llama-3.2-1B's transformer (16 layers, dim 2048, FFN 8192, 32
query heads, 8 KV heads, head dim 64, rope base 500000, RMS eps 1e-5) with an untied
output matrix. The vocabulary is SmolLM2's gpt2-BPE vocabulary (49,152 tokens), whose
tokenizer metadata (tokens, merges, token types, special ids, chat template) is copied
from the default test model, so that llama.cpp and xpu-runner load and tokenize the
files exactly as they do SmolLM2. Llama-3.2-1B's own vocabulary has 128,256 tokens;
with 49,152 the model has 1.07 B parameters instead of 1.24 B (embedding and output
matrices are smaller; the 16 transformer blocks are identical).

Quantized blocks are written directly as random bytes with a fixed scale chosen so
that weights have a standard deviation of about 0.02 (like a trained model), which
keeps activations finite; norms are ones. Types: Q8_0, Q4_0, Q4_1 (default: all
three).

Usage: scripts/make-bench-gguf.py [--types q8_0,q4_0,q4_1] [--out DIR] [--force]
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

# Llama-3.2-1B's transformer shape.
SHAPE = dict(
    name="llama-1b",
    n_layer=16,
    n_embd=2048,
    n_ff=8192,
    n_head=32,
    n_head_kv=8,
    rope_base=500000.0,
    rms_eps=1e-5,
    ctx=8192,
)
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


def write_model(qtype_name, out_dir, reference, force):
    import gguf
    import numpy as np

    Q = gguf.GGMLQuantizationType
    qtype = Q[qtype_name.upper()]
    path = out_dir / f"{SHAPE['name']}-random.{qtype.name}.gguf"
    if path.exists() and not force:
        return path
    s = SHAPE
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--types", default="q8_0,q4_0,q4_1",
                        help="comma-separated quantization types: q8_0, q4_0, q4_1")
    parser.add_argument("--out", type=Path, default=CACHE / "bench-models",
                        help="output directory (default: the cache directory)")
    parser.add_argument("--reference", type=Path,
                        help="GGUF whose tokenizer is copied (default: scripts/fetch-model.sh's SmolLM2)")
    parser.add_argument("--force", action="store_true", help="rewrite files that exist")
    args = parser.parse_args()

    types = [t.strip().lower() for t in args.types.split(",") if t.strip()]
    bad = [t for t in types if t not in ("q8_0", "q4_0", "q4_1")]
    if bad or not types:
        sys.exit(f"make-bench-gguf: unsupported --types {','.join(bad) or '(none)'}; choose from q8_0, q4_0, q4_1")

    ensure_gguf("make-bench-gguf", __file__)
    reference = args.reference
    if reference is None:
        reference = Path(subprocess.run([str(SCRIPTS / "fetch-model.sh")], check=True,
                                        capture_output=True, text=True).stdout.strip())
    if not reference.is_file():
        sys.exit(f"make-bench-gguf: reference model {reference} does not exist")
    args.out.mkdir(parents=True, exist_ok=True)
    for t in types:
        print(write_model(t, args.out, reference, args.force), flush=True)


if __name__ == "__main__":
    main()
