//! Quantized matrix kernels for the CPU engine, working directly on GGUF block bytes
//! (memory-mapped, never copied).
//!
//! Weights stay in their GGUF block formats (Q4_0, Q4_1, Q8_0); activations are
//! quantized per row into [`BlockQ8`] blocks of 32 (an int8 vector with an f32 scale
//! and the scaled sum that Q4_1's offset needs), so every product is an int8 dot
//! product as in ggml. x86-64 CPUs with AVX2+FMA+F16C use `maddubs`-based SIMD
//! dot products (checked once at run time); other CPUs use portable scalar code that
//! gives the same results up to float rounding.
//!
//! [`matmul`] computes `out[r][j] = dot(weight row j, activation row r)` for several
//! weight matrices in one parallel pass, so that Q/K/V (or gate/up) cost one fork/join
//! instead of three. Work is split over weight rows; with several activation rows
//! (prefill) each weight row is used for a tile of activation rows while it is in L1.

use rayon::prelude::*;

/// Elements per quantization block (all supported types).
pub const QK: usize = 32;

/// How many activation rows share one pass over a weight row in prefill.
const ROW_TILE: usize = 8;

/// Block formats of weight matrices that the CPU kernels handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// f16 scale + 32 x 4-bit, weight = d * (q - 8).
    Q4_0,
    /// f16 scale, f16 min + 32 x 4-bit, weight = d * q + m.
    Q4_1,
    /// f16 scale + 32 x int8, weight = d * q.
    Q8_0,
}

impl WeightFormat {
    /// Bytes of one block of 32 weights.
    pub const fn block_bytes(self) -> usize {
        match self {
            WeightFormat::Q4_0 => 18,
            WeightFormat::Q4_1 => 20,
            WeightFormat::Q8_0 => 34,
        }
    }
}

/// One block of 32 quantized activations: `x[i] ≈ d * qs[i]`, `s = d * Σ qs` (both
/// f16 values kept as f32, as in ggml's `block_q8_1`).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct BlockQ8 {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; QK],
}

/// A weight matrix of `rows` x `cols` in GGUF block format (rows are output features).
#[derive(Debug, Clone, Copy)]
pub struct QMatrix<'a> {
    pub format: WeightFormat,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl<'a> QMatrix<'a> {
    /// Wraps `data`, checking that it holds exactly `rows` x `cols` weights.
    pub fn new(format: WeightFormat, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self, String> {
        if cols % QK != 0 {
            return Err(format!("{cols} columns are not a multiple of the block size {QK}"));
        }
        let expected = rows * cols / QK * format.block_bytes();
        if data.len() != expected {
            return Err(format!("{rows}x{cols} {format:?} needs {expected} bytes, found {}", data.len()));
        }
        Ok(QMatrix { format, rows, cols, data })
    }

    fn row_bytes(&self) -> usize {
        self.cols / QK * self.format.block_bytes()
    }

    /// The raw blocks of weight row `r`.
    pub fn row(&self, r: usize) -> &'a [u8] {
        let n = self.row_bytes();
        &self.data[r * n..(r + 1) * n]
    }

    /// Dequantizes weight row `r` into `out` (`cols` floats), e.g. for embeddings.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let row = self.row(r);
        let bb = self.format.block_bytes();
        for (b, dst) in row.chunks_exact(bb).zip(out.chunks_exact_mut(QK)) {
            let d = f16_at(b, 0);
            match self.format {
                WeightFormat::Q4_0 => {
                    for j in 0..16 {
                        dst[j] = d * ((b[2 + j] & 0x0F) as f32 - 8.0);
                        dst[j + 16] = d * ((b[2 + j] >> 4) as f32 - 8.0);
                    }
                }
                WeightFormat::Q4_1 => {
                    let m = f16_at(b, 2);
                    for j in 0..16 {
                        dst[j] = d * (b[4 + j] & 0x0F) as f32 + m;
                        dst[j + 16] = d * (b[4 + j] >> 4) as f32 + m;
                    }
                }
                WeightFormat::Q8_0 => {
                    for j in 0..QK {
                        dst[j] = d * b[2 + j] as i8 as f32;
                    }
                }
            }
        }
    }
}

