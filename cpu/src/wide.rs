//! Matrix products for the weight formats outside the 32-weight block family of
//! [`super::kernels`]: the K-quants (super-blocks of 256, [`super::kquants`]) and
//! plain floats ([`super::floats`]).
//!
//! [`matmul`] runs several such products that share one input in one parallel pass,
//! as `kernels::matmul` does: the input rows are prepared once per form that the
//! weights need (Q8_K blocks for K-quants, f16- or bf16-rounded floats), work is split
//! over weight rows, and with several input rows (prefill) a band of weight rows is
//! swept once per tile of input rows (both held in L2, as in `kernels::matmul`), each
//! K-quant row unpacked once per group of [`kquants::ROW_TILE`] input rows
//! ([`kquants::WIDE_ROW_TILE`] on AVX-512).

use super::floats::{self, FloatFormat};
use super::kernels::{act_tiles, has_avx2, weight_bands, TileCells};
use super::kquants::{self, BlockQ8K, KFormat, QK_K};
use super::team::Team;

/// A weight format handled here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WideFormat {
    K(KFormat),
    Float(FloatFormat),
}

impl WideFormat {
    /// Bytes of one row of `cols` weights.
    pub const fn row_bytes(self, cols: usize) -> usize {
        match self {
            WideFormat::K(k) => cols / QK_K * k.block_bytes(),
            WideFormat::Float(f) => cols * f.bytes(),
        }
    }

    /// The number of weights a row's length must be a multiple of.
    pub const fn block_len(self) -> usize {
        match self {
            WideFormat::K(_) => QK_K,
            WideFormat::Float(_) => 1,
        }
    }
}

/// A weight matrix of `rows` x `cols` (rows are output features).
#[derive(Debug, Clone, Copy)]
pub struct WideMatrix<'a> {
    pub format: WideFormat,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl<'a> WideMatrix<'a> {
    /// Wraps `data`, checking that it holds exactly `rows` x `cols` weights.
    pub fn new(
        format: WideFormat,
        rows: usize,
        cols: usize,
        data: &'a [u8],
    ) -> Result<Self, String> {
        if !cols.is_multiple_of(format.block_len()) {
            return Err(format!(
                "{cols} columns are not a multiple of the block size {}",
                format.block_len()
            ));
        }
        let expected = rows * format.row_bytes(cols);
        if data.len() != expected {
            return Err(format!(
                "{rows}x{cols} {format:?} needs {expected} bytes, found {}",
                data.len()
            ));
        }
        Ok(WideMatrix {
            format,
            rows,
            cols,
            data,
        })
    }

    /// The raw bytes of weight row `r`.
    pub fn row(&self, r: usize) -> &'a [u8] {
        let n = self.format.row_bytes(self.cols);
        &self.data[r * n..(r + 1) * n]
    }

    /// Dequantizes weight row `r` into `out` (`cols` floats), e.g. for embeddings.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        match self.format {
            WideFormat::K(k) => kquants::dequantize_row(k, self.row(r), out),
            WideFormat::Float(f) => floats::dequantize_row(f, self.row(r), out),
        }
    }
}

/// One product of a [`matmul`] pass: `out` (`m` x `weight.rows`, row-major) = the
/// `m` input rows x weightᵀ.
pub struct WideJob<'w, 'o> {
    pub weight: WideMatrix<'w>,
    pub out: &'o mut [f32],
}

/// The input rows in each form the weights of a pass need (kept between passes so
/// the buffers are reused).
#[derive(Default)]
pub struct Activations {
    q8k: Vec<BlockQ8K>,
    /// The [`kquants::pair_blocks`] of each whole [`kquants::WIDE_ROW_TILE`] of rows,
    /// when the AVX-512 tiles run.
    pairs: Vec<kquants::PairBlock>,
    f16: Vec<f32>,
    bf16: Vec<f32>,
}

