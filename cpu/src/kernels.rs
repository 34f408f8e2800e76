//! Quantized matrix kernels for the CPU engine, working directly on GGUF block bytes
//! (memory-mapped, never copied).
//!
//! Weights stay in their GGUF block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0); activations are
//! quantized per row into [`BlockQ8`] blocks of 32 (an int8 vector with an f32 scale
//! and the scaled sum that Q4_1's offset needs), so every product is an int8 dot
//! product as in ggml. x86-64 CPUs with AVX2+FMA+F16C use `maddubs`-based SIMD
//! dot products (checked once at run time), with AVX-VNNI `vpdpbusd` where the CPU
//! has it (the same integer sums); other CPUs use portable scalar code that
//! gives the same results up to float rounding.
//!
//! [`matmul`] computes `out[r][j] = dot(weight row j, activation row r)` for several
//! weight matrices in one parallel pass, so that Q/K/V (or gate/up) cost one fork/join
//! instead of three. Work is split over weight rows; with several activation rows
//! (prefill) each weight row is used for a group of activation rows while it is in
//! L1, and a band of weight rows for a tile of activation rows while both are in L2
//! (a prompt's activations outgrow L2 long before its weights are read once).

use rayon::prelude::*;

use super::team::Team;

/// Elements per quantization block (all supported types).
pub const QK: usize = 32;

/// How far ahead (bytes) the decode dot products prefetch their weight row. The
/// weights are a memory-mapped file, in 4 KiB pages scattered in physical memory, and
/// the hardware prefetchers stop at each page boundary; a software prefetch this far
/// ahead keeps DRAM busy across them. Measured on the 2-core EPYC (1B files, decode):
/// Q8_0 10.4 -> 13.0 tok/s, Q4_0 17.5 -> 18-22; 1-4 KiB all helped, 3 KiB most often.
const PREFETCH_AHEAD: usize = 3072;

/// How many activation rows share one pass over a weight row in prefill.
const ROW_TILE: usize = 8;

/// [`ROW_TILE`] activation rows of a prompt batch laid out for the batched kernel:
/// the rows' blocks (padded with zero rows when fewer are left), and for each block
/// index the rows' scale terms side by side, so that the kernel handles the eight
/// rows' scales as one vector.
pub(crate) struct RowTile<'x> {
    /// Rows that are real (the rest is padding).
    rows: usize,
    /// Blocks per row.
    nb: usize,
    /// `ROW_TILE * nb` blocks, row after row.
    x: std::borrow::Cow<'x, [BlockQ8]>,
    /// Per block: each row's `d`.
    d: Vec<[f32; ROW_TILE]>,
    /// Per block: each row's `d * sum` (Q4_0's offset).
    d_sum: Vec<[f32; ROW_TILE]>,
    /// Per block: each row's `s` (Q4_1's min term).
    s: Vec<[f32; ROW_TILE]>,
}

impl<'x> RowTile<'x> {
    /// The tile of rows `r0..` of `x` (`m` rows of `nb` blocks).
    fn new(x: &'x [BlockQ8], r0: usize, m: usize, nb: usize) -> Self {
        let rows = (m - r0).min(ROW_TILE);
        let x = if rows == ROW_TILE {
            std::borrow::Cow::Borrowed(&x[r0 * nb..(r0 + ROW_TILE) * nb])
        } else {
            let mut padded = x[r0 * nb..(r0 + rows) * nb].to_vec();
            padded.resize(ROW_TILE * nb, BlockQ8::default());
            std::borrow::Cow::Owned(padded)
        };
        let column = |f: &dyn Fn(&BlockQ8) -> f32| -> Vec<[f32; ROW_TILE]> {
            (0..nb)
                .map(|i| std::array::from_fn(|r| f(&x[r * nb + i])))
                .collect()
        };
        let (d, d_sum, s) = (column(&|b| b.d), column(&|b| b.d * b.sum), column(&|b| b.s));
        RowTile {
            rows,
            nb,
            x,
            d,
            d_sum,
            s,
        }
    }
}

/// Block formats of weight matrices that the CPU kernels handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// f16 scale + 32 x 4-bit, weight = d * (q - 8).
    Q4_0,
    /// f16 scale, f16 min + 32 x 4-bit, weight = d * q + m.
    Q4_1,
    /// f16 scale + 32 x int8, weight = d * q.
    Q8_0,
    /// f16 scale + 32 high bits + 32 x 4-bit low bits, weight = d * (q - 16).
    Q5_0,
    /// f16 scale, f16 min + 32 high bits + 32 x 4-bit low bits, weight = d * q + m.
    Q5_1,
}

impl WeightFormat {
    /// Bytes of one block of 32 weights.
    pub const fn block_bytes(self) -> usize {
        match self {
            WeightFormat::Q4_0 => 18,
            WeightFormat::Q4_1 => 20,
            WeightFormat::Q8_0 => 34,
            WeightFormat::Q5_0 => 22,
            WeightFormat::Q5_1 => 24,
        }
    }
}

/// One block of 32 quantized activations: `x[i] ≈ d * qs[i]`, `s = d * Σ qs` (both
/// f16 values kept as f32, as in ggml's `block_q8_1`), and `sum = Σ qs` exactly.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct BlockQ8 {
    pub d: f32,
    pub s: f32,
    /// Σ qs (an integer, exact in f32): Q4_0's offset of 8 is `- 8 * d * sum`, which
    /// lets the kernels multiply Q4_0's nibbles unsigned, as Q4_1's.
    pub sum: f32,
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
    pub fn new(
        format: WeightFormat,
        rows: usize,
        cols: usize,
        data: &'a [u8],
    ) -> Result<Self, String> {
        if !cols.is_multiple_of(QK) {
            return Err(format!(
                "{cols} columns are not a multiple of the block size {QK}"
            ));
        }
        let expected = rows * cols / QK * format.block_bytes();
        if data.len() != expected {
            return Err(format!(
                "{rows}x{cols} {format:?} needs {expected} bytes, found {}",
                data.len()
            ));
        }
        Ok(QMatrix {
            format,
            rows,
            cols,
            data,
        })
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
                WeightFormat::Q5_0 => {
                    let q = q5_values(b, 2);
                    for j in 0..QK {
                        dst[j] = d * (q[j] as f32 - 16.0);
                    }
                }
                WeightFormat::Q5_1 => {
                    let (m, q) = (f16_at(b, 2), q5_values(b, 4));
                    for j in 0..QK {
                        dst[j] = d * q[j] as f32 + m;
                    }
                }
            }
        }
    }
}

/// The 32 five-bit values (0..31) of a Q5_0/Q5_1 block whose high bits start at
/// byte `qh` (the low nibbles follow them): bit `j` of the little-endian u32 is
/// element `j`'s fifth bit.
#[inline]
fn q5_values(b: &[u8], qh: usize) -> [u8; QK] {
    let high = u32::from_le_bytes([b[qh], b[qh + 1], b[qh + 2], b[qh + 3]]);
    let low = &b[qh + 4..qh + 20];
    std::array::from_fn(|j| {
        let nibble = if j < 16 {
            low[j] & 0x0F
        } else {
            low[j - 16] >> 4
        };
        nibble | (((high >> j) & 1) as u8) << 4
    })
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
    let avx2 = has_avx2();
    let quantize = |(src, dst): (&[f32], &mut BlockQ8)| {
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: AVX2, FMA and F16C were detected (`has_avx2`); `src` is one chunk
            // of QK floats.
            unsafe { x86::quantize_block(src, dst) };
            return;
        }
        quantize_block_scalar(src, dst);
    };
    if blocks >= 4096 {
        x.par_chunks_exact(QK)
            .zip(out.par_iter_mut())
            .for_each(quantize);
    } else {
        x.chunks_exact(QK).zip(out.iter_mut()).for_each(quantize);
    }
}

/// Quantizes one block of 32 activations. The same arithmetic as ggml's AVX2
/// `quantize_row_q8_0`/`q8_1`: scale rounded to f16, inverse scale 127/amax, ties
/// rounded to even. Matching it bit for bit keeps greedy decoding on the same tokens
/// as llama.cpp when two logits are nearly tied.
fn quantize_block_scalar(src: &[f32], dst: &mut BlockQ8) {
    let amax = src.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (d, id) = block_scales(amax);
    let mut sum = 0i32;
    for (q, v) in dst.qs.iter_mut().zip(src) {
        let r = (v * id).round_ties_even() as i32;
        *q = r as i8;
        sum += r;
    }
    finish_block(dst, d, sum);
}

/// The scale and inverse scale of a block whose largest magnitude is `amax`.
#[inline(always)]
fn block_scales(amax: f32) -> (f32, f32) {
    (amax / 127.0, if amax != 0.0 { 127.0 / amax } else { 0.0 })
}