/// `v` rounded to the nearest f16, as ggml stores activation block scales.
#[inline]
fn round_f16(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

#[inline(always)]
fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Quantizes each row of `x` (`rows` x `cols`, `cols` a multiple of 32) into `out`.
pub fn quantize_rows(x: &[f32], cols: usize, out: &mut Vec<BlockQ8>) {
    let blocks = x.len() / QK;
    out.clear();
    out.resize(blocks, BlockQ8::default());
    debug_assert_eq!(cols % QK, 0);
    // The same arithmetic as ggml's AVX2 `quantize_row_q8_0`/`q8_1`: scale rounded to
    // f16, inverse scale 127/amax, ties rounded to even. Matching it bit for bit keeps
    // greedy decoding on the same tokens as llama.cpp when two logits are nearly tied.
    let quantize = |(src, dst): (&[f32], &mut BlockQ8)| {
        let amax = src.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in dst.qs.iter_mut().zip(src) {
            let r = (v * id).round_ties_even() as i32;
            *q = r as i8;
            sum += r;
        }
        dst.d = round_f16(d);
        dst.s = round_f16(d * sum as f32);
    };
    if blocks >= 4096 {
        x.par_chunks_exact(QK).zip(out.par_iter_mut()).for_each(quantize);
    } else {
        x.chunks_exact(QK).zip(out.iter_mut()).for_each(quantize);
    }
}

/// Whether the AVX2 kernels can run on this CPU.
pub fn simd_name() -> &'static str {
    if has_avx2() {
        "avx2"
    } else {
        "scalar"
    }
}