impl Activations {
    /// Prepares the forms `jobs` need from `x` (`m` rows of `cols`).
    /// `wide_tiles`: whether the K-quant rows run in [`kquants::WIDE_ROW_TILE`]s.
    fn prepare(&mut self, x: &[f32], cols: usize, jobs: &[WideJob<'_, '_>], wide_tiles: bool) {
        let needs = |f: &dyn Fn(WideFormat) -> bool| jobs.iter().any(|j| f(j.weight.format));
        if needs(&|f| matches!(f, WideFormat::K(_))) {
            debug_assert_eq!(cols % QK_K, 0);
            self.q8k.resize(x.len() / QK_K, BlockQ8K::default());
            kquants::quantize_row(x, &mut self.q8k);
        }
        self.pairs.clear();
        if wide_tiles {
            let blocks = cols / QK_K;
            let row = |r: usize| &self.q8k[r * blocks..(r + 1) * blocks];
            for tile in 0..x.len() / cols / kquants::WIDE_ROW_TILE {
                let first = tile * kquants::WIDE_ROW_TILE;
                kquants::pair_blocks(std::array::from_fn(|i| row(first + i)), &mut self.pairs);
            }
        }
        if needs(&|f| f == WideFormat::Float(FloatFormat::F16)) {
            floats::round_activations(FloatFormat::F16, x, &mut self.f16);
        }
        if needs(&|f| f == WideFormat::Float(FloatFormat::BF16)) {
            floats::round_activations(FloatFormat::BF16, x, &mut self.bf16);
        }
    }
}

/// A raw output pointer shared by workers that write disjoint elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: workers write disjoint (row, column) cells; see `matmul_with`.
unsafe impl Send for OutPtr {}
// SAFETY: as for `Send`: no two workers touch the same cell.
unsafe impl Sync for OutPtr {}

/// Runs all `jobs`, which share the input `x` (`m` rows of `cols` floats), in one
/// parallel pass over `team`.
pub fn matmul(
    team: &Team,
    x: &[f32],
    cols: usize,
    m: usize,
    acts: &mut Activations,
    jobs: &mut [WideJob<'_, '_>],
) {
    matmul_with(team, x, cols, m, acts, jobs, has_avx2());
}