#[inline(always)]
fn finish_block(dst: &mut BlockQ8, d: f32, sum: i32) {
    dst.d = round_f16(d);
    dst.s = round_f16(d * sum as f32);
    dst.sum = sum as f32;
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

/// Whether this CPU also has AVX-VNNI, whose `vpdpbusd` replaces two instructions of
/// every block product (the same sums; see `x86::unsigned_mul_sum`).
#[inline]
pub(crate) fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx2() && std::is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The block scales of quantized activations side by side: `d` and `d * sum` of every
/// block. The Q4_0 decode kernel reads four blocks' scales with one load.
pub(crate) struct BlockScales {
    d: Vec<f32>,
    d_sum: Vec<f32>,
}

impl BlockScales {
    fn new(x: &[BlockQ8]) -> Self {
        BlockScales {
            d: x.iter().map(|b| b.d).collect(),
            d_sum: x.iter().map(|b| b.d * b.sum).collect(),
        }
    }
}

/// [`dot`] of each weight row `j` in `rows` of `w` with one activation row, passed
/// to `put(j, v)`. A decode row is short (SmolLM2's 576 columns are 18 blocks), so the
/// kernel is entered, and the CPU features checked, once for all the rows of an item
/// rather than once per row; every row gets the bits [`dot`] gives it.
fn dot_rows(
    w: &QMatrix<'_>,
    rows: std::ops::Range<usize>,
    x: &[BlockQ8],
    d: &[f32],
    d_sum: &[f32],
    avx2: bool,
    put: &mut impl FnMut(usize, f32),
) {
    debug_assert!(rows.end <= w.rows);
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: as in `dot`; every row of `w` has `x.len()` blocks (QMatrix::new and
        // the callers' asserts).
        unsafe {
            if has_vnni() {
                x86::dot_rows_vnni(w, rows, x, d, d_sum, put)
            } else {
                x86::dot_rows(w, rows, x, d, d_sum, put)
            }
        }
        return;
    }
    for j in rows {
        put(j, dot(w.format, w.row(j), x, d, d_sum, avx2));
    }
}

/// One weight row (raw blocks) · one quantized activation row, whose [`BlockScales`]
/// are `d` and `d_sum`.
#[inline]
fn dot(format: WeightFormat, w: &[u8], x: &[BlockQ8], d: &[f32], d_sum: &[f32], avx2: bool) -> f32 {
    debug_assert_eq!(w.len(), x.len() * format.block_bytes());
    debug_assert!(d.len() == x.len() && d_sum.len() == x.len());
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` is only true when has_avx2() found AVX2, FMA and F16C; the
        // slices have matching block counts (checked by QMatrix::new and the callers).
        return unsafe {
            if has_vnni() {
                x86::dot_vnni(format, w, x, d, d_sum)
            } else {
                x86::dot(format, w, x, d, d_sum)
            }
        };
    }
    let _ = (avx2, d, d_sum);
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
            WeightFormat::Q5_0 => {
                let q = q5_values(b, 2);
                let s: i32 = q
                    .iter()
                    .zip(&xb.qs)
                    .map(|(&q, &x)| (q as i32 - 16) * x as i32)
                    .sum();
                total += d * xb.d * s as f32;
            }
            WeightFormat::Q5_1 => {
                let q = q5_values(b, 4);
                let s: i32 = q
                    .iter()
                    .zip(&xb.qs)
                    .map(|(&q, &x)| q as i32 * x as i32)
                    .sum();
                total += d * xb.d * s as f32 + f16_at(b, 2) * xb.s;
            }
        }
    }
    total
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    //! AVX2 dot products after ggml's `ggml_vec_dot_q4_0_q8_0` family.
    //!
    //! Every function here is `unsafe` for the same two reasons, spelled out in each
    //! one's `# Safety` section: it may only run on a CPU with AVX2, FMA and F16C
    //! ([`super::has_avx2`]), and it reads through raw pointers, so its slices must
    //! hold as many blocks as it is told.
    use super::BlockQ8;
    use std::arch::x86_64::*;

    /// The f16 at `p` as f32 (a block scale).
    ///
    /// # Safety
    /// The CPU has F16C and AVX, and `p` is valid for reading 2 bytes (any alignment).
    #[inline(always)]
    pub(crate) unsafe fn f16(p: *const u8) -> f32 {
        let bits = std::ptr::read_unaligned(p as *const u16) as u64;
        _mm_cvtss_f32(_mm_cvtph_ps(vmovq(bits)))
    }

    /// [`super::quantize_block_scalar`] with AVX2 (the same results, bit for bit).
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C, and `src` holds at least [`super::QK`] floats.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn quantize_block(src: &[f32], dst: &mut BlockQ8) {
        debug_assert_eq!(src.len(), super::QK);
        let p = src.as_ptr();
        let v = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_andnot_ps(sign, v[0]);
        for x in &v[1..] {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *x));
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
        let (d, id) = super::block_scales(amax);
        let mul = _mm256_set1_ps(id);
        let q = v.map(|x| {
            _mm256_cvtps_epi32(_mm256_round_ps::<
                { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
            >(_mm256_mul_ps(x, mul)))
        });
        let total = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        let t4 = _mm_add_epi32(
            _mm256_castsi256_si128(total),
            _mm256_extracti128_si256(total, 1),
        );
        let t4 = _mm_add_epi32(t4, _mm_shuffle_epi32::<0b01_00_11_10>(t4));
        let sum = _mm_cvtsi128_si32(_mm_add_epi32(t4, _mm_shuffle_epi32::<0b10_11_00_01>(t4)));
        // Packing works per 128-bit lane; the permute restores element order.
        let packed = _mm256_packs_epi16(
            _mm256_packs_epi32(q[0], q[1]),
            _mm256_packs_epi32(q[2], q[3]),
        );
        let ordered =
            _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(dst.qs.as_mut_ptr() as *mut __m256i, ordered);
        super::finish_block(dst, d, sum);
    }

    /// `bits` in the low half of a vector register (the rest zero), moved with `vmovq`
    /// written by hand: from `_mm_cvtsi64_si128` (or any other intrinsic) LLVM emits
    /// `vpinsrw`/`vpinsrq` into a register whose upper lanes it considers free, usually
    /// the loop's accumulator. That false dependency chained every block of a dot
    /// product to the previous block's FMA and made decode about 3x slower.
    ///
    /// # Safety
    /// The CPU has AVX (`vmovq` is VEX-encoded).
    #[inline(always)]
    unsafe fn vmovq(bits: u64) -> __m128i {
        let v: __m128i;
        // SAFETY: the instruction only moves a general register into a vector register
        // (the caller guarantees AVX); it touches no memory, stack or flags, as declared.
        std::arch::asm!(
            "vmovq {v}, {bits}",
            v = lateout(xmm_reg) v,
            bits = in(reg) bits,
            options(pure, nomem, nostack, preserves_flags)
        );
        v
    }

    /// The sum of the eight lanes of `v`.
    ///
    /// # Safety
    /// The CPU has AVX.
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
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[inline(always)]
    unsafe fn mul_sum_i8<const V: bool>(x: __m256i, y: __m256i) -> __m256 {
        let ax = _mm256_sign_epi8(x, x);
        let sy = _mm256_sign_epi8(y, x);
        unsigned_mul_sum::<V>(ax, sy)
    }

    /// Σ x[i] * y[i] of unsigned x and signed y bytes, as 8 f32 partial sums: with
    /// `V`, one AVX-VNNI `vpdpbusd`, else `maddubs` and `madd` (ggml's
    /// `mul_sum_us8_pairs_float`). The sums are the same integers: no pair of products
    /// of our operands reaches the 16-bit saturation of `maddubs` (at most 2 * 128 * 127).
    ///
    /// # Safety
    /// The CPU has AVX2, and AVX-VNNI if `V`.
    #[inline(always)]
    unsafe fn unsigned_mul_sum<const V: bool>(x: __m256i, y: __m256i) -> __m256 {
        if V {
            return _mm256_cvtepi32_ps(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), x, y));
        }
        let dot = _mm256_maddubs_epi16(x, y);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(dot, _mm256_set1_epi16(1)))
    }

    /// The 32 nibbles of a 4-bit block as bytes 0..15 in element order.
    ///
    /// # Safety
    /// The CPU has AVX2, and `p` is valid for reading 16 bytes (any alignment).
    #[inline(always)]
    unsafe fn nibbles(p: *const u8) -> __m256i {
        let tmp = _mm_loadu_si128(p as *const __m128i);
        let bytes = _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp);
        _mm256_and_si256(bytes, _mm256_set1_epi8(0x0F))
    }

    /// One 8-lane vector with lane `r` of `v` (0..8) in every lane. `lo`/`hi` are `v`
    /// with its lower/upper half in both halves; `r` is a constant after unrolling.
    ///
    /// # Safety
    /// The CPU has AVX.
    #[inline(always)]
    unsafe fn splat(lo: __m256, hi: __m256, r: usize) -> __m256 {
        match r {
            0 => _mm256_shuffle_ps::<0x00>(lo, lo),
            1 => _mm256_shuffle_ps::<0x55>(lo, lo),
            2 => _mm256_shuffle_ps::<0xAA>(lo, lo),
            3 => _mm256_shuffle_ps::<0xFF>(lo, lo),
            4 => _mm256_shuffle_ps::<0x00>(hi, hi),
            5 => _mm256_shuffle_ps::<0x55>(hi, hi),
            6 => _mm256_shuffle_ps::<0xAA>(hi, hi),
            _ => _mm256_shuffle_ps::<0xFF>(hi, hi),
        }
    }

    /// One weight row against the eight activation rows of `tile`: each weight block
    /// is unpacked once for all of them, and the per-block scale products of the
    /// eight rows are one vector multiply (and Q4_0's/Q4_1's offsets one vector FMA)
    /// instead of eight scalar ones.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `w` holds `tile.nb` blocks of `format` and the
    /// tile its `ROW_TILE` rows of `tile.nb` blocks (as [`super::RowTile::new`] builds it).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_tile(
        format: super::WeightFormat,
        w: &[u8],
        tile: &super::RowTile<'_>,
    ) -> [f32; 8] {
        dot_tile_with::<false>(format, w, tile)
    }

    /// [`dot_tile`] with AVX-VNNI products.
    ///
    /// # Safety
    /// As for [`dot_tile`], and the CPU has AVX-VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    pub unsafe fn dot_tile_vnni(
        format: super::WeightFormat,
        w: &[u8],
        tile: &super::RowTile<'_>,
    ) -> [f32; 8] {
        dot_tile_with::<true>(format, w, tile)
    }

    #[inline(always)]
    unsafe fn dot_tile_with<const V: bool>(
        format: super::WeightFormat,
        w: &[u8],
        tile: &super::RowTile<'_>,
    ) -> [f32; 8] {
        match format {
            super::WeightFormat::Q4_0 => dot_tile_rows::<0, V>(w, tile),
            super::WeightFormat::Q4_1 => dot_tile_rows::<1, V>(w, tile),
            super::WeightFormat::Q8_0 => dot_tile_rows::<2, V>(w, tile),
            super::WeightFormat::Q5_0 => dot_tile_rows::<3, V>(w, tile),
            super::WeightFormat::Q5_1 => dot_tile_rows::<4, V>(w, tile),
        }
    }

    /// [`dot_tile_for`] for the tile's real rows only: a tile of fewer than eight
    /// (batched decode of a few sequences) costs its rows, not eight.
    #[inline(always)]
    unsafe fn dot_tile_rows<const F: u8, const V: bool>(
        w: &[u8],
        tile: &super::RowTile<'_>,
    ) -> [f32; 8] {
        match tile.rows {
            1 => dot_tile_for::<F, V, 1>(w, tile),
            2 => dot_tile_for::<F, V, 2>(w, tile),
            3 => dot_tile_for::<F, V, 3>(w, tile),
            4 => dot_tile_for::<F, V, 4>(w, tile),
            5 => dot_tile_for::<F, V, 5>(w, tile),
            6 => dot_tile_for::<F, V, 6>(w, tile),
            7 => dot_tile_for::<F, V, 7>(w, tile),
            _ => dot_tile_for::<F, V, 8>(w, tile),
        }
    }

    /// One Q4_0 weight row against `R` activation rows ([`dot_q4_0_rows`]).
    ///
    /// # Safety
    /// As for [`dot_q4_0_rows`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q4_0_rows<const R: usize>(
        w: &[u8],
        x: [&[BlockQ8]; R],
        d: [&[f32]; R],
        d_sum: [&[f32]; R],
    ) -> [f32; R] {
        dot_q4_0_rows::<R, false>(w, x, d, d_sum)
    }

    /// [`q4_0_rows`] with AVX-VNNI products.
    ///
    /// # Safety
    /// As for [`dot_q4_0_rows`], and the CPU has AVX-VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    pub unsafe fn q4_0_rows_vnni<const R: usize>(
        w: &[u8],
        x: [&[BlockQ8]; R],
        d: [&[f32]; R],
        d_sum: [&[f32]; R],
    ) -> [f32; R] {
        dot_q4_0_rows::<R, true>(w, x, d, d_sum)
    }

    /// One weight row · one activation row on the AVX2 kernels.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `w` holds `x.len()` blocks of `format`, and
    /// `d` and `d_sum` one value per block of `x`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot(
        format: super::WeightFormat,
        w: &[u8],
        x: &[BlockQ8],
        d: &[f32],
        d_sum: &[f32],
    ) -> f32 {
        dot_with::<false>(format, w, x, d, d_sum)
    }

    /// [`dot`] with AVX-VNNI products.
    ///
    /// # Safety
    /// As for [`dot`], and the CPU has AVX-VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    pub unsafe fn dot_vnni(
        format: super::WeightFormat,
        w: &[u8],
        x: &[BlockQ8],
        d: &[f32],
        d_sum: &[f32],
    ) -> f32 {
        dot_with::<true>(format, w, x, d, d_sum)
    }

    /// [`super::dot_rows`] on the AVX2 kernels.
    ///
    /// # Safety
    /// As for [`dot`], for every row of `w` in `rows`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_rows(
        w: &super::QMatrix<'_>,
        rows: std::ops::Range<usize>,
        x: &[BlockQ8],
        d: &[f32],
        d_sum: &[f32],
        put: &mut impl FnMut(usize, f32),
    ) {
        for j in rows {
            put(j, dot_with::<false>(w.format, w.row(j), x, d, d_sum));
        }
    }

    /// [`dot_rows`] with AVX-VNNI products.
    ///
    /// # Safety
    /// As for [`dot_rows`], and the CPU has AVX-VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    pub unsafe fn dot_rows_vnni(
        w: &super::QMatrix<'_>,
        rows: std::ops::Range<usize>,
        x: &[BlockQ8],
        d: &[f32],
        d_sum: &[f32],
        put: &mut impl FnMut(usize, f32),
    ) {
        for j in rows {
            put(j, dot_with::<true>(w.format, w.row(j), x, d, d_sum));
        }
    }

    #[inline(always)]
    unsafe fn dot_with<const V: bool>(
        format: super::WeightFormat,
        w: &[u8],
        x: &[BlockQ8],
        d: &[f32],
        d_sum: &[f32],
    ) -> f32 {
        match format {
            super::WeightFormat::Q4_0 => dot_q4_0::<V>(w, x, d, d_sum),
            super::WeightFormat::Q4_1 => dot_q4_1::<V>(w, x),
            super::WeightFormat::Q8_0 => dot_q8_0::<V>(w, x),
            super::WeightFormat::Q5_0 => dot_q5_0::<V>(w, x),
            super::WeightFormat::Q5_1 => dot_q5_1::<V>(w, x),
        }
    }

    /// [`dot_tile`] for one format (`F`: 0 = Q4_0, 1 = Q4_1, 2 = Q8_0, 3 = Q5_0,
    /// 4 = Q5_1), so that the
    /// format checks fold away. For each row the operations and their order are those
    /// of the single-row kernels `dot_q4_1`/`dot_q8_0` (scale product, FMA into one
    /// accumulator, min term added after a separate multiply), so prompt rows get
    /// the same bits as decode rows; Q4_0 has no order to keep (see `dot_q4_0`).
    ///
    /// # Safety
    /// As for [`dot_tile`], with `F` naming the format of `w`.
    #[inline(always)]
    unsafe fn dot_tile_for<const F: u8, const V: bool, const R: usize>(
        w: &[u8],
        tile: &super::RowTile<'_>,
    ) -> [f32; 8] {
        let format = match F {
            0 => super::WeightFormat::Q4_0,
            1 => super::WeightFormat::Q4_1,
            2 => super::WeightFormat::Q8_0,
            3 => super::WeightFormat::Q5_0,
            _ => super::WeightFormat::Q5_1,
        };
        let bb = format.block_bytes();
        let nb = tile.nb;
        let p = w.as_ptr();
        let xp = tile.x.as_ptr();
        let mut acc = [_mm256_setzero_ps(); R];
        let mut offset = _mm256_setzero_ps();
        let signed = matches!(
            format,
            super::WeightFormat::Q8_0 | super::WeightFormat::Q5_0
        );
        for i in 0..nb {
            let b = p.add(i * bb);
            let (dw, qw) = match format {
                super::WeightFormat::Q4_0 => (f16(b), nibbles(b.add(2))),
                super::WeightFormat::Q4_1 => (f16(b), nibbles(b.add(4))),
                super::WeightFormat::Q8_0 => {
                    (f16(b), _mm256_loadu_si256(b.add(2) as *const __m256i))
                }
                super::WeightFormat::Q5_0 => (f16(b), q5_0_values(b)),
                super::WeightFormat::Q5_1 => (f16(b), q5_1_values(b)),
            };
            let d = _mm256_mul_ps(_mm256_set1_ps(dw), _mm256_loadu_ps(tile.d[i].as_ptr()));
            let (dlo, dhi) = (
                _mm256_permute2f128_ps::<0x00>(d, d),
                _mm256_permute2f128_ps::<0x11>(d, d),
            );
            // For signed weights, move the sign onto the activations once.
            let aw = if signed { _mm256_sign_epi8(qw, qw) } else { qw };
            for (r, acc) in acc.iter_mut().enumerate() {
                let qx = _mm256_loadu_si256((*xp.add(r * nb + i)).qs.as_ptr() as *const __m256i);
                let sx = if signed { _mm256_sign_epi8(qx, qw) } else { qx };
                *acc = _mm256_fmadd_ps(splat(dlo, dhi, r), unsigned_mul_sum::<V>(aw, sx), *acc);
            }
            match format {
                super::WeightFormat::Q4_0 => {
                    offset = _mm256_fmadd_ps(
                        _mm256_set1_ps(dw),
                        _mm256_loadu_ps(tile.d_sum.as_ptr().add(i) as *const f32),
                        offset,
                    )
                }
                super::WeightFormat::Q4_1 | super::WeightFormat::Q5_1 => {
                    let m = _mm256_set1_ps(f16(b.add(2)));
                    offset = _mm256_add_ps(
                        offset,
                        _mm256_mul_ps(m, _mm256_loadu_ps(tile.s[i].as_ptr())),
                    );
                }
                super::WeightFormat::Q8_0 | super::WeightFormat::Q5_0 => {}
            }
        }
        let mut offsets = [0f32; 8];
        _mm256_storeu_ps(offsets.as_mut_ptr(), offset);
        let mut out = [0f32; 8];
        for r in 0..R {
            out[r] = match format {
                super::WeightFormat::Q4_0 => hsum(acc[r]) - 8.0 * offsets[r],
                _ => hsum(acc[r]) + offsets[r],
            };
        }
        out
    }

    /// Q4_0 multiplies the nibbles unsigned (0..15, no sign moves) and
    /// subtracts the offset of 8 as `8 * d * Σ qx` per block. The loop is bound by
    /// the per-block scale (f16 conversion and multiply), not by memory, so it takes
    /// four blocks at a time: their four f16 weight scales are packed into one
    /// register, converted and multiplied by the four activation scales (`d`, laid out
    /// side by side) with one instruction each, and the four offsets are one FMA
    /// (`d_sum` = activation `d * sum`). That ran 1.2x faster than one block at a time
    /// on L2-resident rows. ggml runs Q4_0 through repacked 8-row kernels with their
    /// own summation order, so there is no order to keep; Q4_1 and Q8_0 below keep
    /// ggml's single-accumulator order, which makes each row's dot product
    /// bit-identical to llama.cpp's.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `w` holds `x.len()` Q4_0 blocks, and `d` and
    /// `d_sum` one value per block of `x`.
    #[inline(always)]
    pub unsafe fn dot_q4_0<const V: bool>(
        w: &[u8],
        x: &[BlockQ8],
        d: &[f32],
        d_sum: &[f32],
    ) -> f32 {
        dot_q4_0_rows::<1, V>(w, [x], [d], [d_sum])[0]
    }

    /// [`dot_q4_0`] for `R` activation rows at once (prefill, batched decode): each
    /// weight block is unpacked and its scales converted once for all of them, and
    /// every row gets the operations of [`dot_q4_0`] in the same order, so its result
    /// does not depend on `R` or on the other rows (a sequence's logits must not
    /// depend on what shares its pass). `dot_q4_0` is this kernel with `R = 1`.
    ///
    /// A block's integer sum takes four lanes, not eight: lane `l` adds the products
    /// of elements `4l..4l + 4` and `16 + 4l..16 + 4l + 4`, so one register holds two
    /// blocks and their float steps (conversion, scale FMA) cost half as much. Blocks
    /// `4i` and `4i + 1` go into `acc_a`, `4i + 2` and `4i + 3` into `acc_b`; the
    /// AVX-512 kernel ([`q4_0_rows_avx512`]) does the same lanes' operations four
    /// blocks to a register.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `w` holds `x[r].len()` Q4_0 blocks and `d[r]`
    /// and `d_sum[r]` one value per block of `x[r]`, for every row `r`.
    #[inline(always)]
    pub unsafe fn dot_q4_0_rows<const R: usize, const V: bool>(
        w: &[u8],
        x: [&[BlockQ8]; R],
        d: [&[f32]; R],
        d_sum: [&[f32]; R],
    ) -> [f32; R] {
        /// The halves `h` (0: elements 0..16, 1: 16..32) of the quantized
        /// activations of blocks `k` and `k + 1` of `x`, side by side.
        ///
        /// # Safety
        /// The CPU has AVX2, and `x` has blocks `k` and `k + 1`.
        #[inline(always)]
        unsafe fn halves(x: &[BlockQ8], k: usize, h: usize) -> __m256i {
            let at = |k: usize| x.get_unchecked(k).qs.as_ptr().add(16 * h) as *const __m128i;
            _mm256_inserti128_si256::<1>(
                _mm256_castsi128_si256(_mm_loadu_si128(at(k))),
                _mm_loadu_si128(at(k + 1)),
            )
        }
        /// The nibbles of blocks `k` and `k + 1` from `b`, side by side, unmasked.
        ///
        /// # Safety
        /// The CPU has AVX2, and `b` holds blocks `k` and `k + 1`.
        #[inline(always)]
        unsafe fn raw(b: *const u8, k: usize) -> __m256i {
            _mm256_inserti128_si256::<1>(
                _mm256_castsi128_si256(_mm_loadu_si128(b.add(k * 18 + 2) as *const __m128i)),
                _mm_loadu_si128(b.add(k * 18 + 20) as *const __m128i),
            )
        }
        // No closures here: a closure does not inherit the target features, so the
        // intrinsics in it would not be inlined.
        let mut acc_a = [_mm256_setzero_ps(); R];
        let mut acc_b = [_mm256_setzero_ps(); R];
        let mut offsets = [_mm_setzero_ps(); R];
        let p = w.as_ptr();
        let nb = x[0].len();
        let quads = nb / 4;
        let low = _mm256_set1_epi8(0x0F);
        let first = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
        let second = _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3);
        for i in 0..quads {
            let b = p.add(4 * i * 18);
            // Prefetching never faults, also past the end of the mapping.
            _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(super::PREFETCH_AHEAD) as *const i8);
            let scale = |k: usize| std::ptr::read_unaligned(b.add(k * 18) as *const u16) as u64;
            let packed = scale(0) | scale(1) << 16 | scale(2) << 32 | scale(3) << 48;
            let dw = _mm_cvtph_ps(vmovq(packed));
            let (raw_a, raw_b) = (raw(b, 0), raw(b, 2));
            let (lo_a, hi_a) = (
                _mm256_and_si256(raw_a, low),
                _mm256_and_si256(_mm256_srli_epi16::<4>(raw_a), low),
            );
            let (lo_b, hi_b) = (
                _mm256_and_si256(raw_b, low),
                _mm256_and_si256(_mm256_srli_epi16::<4>(raw_b), low),
            );
            for r in 0..R {
                let ds = _mm_mul_ps(dw, _mm_loadu_ps(d[r].as_ptr().add(4 * i)));
                let ds_sum = _mm_loadu_ps(d_sum[r].as_ptr().add(4 * i));
                offsets[r] = _mm_fmadd_ps(dw, ds_sum, offsets[r]);
                let ds = _mm256_castps128_ps256(ds);
                let (xr, k) = (x[r], 4 * i);
                let pa = block_pair_sums::<V>(lo_a, halves(xr, k, 0), hi_a, halves(xr, k, 1));
                acc_a[r] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(ds, first), pa, acc_a[r]);
                let pb =
                    block_pair_sums::<V>(lo_b, halves(xr, k + 2, 0), hi_b, halves(xr, k + 2, 1));
                acc_b[r] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(ds, second), pb, acc_b[r]);
            }
        }
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = q4_0_finish::<V>(w, x[r], d[r], d_sum[r], acc_a[r], acc_b[r], offsets[r]);
        }
        out
    }

    /// The integer sums of two Q4_0 blocks as 8 f32 lanes, four per block: `lo`/`hi`
    /// are the blocks' nibbles of elements 0..16 / 16..32 (block one in the lower
    /// 128 bits), `x_lo`/`x_hi` the activations in the same order. Lane `l` of a
    /// block is the sum of its elements `4l..4l + 4` and `16 + 4l..16 + 4l + 4`: with
    /// `V` two AVX-VNNI `vpdpbusd`, else two `maddubs` added as 16-bit sums (at most
    /// 4 * 15 * 128, no saturation) and widened with `madd`; the same integers.
    ///
    /// # Safety
    /// The CPU has AVX2, and AVX-VNNI if `V`.
    #[inline(always)]
    unsafe fn block_pair_sums<const V: bool>(
        lo: __m256i,
        x_lo: __m256i,
        hi: __m256i,
        x_hi: __m256i,
    ) -> __m256 {
        if V {
            let s = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), lo, x_lo);
            return _mm256_cvtepi32_ps(_mm256_dpbusd_avx_epi32(s, hi, x_hi));
        }
        let s = _mm256_add_epi16(
            _mm256_maddubs_epi16(lo, x_lo),
            _mm256_maddubs_epi16(hi, x_hi),
        );
        _mm256_cvtepi32_ps(_mm256_madd_epi16(s, _mm256_set1_epi16(1)))
    }

    /// The end of a Q4_0 row product, shared by the 256- and 512-bit kernels: the
    /// blocks after the last whole quad (one at a time, into `acc_a`), then the
    /// accumulators' and offsets' sums.
    ///
    /// # Safety
    /// As for [`dot_q4_0_rows`], for the one row `x`.
    #[inline(always)]
    unsafe fn q4_0_finish<const V: bool>(
        w: &[u8],
        x: &[BlockQ8],
        d: &[f32],
        d_sum: &[f32],
        mut acc_a: __m256,
        acc_b: __m256,
        offsets: __m128,
    ) -> f32 {
        let p = w.as_ptr();
        let mut offset = 0f32;
        for k in x.len() / 4 * 4..x.len() {
            let b = p.add(k * 18);
            let dw = f16(b);
            let ds = _mm256_set1_ps(dw * *d.get_unchecked(k));
            let qx = _mm256_loadu_si256(x.get_unchecked(k).qs.as_ptr() as *const __m256i);
            acc_a = _mm256_fmadd_ps(ds, unsigned_mul_sum::<V>(nibbles(b.add(2)), qx), acc_a);
            offset = dw.mul_add(*d_sum.get_unchecked(k), offset);
        }
        let o = _mm_add_ps(offsets, _mm_movehl_ps(offsets, offsets));
        let offset = offset + _mm_cvtss_f32(_mm_add_ss(o, _mm_movehdup_ps(o)));
        hsum(_mm256_add_ps(acc_a, acc_b)) - 8.0 * offset
    }

    /// Four consecutive Q4_0 blocks' nibbles (`b` is the first block) in two 512-bit
    /// registers: elements 0..16 of each block, and elements 16..32, block after
    /// block (the order of a [`super::Q4Quad`]).
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BW, and `b` is valid for reading four blocks.
    #[inline(always)]
    unsafe fn nibble_quad(b: *const u8) -> (__m512i, __m512i) {
        let at = |k: usize| _mm_loadu_si128(b.add(k * 18 + 2) as *const __m128i);
        let raw = _mm512_inserti32x4::<3>(
            _mm512_inserti32x4::<2>(
                _mm512_inserti32x4::<1>(_mm512_castsi128_si512(at(0)), at(1)),
                at(2),
            ),
            at(3),
        );
        let low = _mm512_set1_epi8(0x0F);
        (
            _mm512_and_si512(raw, low),
            _mm512_and_si512(_mm512_srli_epi16::<4>(raw), low),
        )
    }

    /// [`dot_q4_0_rows`] on 512-bit registers for `W` weight rows (1 or 2) at once,
    /// four blocks to a register: lanes 0..8 do `acc_a`'s operations and lanes 8..16
    /// `acc_b`'s, in the same order and with the same end ([`q4_0_finish`]), so each
    /// row's result is the same bits as on the 256-bit kernel, alone or batched. Two
    /// weight rows share each load of the activations, which come from L2 in a
    /// prompt's product and bound it. `quads[r]` are row `r`'s activations as
    /// [`super::Q4Quad`]s and `d16[r]` its block scales spread over their blocks'
    /// lanes ([`super::Q4Acts::d16`], read when `W` is 2: the weight scales are then
    /// spread once for all rows, and no shuffle is left per row); `d_sum4` are the
    /// [`super::Q4Acts::d_sum4`] of rows `0..4` and `4..8` (the second empty when
    /// `R <= 4`): one FMA adds four rows' offsets, each row's in its own 128-bit lane,
    /// as [`dot_q4_0_rows`] adds them in a 128-bit register.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA, F16C and AVX-512 F, BW and VNNI; as for
    /// [`dot_q4_0_rows`], and `quads[r]` and `d16[r]` hold `x[r].len() / 4` quads
    /// and each `d_sum4` as many groups of offsets (the second one only if `R > 4`).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
    pub unsafe fn q4_0_rows_avx512<const W: usize, const R: usize>(
        w: [&[u8]; W],
        quads: [&[super::Q4Quad]; R],
        d16: [&[super::Lanes16]; R],
        d_sum4: [&[super::Lanes16]; 2],
        x: [&[BlockQ8]; R],
        d: [&[f32]; R],
        d_sum: [&[f32]; R],
    ) -> [[f32; R]; W] {
        let mut acc = [[_mm512_setzero_ps(); R]; W];
        let mut offsets = [[_mm512_setzero_ps(); 2]; W];
        let nb = x[0].len();
        // The four block scales of a quad, each over its block's four lanes.
        let spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        for i in 0..nb / 4 {
            let mut dw_x = [_mm_setzero_ps(); W];
            let mut dw_spread = [_mm512_setzero_ps(); W];
            let mut lo = [_mm512_setzero_si512(); W];
            let mut hi = [_mm512_setzero_si512(); W];
            for k in 0..W {
                let b = w[k].as_ptr().add(4 * i * 18);
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(super::PREFETCH_AHEAD) as *const i8);
                let scale = |k: usize| std::ptr::read_unaligned(b.add(k * 18) as *const u16) as u64;
                let packed = scale(0) | scale(1) << 16 | scale(2) << 32 | scale(3) << 48;
                let dw = _mm_cvtph_ps(vmovq(packed));
                dw_x[k] = dw;
                if W > 1 {
                    dw_spread[k] = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(dw));
                }
                let dw4 = _mm512_broadcast_f32x4(dw);
                offsets[k][0] = _mm512_fmadd_ps(
                    dw4,
                    _mm512_loadu_ps(d_sum4[0].as_ptr().add(i) as *const f32),
                    offsets[k][0],
                );
                if R > 4 {
                    offsets[k][1] = _mm512_fmadd_ps(
                        dw4,
                        _mm512_loadu_ps(d_sum4[1].as_ptr().add(i) as *const f32),
                        offsets[k][1],
                    );
                }
                (lo[k], hi[k]) = nibble_quad(b);
            }
            for r in 0..R {
                let q = quads[r].as_ptr().add(i);
                let x_lo = _mm512_load_si512((*q).qs.as_ptr() as *const __m512i);
                let x_hi = _mm512_load_si512((*q).qs.as_ptr().add(64) as *const __m512i);
                let dx = if W > 1 {
                    _mm512_loadu_ps(d16[r].as_ptr().add(i) as *const f32)
                } else {
                    _mm512_setzero_ps()
                };
                for k in 0..W {
                    let sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[k], x_lo);
                    let sums = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(sums, hi[k], x_hi));
                    // The same products either way: with one weight row, the row's
                    // four scales from `d` and a shuffle, which keeps the bytes read
                    // per row small (batched decode's rows stay in L1).
                    let ds = if W > 1 {
                        _mm512_mul_ps(dw_spread[k], dx)
                    } else {
                        let ds = _mm_mul_ps(dw_x[k], _mm_loadu_ps(d[r].as_ptr().add(4 * i)));
                        _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(ds))
                    };
                    acc[k][r] = _mm512_fmadd_ps(ds, sums, acc[k][r]);
                }
            }
        }
        let mut out = [[0f32; R]; W];
        for k in 0..W {
            for r in 0..R {
                let (acc_a, acc_b) = (
                    _mm512_castps512_ps256(acc[k][r]),
                    // The upper half, moved as doubles: `_mm512_extractf32x8_ps` needs
                    // AVX-512 DQ, which this function does not enable, so it would not
                    // be inlined.
                    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc[k][r]))),
                );
                let group = offsets[k][r / 4];
                let offset = match r % 4 {
                    0 => _mm512_castps512_ps128(group),
                    1 => _mm512_extractf32x4_ps::<1>(group),
                    2 => _mm512_extractf32x4_ps::<2>(group),
                    _ => _mm512_extractf32x4_ps::<3>(group),
                };
                out[k][r] = q4_0_finish::<false>(w[k], x[r], d[r], d_sum[r], acc_a, acc_b, offset);
            }
        }
        out
    }

    /// One Q4_1 weight row · one activation row, in ggml's order.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C, and `w` holds `x.len()` Q4_1 blocks.
    #[inline(always)]
    pub unsafe fn dot_q4_1<const V: bool>(w: &[u8], x: &[BlockQ8]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut offset = 0f32;
        let p = w.as_ptr();
        for (i, xb) in x.iter().enumerate() {
            let b = p.add(i * 20);
            if i % 2 == 0 {
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(super::PREFETCH_AHEAD) as *const i8);
            }
            let d = _mm256_set1_ps(f16(b) * xb.d);
            offset += f16(b.add(2)) * xb.s;
            let qw = nibbles(b.add(4));
            let qx = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
            acc = _mm256_fmadd_ps(d, unsigned_mul_sum::<V>(qw, qx), acc);
        }
        hsum(acc) + offset
    }

    /// The 32 fifth bits at `p` (a little-endian u32) as bytes of 0xFF (bit set) or 0,
    /// in element order (ggml's `bytes_from_bits_32`).
    #[inline(always)]
    unsafe fn bytes_from_bits(p: *const u8) -> __m256i {
        let bits = std::ptr::read_unaligned(p as *const i32);
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(bits),
            _mm256_set_epi64x(
                0x0303030303030303,
                0x0202020202020202,
                0x0101010101010101,
                0,
            ),
        );
        let others = _mm256_or_si256(spread, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
        _mm256_cmpeq_epi8(others, _mm256_set1_epi64x(-1))
    }

    /// A Q5_0 block's 32 weights `q - 16` as signed bytes: the nibble where the fifth
    /// bit is set, the nibble - 16 (high nibble all ones) where it is clear.
    #[inline(always)]
    unsafe fn q5_0_values(b: *const u8) -> __m256i {
        let high = _mm256_andnot_si256(bytes_from_bits(b.add(2)), _mm256_set1_epi8(0xF0u8 as i8));
        _mm256_or_si256(nibbles(b.add(6)), high)
    }

    /// A Q5_1 block's 32 unsigned five-bit weights.
    #[inline(always)]
    unsafe fn q5_1_values(b: *const u8) -> __m256i {
        let high = _mm256_and_si256(bytes_from_bits(b.add(4)), _mm256_set1_epi8(0x10));
        _mm256_or_si256(nibbles(b.add(8)), high)
    }

    /// ggml's `ggml_vec_dot_q5_0_q8_0`: one accumulator, as [`dot_q8_0`].
    #[inline(always)]
    pub unsafe fn dot_q5_0<const V: bool>(w: &[u8], x: &[BlockQ8]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let p = w.as_ptr();
        for (i, xb) in x.iter().enumerate() {
            let b = p.add(i * 22);
            if i % 2 == 0 {
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(super::PREFETCH_AHEAD) as *const i8);
            }
            let d = _mm256_set1_ps(f16(b) * xb.d);
            let qx = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
            acc = _mm256_fmadd_ps(d, mul_sum_i8::<V>(q5_0_values(b), qx), acc);
        }
        hsum(acc)
    }

    /// ggml's `ggml_vec_dot_q5_1_q8_1`: as [`dot_q4_1`] with a fifth bit.
    #[inline(always)]
    pub unsafe fn dot_q5_1<const V: bool>(w: &[u8], x: &[BlockQ8]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut offset = 0f32;
        let p = w.as_ptr();
        for (i, xb) in x.iter().enumerate() {
            let b = p.add(i * 24);
            if i % 2 == 0 {
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(super::PREFETCH_AHEAD) as *const i8);
            }
            let d = _mm256_set1_ps(f16(b) * xb.d);
            offset += f16(b.add(2)) * xb.s;
            let qx = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
            acc = _mm256_fmadd_ps(d, unsigned_mul_sum::<V>(q5_1_values(b), qx), acc);
        }
        hsum(acc) + offset
    }

    /// One Q8_0 weight row · one activation row, in ggml's order.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C, and `w` holds `x.len()` Q8_0 blocks.
    #[inline(always)]
    pub unsafe fn dot_q8_0<const V: bool>(w: &[u8], x: &[BlockQ8]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let p = w.as_ptr();
        for (i, xb) in x.iter().enumerate() {
            let b = p.add(i * 34);
            if i % 2 == 0 {
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(super::PREFETCH_AHEAD) as *const i8);
            }
            let d = _mm256_set1_ps(f16(b) * xb.d);
            let qw = _mm256_loadu_si256(b.add(2) as *const __m256i);
            let qx = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
            acc = _mm256_fmadd_ps(d, mul_sum_i8::<V>(qw, qx), acc);
        }
        hsum(acc)
    }
}