/// Whether this CPU has AVX2, FMA and F16C, which all the SIMD kernels of the CPU
/// engine need.
#[inline]
pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One weight row (raw blocks) · one quantized activation row.
#[inline]
pub fn dot(format: WeightFormat, w: &[u8], x: &[BlockQ8], avx2: bool) -> f32 {
    debug_assert_eq!(w.len(), x.len() * format.block_bytes());
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` is only true when has_avx2() found AVX2, FMA and F16C; the
        // slices have matching block counts (checked by QMatrix::new and the callers).
        return unsafe {
            match format {
                WeightFormat::Q4_0 => x86::dot_q4_0(w, x),
                WeightFormat::Q4_1 => x86::dot_q4_1(w, x),
                WeightFormat::Q8_0 => x86::dot_q8_0(w, x),
            }
        };
    }
    let _ = avx2;
    dot_scalar(format, w, x)
}

fn dot_scalar(format: WeightFormat, w: &[u8], x: &[BlockQ8]) -> f32 {
    let bb = format.block_bytes();
    let mut total = 0f32;
    for (b, xb) in w.chunks_exact(bb).zip(x) {
        let d = f16_at(b, 0);
        match format {
            WeightFormat::Q4_0 => {
                let mut s = 0i32;
                for j in 0..16 {
                    s += ((b[2 + j] & 0x0F) as i32 - 8) * xb.qs[j] as i32;
                    s += ((b[2 + j] >> 4) as i32 - 8) * xb.qs[j + 16] as i32;
                }
                total += d * xb.d * s as f32;
            }
            WeightFormat::Q4_1 => {
                let m = f16_at(b, 2);
                let mut s = 0i32;
                for j in 0..16 {
                    s += (b[4 + j] & 0x0F) as i32 * xb.qs[j] as i32;
                    s += (b[4 + j] >> 4) as i32 * xb.qs[j + 16] as i32;
                }
                total += d * xb.d * s as f32 + m * xb.s;
            }
            WeightFormat::Q8_0 => {
                let mut s = 0i32;
                for j in 0..QK {
                    s += b[2 + j] as i8 as i32 * xb.qs[j] as i32;
                }
                total += d * xb.d * s as f32;
            }
        }
    }
    total
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! AVX2 dot products after ggml's `ggml_vec_dot_q4_0_q8_0` family.
    use super::BlockQ8;
    use std::arch::x86_64::*;

    /// The f16 at `p` as f32 (a block scale). The bits go into the vector register with
    /// `vmovd` written by hand: from `_mm_cvtsi32_si128` (or any other intrinsic) LLVM
    /// emits `vpinsrw` into a register whose upper lanes it considers free, usually
    /// the loop's accumulator. That false dependency chained every block of a dot
    /// product to the previous block's FMA and made decode about 3x slower.
    #[inline(always)]
    unsafe fn f16(p: *const u8) -> f32 {
        let bits = std::ptr::read_unaligned(p as *const u16) as u32;
        let v: __m128i;
        std::arch::asm!(
            "vmovd {v}, {bits:e}",
            v = lateout(xmm_reg) v,
            bits = in(reg) bits,
            options(pure, nomem, nostack, preserves_flags)
        );
        _mm_cvtss_f32(_mm_cvtph_ps(v))
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Σ x[i] * y[i] of signed bytes, as 8 f32 partial sums.
    #[inline(always)]
    unsafe fn mul_sum_i8(x: __m256i, y: __m256i) -> __m256 {
        let ax = _mm256_sign_epi8(x, x);
        let sy = _mm256_sign_epi8(y, x);
        unsigned_mul_sum(ax, sy)
    }

    /// Σ x[i] * y[i] of unsigned x and signed y bytes, as 8 f32 partial sums.
    #[inline(always)]
    unsafe fn unsigned_mul_sum(x: __m256i, y: __m256i) -> __m256 {
        let dot = _mm256_maddubs_epi16(x, y);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(dot, _mm256_set1_epi16(1)))
    }

    /// The 32 nibbles of a 4-bit block as bytes 0..15 in element order.
    #[inline(always)]
    unsafe fn nibbles(p: *const u8) -> __m256i {
        let tmp = _mm_loadu_si128(p as *const __m128i);
        let bytes = _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp);
        _mm256_and_si256(bytes, _mm256_set1_epi8(0x0F))
    }

    /// Unpacked weight block: signed bytes (or unsigned for Q4_1), scale, min.
    #[inline(always)]
    unsafe fn weight_block(format: super::WeightFormat, b: *const u8) -> (__m256i, f32, f32) {
        match format {
            super::WeightFormat::Q4_0 => (_mm256_sub_epi8(nibbles(b.add(2)), _mm256_set1_epi8(8)), f16(b), 0.0),
            super::WeightFormat::Q4_1 => (nibbles(b.add(4)), f16(b), f16(b.add(2))),
            super::WeightFormat::Q8_0 => (_mm256_loadu_si256(b.add(2) as *const __m256i), f16(b), 0.0),
        }
    }

    /// One weight row against `N` activation rows (each `nb` blocks, `stride` blocks
    /// apart in `x`): the weight blocks are unpacked once for all of them.
    pub unsafe fn dot_xn<const N: usize>(
        format: super::WeightFormat,
        w: &[u8],
        x: &[BlockQ8],
        nb: usize,
        stride: usize,
    ) -> [f32; N] {
        match format {
            super::WeightFormat::Q4_0 => dot_xn_for::<0, N>(w, x, nb, stride),
            super::WeightFormat::Q4_1 => dot_xn_for::<1, N>(w, x, nb, stride),
            super::WeightFormat::Q8_0 => dot_xn_for::<2, N>(w, x, nb, stride),
        }
    }

    /// [`dot_xn`] for one format (`F`: 0 = Q4_0, 1 = Q4_1, 2 = Q8_0), so that the
    /// format checks fold away.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_xn_for<const F: u8, const N: usize>(w: &[u8], x: &[BlockQ8], nb: usize, stride: usize) -> [f32; N] {
        let format = match F {
            0 => super::WeightFormat::Q4_0,
            1 => super::WeightFormat::Q4_1,
            _ => super::WeightFormat::Q8_0,
        };
        let bb = format.block_bytes();
        let p = w.as_ptr();
        let xp = x.as_ptr();
        let mut acc = [_mm256_setzero_ps(); N];
        let mut offset = [0f32; N];
        let unsigned = format == super::WeightFormat::Q4_1;
        for i in 0..nb {
            let (qw, dw, mw) = weight_block(format, p.add(i * bb));
            // For signed weights, move the sign onto the activations once.
            let aw = if unsigned { qw } else { _mm256_sign_epi8(qw, qw) };
            for r in 0..N {
                let xb = &*xp.add(r * stride + i);
                let qx = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
                let sx = if unsigned { qx } else { _mm256_sign_epi8(qx, qw) };
                let d = _mm256_set1_ps(dw * xb.d);
                acc[r] = _mm256_fmadd_ps(d, unsigned_mul_sum(aw, sx), acc[r]);
                if unsigned {
                    offset[r] += mw * xb.s;
                }
            }
        }
        let mut out = [0f32; N];
        for r in 0..N {
            out[r] = hsum(acc[r]) + offset[r];
        }
        out
    }

    /// Q4_0 uses two accumulators: with one, each block waits for the previous
    /// block's FMA (4-cycle latency), which bounds this short loop. ggml runs Q4_0
    /// through repacked 8-row kernels with their own summation order, so there is no
    /// order to keep; Q4_1 and Q8_0 below keep ggml's single-accumulator order, which
    /// makes each row's dot product bit-identical to llama.cpp's.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q4_0(w: &[u8], x: &[BlockQ8]) -> f32 {
        #[inline(always)]
        unsafe fn block(b: *const u8, xb: &BlockQ8, acc: __m256) -> __m256 {
            let d = _mm256_set1_ps(f16(b) * xb.d);
            let qw = _mm256_sub_epi8(nibbles(b.add(2)), _mm256_set1_epi8(8));
            let qx = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
            _mm256_fmadd_ps(d, mul_sum_i8(qw, qx), acc)
        }
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let p = w.as_ptr();
        let pairs = x.len() / 2;
        for i in 0..pairs {
            acc0 = block(p.add(2 * i * 18), &x[2 * i], acc0);
            acc1 = block(p.add((2 * i + 1) * 18), &x[2 * i + 1], acc1);
        }
        if x.len() % 2 == 1 {
            acc0 = block(p.add(2 * pairs * 18), &x[2 * pairs], acc0);
        }
        hsum(_mm256_add_ps(acc0, acc1))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q4_1(w: &[u8], x: &[BlockQ8]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut offset = 0f32;
        let p = w.as_ptr();
        for (i, xb) in x.iter().enumerate() {
            let b = p.add(i * 20);
            let d = _mm256_set1_ps(f16(b) * xb.d);
            offset += f16(b.add(2)) * xb.s;
            let qw = nibbles(b.add(4));
            let qx = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
            acc = _mm256_fmadd_ps(d, unsigned_mul_sum(qw, qx), acc);
        }
        hsum(acc) + offset
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q8_0(w: &[u8], x: &[BlockQ8]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let p = w.as_ptr();
        for (i, xb) in x.iter().enumerate() {
            let b = p.add(i * 34);
            let d = _mm256_set1_ps(f16(b) * xb.d);
            let qw = _mm256_loadu_si256(b.add(2) as *const __m256i);
            let qx = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
            acc = _mm256_fmadd_ps(d, mul_sum_i8(qw, qx), acc);
        }
        hsum(acc)
    }
}

/// One product of a [`matmul`] pass: `out` (`m` x `weight.rows`, row-major) =
/// activations (`m` rows of `weight.cols / 32` blocks) x weightᵀ.
pub struct MatmulJob<'w, 'o> {
    pub weight: QMatrix<'w>,
    pub out: &'o mut [f32],
}

/// A raw output pointer shared by workers that write disjoint elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: workers write disjoint (row, column) cells; see `matmul`.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Runs all `jobs` (which share the same input activations `x`, `m` rows) in one
/// parallel pass over the rayon pool of the caller.
pub fn matmul(x: &[BlockQ8], m: usize, jobs: &mut [MatmulJob<'_, '_>]) {
    let avx2 = has_avx2();
    // Work items: (job, first weight row, end weight row).
    let threads = rayon::current_num_threads().max(1);
    let total_rows: usize = jobs.iter().map(|j| j.weight.rows).sum();
    // Enough chunks for load balance, few enough that each is worth a task.
    let chunk = (total_rows / (threads * 8)).clamp(16, 1024).next_multiple_of(4);
    let mut items = Vec::new();
    let mut outs = Vec::with_capacity(jobs.len());
    for (ji, job) in jobs.iter_mut().enumerate() {
        assert_eq!(job.out.len(), m * job.weight.rows, "matmul output size");
        assert_eq!(x.len(), m * job.weight.cols / QK, "matmul input size");
        outs.push(OutPtr(job.out.as_mut_ptr()));
        let mut start = 0;
        while start < job.weight.rows {
            let end = (start + chunk).min(job.weight.rows);
            items.push((ji, start, end));
            start = end;
        }
    }
    let jobs: &[MatmulJob<'_, '_>] = jobs;
    items.par_iter().for_each(|&(ji, start, end)| {
        let w = &jobs[ji].weight;
        let n = w.rows;
        let nb = w.cols / QK;
        let out = outs[ji];
        for r0 in (0..m).step_by(ROW_TILE) {
            let r1 = (r0 + ROW_TILE).min(m);
            for j in start..end {
                let row = w.row(j);
                let mut r = r0;
                #[cfg(target_arch = "x86_64")]
                while avx2 && r + 8 <= r1 {
                    // SAFETY: AVX2 was detected; rows r..r+8 exist in x (r + 8 <= m).
                    let v = unsafe { x86::dot_xn::<8>(w.format, row, &x[r * nb..], nb, nb) };
                    for (i, v) in v.into_iter().enumerate() {
                        // SAFETY: as below.
                        unsafe { *out.0.add((r + i) * n + j) = v };
                    }
                    r += 8;
                }
                #[cfg(target_arch = "x86_64")]
                while avx2 && r + 4 <= r1 {
                    // SAFETY: AVX2 was detected; rows r..r+4 exist in x (r + 4 <= m).
                    let v = unsafe { x86::dot_xn::<4>(w.format, row, &x[r * nb..], nb, nb) };
                    for (i, v) in v.into_iter().enumerate() {
                        // SAFETY: as below.
                        unsafe { *out.0.add((r + i) * n + j) = v };
                    }
                    r += 4;
                }
                while r < r1 {
                    let v = dot(w.format, row, &x[r * nb..(r + 1) * nb], avx2);
                    // SAFETY: cell (r, j) belongs to this item only; r < m and j < n,
                    // and out has m * n elements (asserted above).
                    unsafe { *out.0.add(r * n + j) = v };
                    r += 1;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random generator for test data.
    fn lcg(seed: &mut u64) -> u32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    fn random_matrix(format: WeightFormat, rows: usize, cols: usize, seed: &mut u64) -> Vec<u8> {
        let mut data = vec![0u8; rows * cols / QK * format.block_bytes()];
        for b in data.chunks_exact_mut(format.block_bytes()) {
            for v in b.iter_mut() {
                *v = lcg(seed) as u8;
            }
            let d = half::f16::from_f32(0.001 + (lcg(seed) % 100) as f32 * 1e-4);
            b[..2].copy_from_slice(&d.to_bits().to_le_bytes());
            if format == WeightFormat::Q4_1 {
                let m = half::f16::from_f32(-0.01 * (lcg(seed) % 10) as f32);
                b[2..4].copy_from_slice(&m.to_bits().to_le_bytes());
            }
        }
        data
    }

    #[test]
    fn kernels_match_float_reference() {
        let mut seed = 42;
        // m = 15 exercises the 8-row, 4-row and single-row paths.
        let (rows, cols, m) = (37, 256, 15);
        for format in [WeightFormat::Q4_0, WeightFormat::Q4_1, WeightFormat::Q8_0] {
            let data = random_matrix(format, rows, cols, &mut seed);
            let w = QMatrix::new(format, rows, cols, &data).unwrap();
            let x: Vec<f32> = (0..m * cols).map(|_| (lcg(&mut seed) % 2001) as f32 / 1000.0 - 1.0).collect();
            let mut xq = Vec::new();
            quantize_rows(&x, cols, &mut xq);
            let mut out = vec![0f32; m * rows];
            matmul(&xq, m, &mut [MatmulJob { weight: w, out: &mut out }]);
            let mut wrow = vec![0f32; cols];
            for j in 0..rows {
                w.dequantize_row(j, &mut wrow);
                for r in 0..m {
                    let exact: f32 = wrow.iter().zip(&x[r * cols..(r + 1) * cols]).map(|(a, b)| a * b).sum();
                    let scale: f32 = wrow.iter().map(|v| v.abs()).sum::<f32>() / 64.0 + 1e-3;
                    let got = out[r * rows + j];
                    assert!((got - exact).abs() < scale, "{format:?} ({r},{j}): {got} vs {exact}");
                    let scalar = dot_scalar(format, w.row(j), &xq[r * cols / QK..(r + 1) * cols / QK]);
                    assert!((got - scalar).abs() <= 1e-4 * (1.0 + scalar.abs()), "{format:?} simd {got} vs scalar {scalar}");
                }
            }
        }
    }

    #[test]
    fn wrong_sizes_are_reported() {
        assert!(QMatrix::new(WeightFormat::Q8_0, 2, 33, &[0; 68]).is_err());
        let err = QMatrix::new(WeightFormat::Q4_0, 2, 32, &[0; 35]).unwrap_err();
        assert!(err.contains("needs 36 bytes"), "{err}");
    }
}