/// [`matmul`] on the AVX2 kernels when `avx2` (only if [`has_avx2`]), else on the
/// portable ones.
pub(crate) fn matmul_with(
    team: &Team,
    x: &[f32],
    cols: usize,
    m: usize,
    acts: &mut Activations,
    jobs: &mut [WideJob<'_, '_>],
    avx2: bool,
) {
    let avx2 = avx2 && has_avx2();
    assert_eq!(x.len(), m * cols, "matmul input size");
    let wide_format = |f: WideFormat| matches!(f, WideFormat::K(k) if kquants::has_wide_tile(k));
    let wide_tiles =
        avx2 && m >= kquants::WIDE_ROW_TILE && jobs.iter().any(|j| wide_format(j.weight.format));
    acts.prepare(x, cols, jobs, wide_tiles);
    let acts = &*acts;
    let threads = team.threads();
    let total_rows: usize = jobs.iter().map(|j| j.weight.rows).sum();
    // Enough chunks for load balance, few enough that each is worth a task.
    let chunk = (total_rows / (threads * 8)).clamp(4, 1024);
    let mut items = Vec::new();
    let mut outs = Vec::with_capacity(jobs.len());
    for (ji, job) in jobs.iter_mut().enumerate() {
        assert_eq!(job.out.len(), m * job.weight.rows, "matmul output size");
        assert_eq!(job.weight.cols, cols, "matmul input width");
        outs.push(OutPtr(job.out.as_mut_ptr()));
        let mut start = 0;
        while start < job.weight.rows {
            let end = (start + chunk).min(job.weight.rows);
            items.push((ji, start, end));
            start = end;
        }
    }
    let jobs: &[WideJob<'_, '_>] = jobs;
    let blocks = cols / QK_K;
    team.run(items.len(), &|item, _| {
        let (ji, start, end) = items[item];
        let w = &jobs[ji].weight;
        let n = w.rows;
        let out = outs[ji];
        let one_row = |r: usize, j: usize| match w.format {
            WideFormat::K(k) => {
                kquants::dot(k, w.row(j), &acts.q8k[r * blocks..(r + 1) * blocks], avx2)
            }
            WideFormat::Float(f) => {
                let input = match f {
                    FloatFormat::F16 => &acts.f16,
                    FloatFormat::BF16 => &acts.bf16,
                    FloatFormat::F32 => x,
                };
                floats::dot(f, w.row(j), &input[r * cols..(r + 1) * cols], avx2)
            }
        };
        // Prefill: a band of weight rows small enough to stay in L2 is swept once per
        // tile of activation rows, which stays in L2 too; each group of rows in the
        // tile shares one unpacking of a weight row. Every cell is the same call on
        // the same data as in decode order, and every row goes to the kernel it gets
        // when the rows are not tiled (the tiles are whole multiples of both groups),
        // so the order of the loops does not change any result.
        let row_bytes = match w.format {
            WideFormat::K(_) => blocks * (std::mem::size_of::<BlockQ8K>() + QK_K / 2),
            WideFormat::Float(_) => cols * 4,
        };
        const WIDE: usize = kquants::WIDE_ROW_TILE;
        let group = WIDE.max(kquants::ROW_TILE);
        let mut cells = TileCells::default();
        for band in weight_bands(start, end, w.format.row_bytes(cols)) {
            for rows in act_tiles(m, row_bytes, group) {
                cells.start(rows.clone(), band.clone());
                let mut first = rows.start;
                if let WideFormat::K(k) = w.format {
                    let act = |r: usize| &acts.q8k[r * blocks..(r + 1) * blocks];
                    while wide_tiles && kquants::has_wide_tile(k) && first + WIDE <= rows.end {
                        let x = std::array::from_fn(|i| act(first + i));
                        let pairs = &acts.pairs[first / 2 * blocks..(first + WIDE) / 2 * blocks];
                        for j in band.clone() {
                            let v = kquants::dot_rows_wide(k, w.row(j), x, pairs, avx2);
                            for (i, v) in v.into_iter().enumerate() {
                                cells.put(first + i, j, v);
                            }
                        }
                        first += WIDE;
                    }
                    while first + kquants::ROW_TILE <= rows.end {
                        let x = std::array::from_fn(|i| act(first + i));
                        for j in band.clone() {
                            let v = kquants::dot_rows(k, w.row(j), x, avx2);
                            for (i, v) in v.into_iter().enumerate() {
                                cells.put(first + i, j, v);
                            }
                        }
                        first += kquants::ROW_TILE;
                    }
                }
                for r in first..rows.end {
                    for j in band.clone() {
                        cells.put(r, j, one_row(r, j));
                    }
                }
                // SAFETY: the cells are those of rows < m and columns of this item's
                // band, which no other item writes; out has m * n elements (asserted
                // above).
                unsafe { cells.copy_to(out.0, n) };
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType};
    use candle_core::Device;

    /// A deterministic pseudo-random generator for test data.
    fn lcg(seed: &mut u64) -> u32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    fn uniform(seed: &mut u64) -> f32 {
        (lcg(seed) % 20001) as f32 / 10000.0 - 1.0
    }

    const FORMATS: [(WideFormat, GgmlDType); 6] = [
        (WideFormat::K(KFormat::Q4K), GgmlDType::Q4K),
        (WideFormat::K(KFormat::Q5K), GgmlDType::Q5K),
        (WideFormat::K(KFormat::Q6K), GgmlDType::Q6K),
        (WideFormat::Float(FloatFormat::F16), GgmlDType::F16),
        (WideFormat::Float(FloatFormat::BF16), GgmlDType::BF16),
        (WideFormat::Float(FloatFormat::F32), GgmlDType::F32),
    ];

    /// Random bytes for every quant and scale of a K-quant matrix, with small
    /// positive f16 super-block scales; random values in [-1, 1] for floats.
    fn random_matrix(format: WideFormat, rows: usize, cols: usize, seed: &mut u64) -> Vec<u8> {
        let scale = |seed: &mut u64| {
            half::f16::from_f32(0.0005 + (lcg(seed) % 100) as f32 * 2e-5).to_le_bytes()
        };
        match format {
            WideFormat::K(k) => {
                let mut data: Vec<u8> = (0..rows * format.row_bytes(cols))
                    .map(|_| lcg(seed) as u8)
                    .collect();
                for b in data.chunks_exact_mut(k.block_bytes()) {
                    match k {
                        KFormat::Q4K | KFormat::Q5K => {
                            b[0..2].copy_from_slice(&scale(seed));
                            b[2..4].copy_from_slice(&scale(seed));
                        }
                        KFormat::Q6K => b[208..210].copy_from_slice(&scale(seed)),
                    }
                }
                data
            }
            WideFormat::Float(f) => (0..rows * cols)
                .flat_map(|_| {
                    let v = uniform(seed);
                    match f {
                        FloatFormat::F16 => half::f16::from_f32(v).to_le_bytes().to_vec(),
                        FloatFormat::BF16 => half::bf16::from_f32(v).to_le_bytes().to_vec(),
                        FloatFormat::F32 => v.to_le_bytes().to_vec(),
                    }
                })
                .collect(),
        }
    }

    /// The matrix dequantized by candle (an independent implementation of the GGUF
    /// block layouts).
    fn candle_dequantize(dtype: GgmlDType, data: &[u8], rows: usize, cols: usize) -> Vec<f32> {
        let t = qtensor_from_ggml(dtype, data, vec![rows, cols], &Device::Cpu).unwrap();
        t.dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// The activations as the kernels see them: Q8_K-quantized for K-quants, rounded
    /// to f16/bf16 for those floats.
    fn effective_input(format: WideFormat, x: &[f32]) -> Vec<f32> {
        match format {
            WideFormat::K(_) => {
                let mut q = vec![BlockQ8K::default(); x.len() / QK_K];
                kquants::quantize_row(x, &mut q);
                q.iter()
                    .flat_map(|b| b.qs.map(|v| b.d * v as f32))
                    .collect()
            }
            WideFormat::Float(f) => {
                let mut out = Vec::new();
                floats::round_activations(f, x, &mut out);
                out
            }
        }
    }

    #[test]
    fn dequantization_matches_candle() {
        let mut seed = 3;
        for (format, dtype) in FORMATS {
            let (rows, cols) = (3, 768);
            let data = random_matrix(format, rows, cols, &mut seed);
            let w = WideMatrix::new(format, rows, cols, &data).unwrap();
            let reference = candle_dequantize(dtype, &data, rows, cols);
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
    fn kernels_match_f64_reference() {
        let mut seed = 11;
        let team = Team::new(2);
        // Rows of 1, 3 and 8 super-blocks; one input row (decode) and five (prefill).
        for (format, dtype) in FORMATS {
            for (rows, cols, m) in [(13, 256, 1), (7, 768, 5), (9, 2048, 1)] {
                let data = random_matrix(format, rows, cols, &mut seed);
                let w = WideMatrix::new(format, rows, cols, &data).unwrap();
                let weights = candle_dequantize(dtype, &data, rows, cols);
                let x: Vec<f32> = (0..m * cols).map(|_| uniform(&mut seed)).collect();
                for avx2 in [false, true] {
                    let mut out = vec![0f32; m * rows];
                    let mut acts = Activations::default();
                    let job = WideJob {
                        weight: w,
                        out: &mut out,
                    };
                    matmul_with(&team, &x, cols, m, &mut acts, &mut [job], avx2);
                    for r in 0..m {
                        let xr = &x[r * cols..(r + 1) * cols];
                        let xe = effective_input(format, xr);
                        for j in 0..rows {
                            let wr = &weights[j * cols..(j + 1) * cols];
                            let got = out[r * rows + j] as f64;
                            // Against the inputs the kernel multiplies: float rounding only.
                            let exact: f64 =
                                wr.iter().zip(&xe).map(|(&a, &b)| a as f64 * b as f64).sum();
                            let magnitude: f64 = wr
                                .iter()
                                .zip(&xe)
                                .map(|(&a, &b)| (a as f64 * b as f64).abs())
                                .sum();
                            assert!(
                                (got - exact).abs() <= 1e-5 * magnitude + 1e-6,
                                "{format:?} avx2={avx2} ({r},{j}): {got} vs {exact}"
                            );
                            // Against the unrounded input: within the activations'
                            // quantization step (half a step per value).
                            let truth: f64 =
                                wr.iter().zip(xr).map(|(&a, &b)| a as f64 * b as f64).sum();
                            let step = match format {
                                WideFormat::K(_) => xr
                                    .chunks(QK_K)
                                    .zip(wr.chunks(QK_K))
                                    .map(|(xb, wb)| {
                                        let amax =
                                            xb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                                        wb.iter().map(|w| w.abs() as f64).sum::<f64>() * amax
                                            / 254.0
                                    })
                                    .sum(),
                                WideFormat::Float(_) => magnitude / 256.0,
                            };
                            assert!(
                                (got - truth).abs() <= step * 1.001 + 1e-5 * magnitude + 1e-6,
                                "{format:?} avx2={avx2} ({r},{j}): {got} vs unquantized {truth}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Every row's product is the same bits whatever `m` (rows in the product) and
    /// whatever the other rows are, so a sequence's logits depend neither on the
    /// sequences that share its pass nor on how its prompt was chunked. The 8192
    /// columns make the 80-row product span several tiles of activation rows.
    #[test]
    fn rows_get_the_same_bits_whatever_m() {
        let mut seed = 23;
        let team = Team::new(2);
        for (rows, cols, total) in [(21, 768, 64), (9, 8192, 80)] {
            for (format, _) in FORMATS {
                let data = random_matrix(format, rows, cols, &mut seed);
                let w = WideMatrix::new(format, rows, cols, &data).unwrap();
                let x: Vec<f32> = (0..total * cols).map(|_| uniform(&mut seed)).collect();
                for avx2 in [false, has_avx2()] {
                    // Rows `first..first + m` of x as one product.
                    let product = |first: usize, m: usize| {
                        let mut out = vec![0f32; m * rows];
                        let job = WideJob {
                            weight: w,
                            out: &mut out,
                        };
                        let x = &x[first * cols..(first + m) * cols];
                        let mut acts = Activations::default();
                        matmul_with(&team, x, cols, m, &mut acts, &mut [job], avx2);
                        out.into_iter().map(f32::to_bits).collect::<Vec<_>>()
                    };
                    let all = product(0, total);
                    let last = total - 1;
                    for (first, m) in [
                        (0, 1),
                        (5, 1),
                        (last, 1),
                        (0, 7),
                        (3, 7),
                        (total - 7, 7),
                        (20, 30),
                    ] {
                        assert_eq!(
                            product(first, m),
                            all[first * rows..(first + m) * rows],
                            "{format:?} {cols} columns avx2={avx2}: rows {first}..{} alone vs \
                             in the {total}-row product",
                            first + m
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn row_tiles_give_the_single_row_bits() {
        // Prefill rows must get exactly what decode would give them, so that a prompt
        // token's logits do not depend on how many tokens came with it.
        let mut seed = 5;
        for (format, _) in &FORMATS[..3] {
            let WideFormat::K(k) = *format else {
                unreachable!()
            };
            let cols = 1024;
            let data = random_matrix(*format, 1, cols, &mut seed);
            let x: Vec<f32> = (0..kquants::ROW_TILE * cols)
                .map(|_| uniform(&mut seed))
                .collect();
            let mut q = vec![BlockQ8K::default(); x.len() / QK_K];
            kquants::quantize_row(&x, &mut q);
            let rows: [&[BlockQ8K]; kquants::ROW_TILE] =
                std::array::from_fn(|r| &q[r * cols / QK_K..(r + 1) * cols / QK_K]);
            for avx2 in [false, has_avx2()] {
                let tiled = kquants::dot_rows(k, &data, rows, avx2);
                let single = rows.map(|x| kquants::dot(k, &data, x, avx2));
                assert_eq!(
                    tiled.map(f32::to_bits),
                    single.map(f32::to_bits),
                    "{k:?} avx2={avx2}"
                );
            }
        }
    }

    #[test]
    fn q8k_quantization_rounds_as_ggml() {
        // The value of largest magnitude (-127) sets the scale to exactly -1 per step
        // (d = 1 / (-127 / -127)); ties go to even, as ggml's nearest_int; +127.4
        // would exceed amax, so the largest positive is +126.5 -> 126 (tie to even).
        let mut x = vec![0f32; QK_K];
        x[0] = -127.0;
        x[1] = 2.5;
        x[2] = 3.5;
        x[3] = -2.5;
        x[4] = 126.5;
        x[17] = 1.49;
        let mut q = [BlockQ8K::default()];
        kquants::quantize_row(&x, &mut q);
        assert_eq!(q[0].d, 1.0);
        assert_eq!(&q[0].qs[..5], &[-127, 2, 4, -2, 126]);
        assert_eq!(q[0].qs[17], 1);
        assert_eq!(q[0].bsums[0], -127 + 2 + 4 - 2 + 126);
        assert_eq!(q[0].bsums[1], 1);
        // A positive largest value flips every sign (the scale is negative).
        let mut q = [BlockQ8K::default()];
        kquants::quantize_row(&x.iter().map(|v| -v).collect::<Vec<_>>(), &mut q);
        assert_eq!(q[0].d, -1.0);
        assert_eq!(&q[0].qs[..3], &[-127, 2, 4]);
        // All zero: zero scale and sums.
        kquants::quantize_row(&[0.0; QK_K], &mut q);
        assert_eq!((q[0].d, q[0].qs, q[0].bsums), (0.0, [0; QK_K], [0; 16]));
    }

    #[test]
    fn wrong_sizes_are_reported() {
        let err = WideMatrix::new(WideFormat::K(KFormat::Q4K), 2, 576, &[0; 288]).unwrap_err();
        assert!(
            err.contains("not a multiple of the block size 256"),
            "{err}"
        );
        let err = WideMatrix::new(WideFormat::K(KFormat::Q6K), 2, 256, &[0; 400]).unwrap_err();
        assert!(err.contains("needs 420 bytes"), "{err}");
    }
}