/// How many activation rows share one pass over a Q4_0 weight row ([`x86::dot_q4_0_rows`]
/// keeps two accumulators per row, so more rows would not fit the 16 vector registers).
const Q4_0_ROWS: usize = 4;

/// [`Q4_0_ROWS`] for the AVX-512 kernel ([`x86::q4_0_rows_avx512`]: one accumulator
/// per row, 32 registers).
const Q4_0_WIDE_ROWS: usize = 8;

/// The quantized activations of four consecutive blocks laid out for the AVX-512
/// Q4_0 kernel: elements 0..16 of each block, block after block, then elements
/// 16..32 (the order in which four blocks' nibbles unpack).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Q4Quad {
    qs: [i8; 4 * QK],
}

/// Sixteen floats on a cache line of their own, so that the AVX-512 kernel reads them
/// with one load that never spans two lines.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Lanes16([f32; 16]);

/// The activations of a Q4_0 product as the AVX-512 kernel reads them.
pub(crate) struct Q4Acts {
    /// Each row's blocks as [`Q4Quad`]s, one per four blocks (a row's last `nb % 4`
    /// blocks have none), row after row.
    quads: Vec<Q4Quad>,
    /// For each quad, its four blocks' scales `d`, each over the four lanes that hold
    /// the block's sums, so that the kernel multiplies them by the weight scales with
    /// one instruction and no shuffle.
    d16: Vec<Lanes16>,
    /// Per group of four rows (`4g..4g + 4`, zero past the last row) and per quad:
    /// the four rows' `d * sum` of the quad's four blocks, row after row, so that one
    /// 512-bit FMA adds four rows' Q4_0 offsets.
    d_sum4: Vec<Lanes16>,
    per_row: usize,
}

