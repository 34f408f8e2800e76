// The second weight type of a mixed decode product (MV_MIXED in matmul.wgsl): its buffer,
// bound as words and/or vec4 words like `w` and `w4`, and the helpers of matmul.wgsl that
// read it. kernels.rs appends this type's functions with every name given a `_b` suffix,
// `w`/`w4` read as `wb`/`w4b` and `p.aux` as `p.aux_b`.
const MV_MIXED: bool = true;
@group(0) @binding(13) var<storage, read> wb: array<u32>;
@group(0) @binding(14) var<storage, read> w4b: array<vec4<u32>>;

fn byte_at_b(word_base: u32, b: u32) -> u32 {
    return (wb[word_base + (b >> 2u)] >> ((b & 3u) * 8u)) & 0xffu;
}

fn f16_at_b(word_base: u32, half_index: u32) -> f32 {
    return unpack2x16float(wb[word_base + (half_index >> 1u)])[half_index & 1u];
}