impl Q4Acts {
    /// Lays out `x` (rows of `nb` blocks) and its `d_sum` ([`BlockScales`]).
    fn new(x: &[BlockQ8], d_sum: &[f32], nb: usize) -> Self {
        let per_row = nb / 4;
        let m = x.len().checked_div(nb).unwrap_or(0);
        let mut quads = Vec::with_capacity(m * per_row);
        let mut d16 = Vec::with_capacity(m * per_row);
        for row in x.chunks_exact(nb) {
            for quad in row.chunks_exact(4) {
                let mut q = Q4Quad { qs: [0; 4 * QK] };
                let mut d = [0f32; 16];
                for (k, block) in quad.iter().enumerate() {
                    q.qs[16 * k..16 * k + 16].copy_from_slice(&block.qs[..16]);
                    q.qs[64 + 16 * k..64 + 16 * k + 16].copy_from_slice(&block.qs[16..]);
                    d[4 * k..4 * k + 4].fill(block.d);
                }
                quads.push(q);
                d16.push(Lanes16(d));
            }
        }
        let groups = m.div_ceil(4);
        let mut d_sum4 = vec![Lanes16([0f32; 16]); groups * per_row];
        for (g, group) in d_sum4.chunks_exact_mut(per_row.max(1)).enumerate() {
            for (i, lanes) in group.iter_mut().enumerate().take(per_row) {
                for q in 0..4 {
                    let r = 4 * g + q;
                    if r < m {
                        let at = r * nb + 4 * i;
                        lanes.0[4 * q..4 * q + 4].copy_from_slice(&d_sum[at..at + 4]);
                    }
                }
            }
        }
        Q4Acts {
            quads,
            d16,
            d_sum4,
            per_row,
        }
    }

    /// Row `r`'s quads.
    fn quads(&self, r: usize) -> &[Q4Quad] {
        &self.quads[r * self.per_row..(r + 1) * self.per_row]
    }

    /// Row `r`'s [`Q4Acts::d16`].
    fn d16(&self, r: usize) -> &[Lanes16] {
        &self.d16[r * self.per_row..(r + 1) * self.per_row]
    }

    /// The [`Q4Acts::d_sum4`] of the group of rows `4g..4g + 4`.
    fn d_sum4(&self, g: usize) -> &[Lanes16] {
        &self.d_sum4[g * self.per_row..(g + 1) * self.per_row]
    }
}

/// One activation row of a Q4_0 product: its blocks and their [`BlockScales`].
#[cfg(target_arch = "x86_64")]
type Q4Row<'a> = (&'a [BlockQ8], &'a [f32], &'a [f32]);

/// `W` Q4_0 weight rows `w` against activation rows `r0..r0 + R` (`row(r)` gives a
/// row); `dst(k, r, value)` takes each cell's result (`k`: which weight row). With
/// `wide` (the rows' [`Q4Acts`]; `r0` a multiple of four) on the 512-bit kernel, else
/// on the AVX2 one (with AVX-VNNI if `vnni`), one weight row at a time.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn q4_0_group<'a, const W: usize, const R: usize>(
    w: [&[u8]; W],
    r0: usize,
    row: &dyn Fn(usize) -> Q4Row<'a>,
    wide: Option<&Q4Acts>,
    vnni: bool,
    dst: &mut dyn FnMut(usize, usize, f32),
) {
    let rows: [_; R] = std::array::from_fn(|i| row(r0 + i));
    let (x, d, d_sum) = (rows.map(|r| r.0), rows.map(|r| r.1), rows.map(|r| r.2));
    // SAFETY: only called when has_avx2() (and has_vnni() for `vnni`,
    // kquants::has_avx512() for `wide`) found the features; every row has as many
    // blocks as the weight rows (asserted by `matmul`) and, for `wide`, its quads and
    // its group's offsets (built by `Q4Acts::new` from the same rows).
    let v: [[f32; R]; W] = unsafe {
        if let Some(acts) = wide {
            debug_assert_eq!(r0 % 4, 0);
            let g = r0 / 4;
            let d_sum4 = [acts.d_sum4(g), if R > 4 { acts.d_sum4(g + 1) } else { &[] }];
            let quads = std::array::from_fn(|i| acts.quads(r0 + i));
            let d16 = std::array::from_fn(|i| acts.d16(r0 + i));
            x86::q4_0_rows_avx512::<W, R>(w, quads, d16, d_sum4, x, d, d_sum)
        } else if vnni {
            w.map(|w| x86::q4_0_rows_vnni::<R>(w, x, d, d_sum))
        } else {
            w.map(|w| x86::q4_0_rows::<R>(w, x, d, d_sum))
        }
    };
    for (k, v) in v.into_iter().enumerate() {
        for (i, v) in v.into_iter().enumerate() {
            dst(k, r0 + i, v);
        }
    }
}

/// `W` weight rows `w` against activation rows `rows`, in groups that share one
/// unpacking of each weight block: of [`Q4_0_WIDE_ROWS`] on AVX-512, of
/// [`Q4_0_ROWS`] else. The weight rows are read from memory once and stay in L1 for
/// the later groups.
#[cfg(target_arch = "x86_64")]
fn q4_0_all_rows<'a, const W: usize>(
    w: [&[u8]; W],
    rows: std::ops::Range<usize>,
    row: &dyn Fn(usize) -> Q4Row<'a>,
    wide: Option<&Q4Acts>,
    vnni: bool,
    dst: &mut dyn FnMut(usize, usize, f32),
) {
    let (mut r0, m) = (rows.start, rows.end);
    if wide.is_some() {
        while r0 < m {
            match m - r0 {
                1 => q4_0_group::<W, 1>(w, r0, row, wide, vnni, dst),
                2 => q4_0_group::<W, 2>(w, r0, row, wide, vnni, dst),
                3 => q4_0_group::<W, 3>(w, r0, row, wide, vnni, dst),
                4 => q4_0_group::<W, 4>(w, r0, row, wide, vnni, dst),
                5 => q4_0_group::<W, 5>(w, r0, row, wide, vnni, dst),
                6 => q4_0_group::<W, 6>(w, r0, row, wide, vnni, dst),
                7 => q4_0_group::<W, 7>(w, r0, row, wide, vnni, dst),
                _ => q4_0_group::<W, Q4_0_WIDE_ROWS>(w, r0, row, wide, vnni, dst),
            }
            r0 += Q4_0_WIDE_ROWS;
        }
        return;
    }
    while r0 < m {
        match m - r0 {
            1 => q4_0_group::<W, 1>(w, r0, row, None, vnni, dst),
            2 => q4_0_group::<W, 2>(w, r0, row, None, vnni, dst),
            3 => q4_0_group::<W, 3>(w, r0, row, None, vnni, dst),
            _ => q4_0_group::<W, Q4_0_ROWS>(w, r0, row, None, vnni, dst),
        }
        r0 += Q4_0_ROWS;
    }
}

/// The number of activation rows from which the AVX-512 Q4_0 product runs two
/// weight rows at a time (measured on the 1B shapes: slower at 2 and 4 rows, faster
/// at 8 and more).
const PAIRED_ROWS_FROM: usize = 8;

/// Bytes of weight rows that a prompt product sweeps for each tile of activation
/// rows ([`ACT_TILE_BYTES`]): the band stays in L2 while every tile passes over it.
const BAND_BYTES: usize = 192 * 1024;

/// Bytes of prepared activations (blocks, scales and AVX-512 quads) in one tile of
/// activation rows of a prompt product: with the weight band, well inside a core's L2
/// (2 MiB here, 1 MiB on many CPUs), so that each weight row's pass over the tile reads
/// it from L2 rather than from L3 or memory. A prompt of 512 rows at 8192 columns holds
/// about 25 MiB of activations.
const ACT_TILE_BYTES: usize = 384 * 1024;

/// The prepared bytes of one activation row of `nb` blocks: the blocks, their two
/// scales and their share of the [`Q4Acts`].
fn q8_row_bytes(nb: usize) -> usize {
    nb * (std::mem::size_of::<BlockQ8>() + 8 + std::mem::size_of::<Q4Quad>() / 4 + 16 + 4)
}

/// The activation row ranges of a prompt product of `m` rows of `row_bytes` (as
/// prepared for the kernels) each: tiles of about [`ACT_TILE_BYTES`], whole multiples
/// of `group` rows (the kernels' register tile) so that only the last tile has a
/// partial group.
pub(crate) fn act_tiles(
    m: usize,
    row_bytes: usize,
    group: usize,
) -> impl Iterator<Item = std::ops::Range<usize>> {
    let rows = (ACT_TILE_BYTES / row_bytes.max(1)).max(group) / group * group;
    (0..m).step_by(rows).map(move |r0| r0..(r0 + rows).min(m))
}

/// The bands of weight rows of `start..end` (rows of `row_bytes`) for
/// [`BAND_BYTES`].
pub(crate) fn weight_bands(
    start: usize,
    end: usize,
    row_bytes: usize,
) -> impl Iterator<Item = std::ops::Range<usize>> {
    let band = (BAND_BYTES / row_bytes.max(1)).max(1);
    (start..end)
        .step_by(band)
        .map(move |b0| b0..(b0 + band).min(end))
}

/// The results of one tile of activation rows against one band of weight rows,
/// gathered before they go to the output row by row. Written straight into the
/// output, a column of cells is a column of a wide matrix: rows a multiple of 32 KiB
/// apart (gate/up's 8192 floats) fall into the same few cache sets, and a tile of
/// them evicts itself from L1 and L2.
#[derive(Default)]
pub(crate) struct TileCells {
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    cells: Vec<f32>,
}

impl TileCells {
    /// Begins the tile of `rows` x `cols`.
    pub(crate) fn start(&mut self, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) {
        self.cells.clear();
        self.cells.resize(rows.len() * cols.len(), 0.0);
        (self.rows, self.cols) = (rows, cols);
    }

    #[inline(always)]
    pub(crate) fn put(&mut self, r: usize, j: usize, v: f32) {
        let at = (r - self.rows.start) * self.cols.len() + (j - self.cols.start);
        self.cells[at] = v;
    }

    /// Copies the tile into `out` (rows of `n` floats).
    ///
    /// # Safety
    /// `out` is valid for writing the tile's cells (rows `self.rows`, columns
    /// `self.cols`, all below `n`), and nothing else accesses them meanwhile.
    pub(crate) unsafe fn copy_to(&self, out: *mut f32, n: usize) {
        let width = self.cols.len();
        for (i, r) in self.rows.clone().enumerate() {
            std::ptr::copy_nonoverlapping(
                self.cells.as_ptr().add(i * width),
                out.add(r * n + self.cols.start),
                width,
            );
        }
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
// SAFETY: the pointer is only written through, by workers that write disjoint
// (row, column) cells of an output that outlives them; see `matmul`.
unsafe impl Send for OutPtr {}
// SAFETY: as for `Send`: no two workers touch the same cell.
unsafe impl Sync for OutPtr {}

/// Runs all `jobs` (which share the same input activations `x`, `m` rows) in one
/// parallel pass over `team`.
pub fn matmul(team: &Team, x: &[BlockQ8], m: usize, jobs: &mut [MatmulJob<'_, '_>]) {
    matmul_with(team, x, m, jobs, crate::kquants::has_avx512());
}

/// [`matmul`], on the AVX-512 Q4_0 kernel only if `avx512` (and the CPU has it), so
/// that tests cover the 256-bit kernels on any CPU.
fn matmul_with(team: &Team, x: &[BlockQ8], m: usize, jobs: &mut [MatmulJob<'_, '_>], avx512: bool) {
    let avx2 = has_avx2();
    let vnni = has_vnni();
    // Work items: (job, first weight row, end weight row).
    let threads = team.threads();
    let total_rows: usize = jobs.iter().map(|j| j.weight.rows).sum();
    // Enough chunks for load balance, few enough that each is worth a task.
    let chunk = (total_rows / (threads * 8))
        .clamp(16, 1024)
        .next_multiple_of(4);
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
    let avx2_tiles = avx2 && cfg!(target_arch = "x86_64") && m > 1;
    let nb = x.len().checked_div(m).unwrap_or(0);
    let q4_0 = jobs
        .iter()
        .filter(|j| j.weight.format == WeightFormat::Q4_0)
        .count();
    let tiles: Vec<RowTile<'_>> = if avx2_tiles && q4_0 < jobs.len() {
        (0..m)
            .step_by(ROW_TILE)
            .map(|r0| RowTile::new(x, r0, m, nb))
            .collect()
    } else {
        Vec::new()
    };
    let scales = if avx2_tiles && q4_0 == 0 {
        BlockScales::new(&[])
    } else {
        BlockScales::new(x)
    };
    let avx512 = avx512 && avx2_tiles && q4_0 > 0 && crate::kquants::has_avx512();
    let wide = avx512.then(|| Q4Acts::new(x, &scales.d_sum, nb));
    team.run(items.len(), &|item, _| {
        let (ji, start, end) = items[item];
        let w = &jobs[ji].weight;
        let n = w.rows;
        let out = outs[ji];
        // Each weight row is used for a whole tile of activation rows while it is in
        // L1, and its band of rows stays in L2 for the later tiles: the item's rows
        // are read from memory once, and the activations from L2, whatever m.
        #[cfg(target_arch = "x86_64")]
        if avx2_tiles && w.format == WeightFormat::Q4_0 {
            let row = |r: usize| {
                (
                    &x[r * nb..(r + 1) * nb],
                    &scales.d[r * nb..(r + 1) * nb],
                    &scales.d_sum[r * nb..(r + 1) * nb],
                )
            };
            // A band of weight rows is swept once per tile of activation rows, both
            // in L2; every cell is the same call on the same data whatever the order.
            let group = if avx512 { Q4_0_WIDE_ROWS } else { Q4_0_ROWS };
            let mut cells = TileCells::default();
            for band in weight_bands(start, end, w.row_bytes()) {
                for rows in act_tiles(m, q8_row_bytes(nb), group) {
                    cells.start(rows.clone(), band.clone());
                    // On AVX-512 two weight rows share each load of the activations
                    // once there are enough rows for the product to be bound by those
                    // loads; with fewer (batched decode) it is bound by reading the
                    // weights, which one row at a time streams faster.
                    let pairs = wide.is_some() && m >= PAIRED_ROWS_FROM;
                    let mut j = band.start;
                    while pairs && j + 2 <= band.end {
                        let pair = [w.row(j), w.row(j + 1)];
                        let put = &mut |k, r, v| cells.put(r, j + k, v);
                        q4_0_all_rows(pair, rows.clone(), &row, wide.as_ref(), vnni, put);
                        j += 2;
                    }
                    for j in j..band.end {
                        let put = &mut |_, r, v| cells.put(r, j, v);
                        q4_0_all_rows([w.row(j)], rows.clone(), &row, wide.as_ref(), vnni, put);
                    }
                    // SAFETY: the cells are those of rows < m and columns of this
                    // item's band, which no other item writes; out has m * n elements
                    // (asserted above).
                    unsafe { cells.copy_to(out.0, n) };
                }
            }
            return;
        }
        if avx2_tiles {
            #[cfg(target_arch = "x86_64")]
            let mut cells = TileCells::default();
            for band in weight_bands(start, end, w.row_bytes()) {
                for tiles_range in act_tiles(tiles.len(), q8_row_bytes(nb) * ROW_TILE, 1) {
                    let rows = tiles_range.start * ROW_TILE..(tiles_range.end * ROW_TILE).min(m);
                    cells.start(rows, band.clone());
                    for j in band.clone() {
                        for t in tiles_range.clone() {
                            let tile = &tiles[t];
                            // SAFETY: AVX2 was detected; the tile holds ROW_TILE rows of nb
                            // blocks and the weight row nb blocks (QMatrix::new, asserts above).
                            let v = unsafe {
                                if vnni {
                                    x86::dot_tile_vnni(w.format, w.row(j), tile)
                                } else {
                                    x86::dot_tile(w.format, w.row(j), tile)
                                }
                            };
                            for (i, v) in v.into_iter().take(tile.rows).enumerate() {
                                cells.put(t * ROW_TILE + i, j, v);
                            }
                        }
                    }
                    // SAFETY: as in the Q4_0 branch above.
                    unsafe { cells.copy_to(out.0, n) };
                }
            }
            return;
        }
        for r in 0..m {
            let (d, d_sum) = (
                &scales.d[r * nb..(r + 1) * nb],
                &scales.d_sum[r * nb..(r + 1) * nb],
            );
            dot_rows(
                w,
                start..end,
                &x[r * nb..(r + 1) * nb],
                d,
                d_sum,
                avx2,
                &mut |j, v| {
                    // SAFETY: cell (r, j) belongs to this item only; r < m and j < n,
                    // and out has m * n elements (asserted above).
                    unsafe { *out.0.add(r * n + j) = v };
                },
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random generator for test data.
    fn lcg(seed: &mut u64) -> u32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
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
            if matches!(format, WeightFormat::Q4_1 | WeightFormat::Q5_1) {
                let m = half::f16::from_f32(-0.01 * (lcg(seed) % 10) as f32);
                b[2..4].copy_from_slice(&m.to_bits().to_le_bytes());
            }
        }
        data
    }

    #[test]
    fn kernels_match_float_reference() {
        let mut seed = 42;
        // m = 15: a full and a padded tile of prompt rows; m = 1: the decode kernels,
        // with 8 blocks per row (whole groups of four), 18 (two left over) and 3 (none
        // whole).
        for (format, (rows, cols, m)) in [
            WeightFormat::Q4_0,
            WeightFormat::Q4_1,
            WeightFormat::Q8_0,
            WeightFormat::Q5_0,
            WeightFormat::Q5_1,
        ]
        .into_iter()
        .flat_map(|f| {
            [(37, 256, 15), (37, 256, 1), (19, 576, 1), (23, 96, 1)].map(|shape| (f, shape))
        }) {
            let data = random_matrix(format, rows, cols, &mut seed);
            let w = QMatrix::new(format, rows, cols, &data).unwrap();
            let x: Vec<f32> = (0..m * cols)
                .map(|_| (lcg(&mut seed) % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let mut xq = Vec::new();
            quantize_rows(&x, cols, &mut xq);
            let mut out = vec![0f32; m * rows];
            matmul(
                &Team::new(2),
                &xq,
                m,
                &mut [MatmulJob {
                    weight: w,
                    out: &mut out,
                }],
            );
            let mut wrow = vec![0f32; cols];
            for j in 0..rows {
                w.dequantize_row(j, &mut wrow);
                for r in 0..m {
                    let exact: f32 = wrow
                        .iter()
                        .zip(&x[r * cols..(r + 1) * cols])
                        .map(|(a, b)| a * b)
                        .sum();
                    let scale: f32 = wrow.iter().map(|v| v.abs()).sum::<f32>() / 64.0 + 1e-3;
                    let got = out[r * rows + j];
                    assert!(
                        (got - exact).abs() < scale,
                        "{format:?} ({r},{j}): {got} vs {exact}"
                    );
                    let scalar =
                        dot_scalar(format, w.row(j), &xq[r * cols / QK..(r + 1) * cols / QK]);
                    assert!(
                        (got - scalar).abs() <= 1e-4 * (1.0 + scalar.abs()),
                        "{format:?} simd {got} vs scalar {scalar}"
                    );
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vnni_products_are_bit_identical_to_avx2() {
        if !has_vnni() {
            eprintln!("skipped: this CPU has no AVX-VNNI");
            return;
        }
        let mut seed = 77;
        let (cols, m) = (576, 8);
        for format in [
            WeightFormat::Q4_0,
            WeightFormat::Q4_1,
            WeightFormat::Q8_0,
            WeightFormat::Q5_0,
            WeightFormat::Q5_1,
        ] {
            let mut data = random_matrix(format, 1, cols, &mut seed);
            if format == WeightFormat::Q8_0 {
                // The extreme weight: -128 times the extreme activations.
                data[2..6].fill(0x80);
            }
            let w = QMatrix::new(format, 1, cols, &data).unwrap();
            let mut x: Vec<f32> = (0..m * cols)
                .map(|_| (lcg(&mut seed) % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            x[0] = -1.5;
            x[1] = -1.5;
            let mut xq = Vec::new();
            quantize_rows(&x, cols, &mut xq);
            let nb = cols / QK;
            let scales = BlockScales::new(&xq);
            for r in 0..m {
                let (xr, d, ds) = (
                    &xq[r * nb..(r + 1) * nb],
                    &scales.d[r * nb..(r + 1) * nb],
                    &scales.d_sum[r * nb..(r + 1) * nb],
                );
                // SAFETY: AVX2, FMA, F16C and AVX-VNNI were detected; one weight row of
                // nb blocks against one activation row of nb blocks.
                let (plain, vnni) = unsafe {
                    (
                        x86::dot(format, w.row(0), xr, d, ds),
                        x86::dot_vnni(format, w.row(0), xr, d, ds),
                    )
                };
                assert_eq!(plain.to_bits(), vnni.to_bits(), "{format:?} row {r}");
            }
            let tile = RowTile::new(&xq, 0, m, nb);
            // SAFETY: as above; the tile holds ROW_TILE rows of nb blocks.
            let (plain, vnni) = unsafe {
                (
                    x86::dot_tile(format, w.row(0), &tile),
                    x86::dot_tile_vnni(format, w.row(0), &tile),
                )
            };
            assert_eq!(
                plain.map(f32::to_bits),
                vnni.map(f32::to_bits),
                "{format:?} tile"
            );
        }
    }

    /// The AVX-512 Q4_0 kernel gives every cell the bits of the 256-bit kernel alone
    /// (`x86::dot`, which decode of a single sequence runs), for one and two weight
    /// rows at a time, for every group size and with blocks left over after the last
    /// whole quad (18 blocks: two; 3: all).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_q4_0_rows_are_bit_identical_to_avx2() {
        if !crate::kquants::has_avx512() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        /// `W` weight rows (`w`, rows of `nb` blocks) against the first `R` rows of
        /// `xq` at once.
        fn check<const W: usize, const R: usize>(w: &[u8], xq: &[BlockQ8], nb: usize) {
            let scales = BlockScales::new(xq);
            let acts = Q4Acts::new(xq, &scales.d_sum, nb);
            let rows = |r: usize| r * nb..(r + 1) * nb;
            let weight = |k: usize| &w[k * nb * 18..(k + 1) * nb * 18];
            // SAFETY: has_avx512() found AVX2, FMA, F16C and AVX-512 F, BW and VNNI;
            // every weight row and every activation row hold nb blocks, and the quads
            // and offsets were built from those rows.
            let wide = unsafe {
                x86::q4_0_rows_avx512::<W, R>(
                    std::array::from_fn(weight),
                    std::array::from_fn(|r| acts.quads(r)),
                    std::array::from_fn(|r| acts.d16(r)),
                    [acts.d_sum4(0), if R > 4 { acts.d_sum4(1) } else { &[] }],
                    std::array::from_fn(|r| &xq[rows(r)]),
                    std::array::from_fn(|r| &scales.d[rows(r)]),
                    std::array::from_fn(|r| &scales.d_sum[rows(r)]),
                )
            };
            for (k, wide) in wide.into_iter().enumerate() {
                for (r, wide) in wide.into_iter().enumerate() {
                    // SAFETY: as above.
                    let alone = unsafe {
                        x86::dot(
                            WeightFormat::Q4_0,
                            weight(k),
                            &xq[rows(r)],
                            &scales.d[rows(r)],
                            &scales.d_sum[rows(r)],
                        )
                    };
                    assert_eq!(
                        wide.to_bits(),
                        alone.to_bits(),
                        "W={W} R={R} weight row {k}, row {r} of {nb} blocks"
                    );
                    let scalar = dot_scalar(WeightFormat::Q4_0, weight(k), &xq[rows(r)]);
                    assert!(
                        (wide - scalar).abs() <= 1e-4 * (1.0 + scalar.abs()),
                        "W={W} R={R} weight row {k}, row {r}: {wide} vs scalar {scalar}"
                    );
                }
            }
        }
        let mut seed = 101;
        for nb in [64, 18, 3] {
            let cols = nb * QK;
            let w = random_matrix(WeightFormat::Q4_0, 2, cols, &mut seed);
            let x: Vec<f32> = (0..8 * cols)
                .map(|_| (lcg(&mut seed) % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let mut xq = Vec::new();
            quantize_rows(&x, cols, &mut xq);
            check::<1, 1>(&w, &xq, nb);
            check::<1, 2>(&w, &xq, nb);
            check::<1, 3>(&w, &xq, nb);
            check::<1, 4>(&w, &xq, nb);
            check::<1, 5>(&w, &xq, nb);
            check::<1, 6>(&w, &xq, nb);
            check::<1, 7>(&w, &xq, nb);
            check::<1, 8>(&w, &xq, nb);
            check::<2, 1>(&w, &xq, nb);
            check::<2, 3>(&w, &xq, nb);
            check::<2, 4>(&w, &xq, nb);
            check::<2, 5>(&w, &xq, nb);
            check::<2, 8>(&w, &xq, nb);
        }
    }

    #[test]
    fn a_rows_result_does_not_depend_on_the_other_rows() {
        // A sequence's logits must not depend on which other sequences share its pass
        // nor on how its prompt was split: every row of a product gets the bits it gets
        // alone (m = 1, the decode kernels), whatever m and the rows around it.
        // With 8192 columns the 100-row products span several tiles of activation
        // rows.
        let mut seed = 31;
        for (format, (rows, cols, total)) in [
            WeightFormat::Q4_0,
            WeightFormat::Q4_1,
            WeightFormat::Q8_0,
            WeightFormat::Q5_0,
            WeightFormat::Q5_1,
        ]
        .into_iter()
        .flat_map(|f| [(21, 576, 64), (9, 8192, 100)].map(|shape| (f, shape)))
        {
            let data = random_matrix(format, rows, cols, &mut seed);
            let w = QMatrix::new(format, rows, cols, &data).unwrap();
            let x: Vec<f32> = (0..total * cols)
                .map(|_| (lcg(&mut seed) % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            for avx512 in [false, true] {
                let product = |x: &[f32]| {
                    let m = x.len() / cols;
                    let mut xq = Vec::new();
                    quantize_rows(x, cols, &mut xq);
                    let mut out = vec![0f32; m * rows];
                    let job = MatmulJob {
                        weight: w,
                        out: &mut out,
                    };
                    matmul_with(&Team::new(2), &xq, m, &mut [job], avx512);
                    out.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                };
                let alone: Vec<u32> = x.chunks(cols).flat_map(product).collect();
                for m in [2, 3, 5, 7, 8, 9, 13, 16, 64, total] {
                    let together: Vec<u32> = x.chunks(m * cols).flat_map(product).collect();
                    assert_eq!(
                        together, alone,
                        "{format:?}, {cols} columns, {m} rows at a time, AVX-512 allowed: \
                         {avx512}"
                    );
                }
            }
        }
    }

    #[test]
    fn dequantization_matches_candle() {
        use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType};
        let mut seed = 9;
        for (format, dtype) in [
            (WeightFormat::Q4_0, GgmlDType::Q4_0),
            (WeightFormat::Q4_1, GgmlDType::Q4_1),
            (WeightFormat::Q5_0, GgmlDType::Q5_0),
            (WeightFormat::Q5_1, GgmlDType::Q5_1),
            (WeightFormat::Q8_0, GgmlDType::Q8_0),
        ] {
            let (rows, cols) = (3, 96);
            let data = random_matrix(format, rows, cols, &mut seed);
            let cpu = candle_core::Device::Cpu;
            let t = qtensor_from_ggml(dtype, &data, vec![rows, cols], &cpu).unwrap();
            let reference: Vec<f32> = t
                .dequantize(&cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let w = QMatrix::new(format, rows, cols, &data).unwrap();
            let mut ours = vec![0f32; cols];
            for r in 0..rows {
                w.dequantize_row(r, &mut ours);
                assert_eq!(
                    ours,
                    reference[r * cols..(r + 1) * cols],
                    "{format:?} row {r}"
                );
            }
        }
    }

    #[test]
    fn simd_quantization_is_bit_identical_to_scalar() {
        if !has_avx2() {
            return;
        }
        let mut seed = 5;
        let mut blocks: Vec<Vec<f32>> = (0..200)
            .map(|k| {
                let scale = [1e-3f32, 0.5, 3.0, 1e4][k % 4];
                (0..QK)
                    .map(|_| ((lcg(&mut seed) % 20001) as f32 / 10000.0 - 1.0) * scale)
                    .collect()
            })
            .collect();
        // All zero, ties at .5 after scaling, one large value.
        blocks.push(vec![0.0; QK]);
        blocks.push((0..QK).map(|i| (i as f32 - 16.0) * 0.5).collect());
        blocks.push(
            (0..QK)
                .map(|i| if i == 7 { -127.0 } else { i as f32 + 0.5 })
                .collect(),
        );
        for src in &blocks {
            let (mut a, mut b) = (BlockQ8::default(), BlockQ8::default());
            quantize_block_scalar(src, &mut a);
            // SAFETY: AVX2, FMA and F16C were detected above; `src` is one block of QK floats.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                x86::quantize_block(src, &mut b)
            };
            assert_eq!(a.qs, b.qs, "{src:?}");
            assert_eq!(
                (a.d.to_bits(), a.s.to_bits(), a.sum.to_bits()),
                (b.d.to_bits(), b.s.to_bits(), b.sum.to_bits())
            );
        }
    }

    #[test]
    fn wrong_sizes_are_reported() {
        assert!(QMatrix::new(WeightFormat::Q8_0, 2, 33, &[0; 68]).is_err());
        let err = QMatrix::new(WeightFormat::Q4_0, 2, 32, &[0; 35]).unwrap_err();
        assert!(err.contains("needs 36 bytes"), "{err}");
    }
}
