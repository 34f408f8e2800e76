//! The KV cache of the CPU engine: the keys and values of several sequences (slots),
//! so that one forward pass can run a step of each.
//!
//! Each slot has its own buffers per layer, laid out `[kv_head][position][head_dim]` in
//! f16 as llama.cpp's default cache is (see `f16_vec`), so that one head's keys for
//! positions `0..n` are one contiguous slice. A slot's buffers are allocated when it is
//! first used and grow geometrically up to the context length, so a server with many
//! slots but short conversations holds little memory. The cache is positional: a
//! position is written before it is read, and a sequence may be continued from any
//! position it holds (a cached prompt prefix), overwriting what follows.

use half::f16;

/// Keys and values of `slots` sequences of up to `context_length` positions each.
pub(crate) struct KvCache {
    kv_heads: usize,
    head_dim: usize,
    context_length: usize,
    slots: Vec<Slot>,
}

struct Slot {
    /// Per layer, `[kv_head][position][head_dim]`.
    k: Vec<Vec<f16>>,
    v: Vec<Vec<f16>>,
    /// Positions the buffers have room for.
    capacity: usize,
    /// Positions `0..len` hold the sequence's keys and values.
    len: usize,
}

impl KvCache {
    /// An empty cache of `slots` (at least 1) sequences; nothing is allocated yet.
    pub fn new(
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        context_length: usize,
        slots: usize,
    ) -> Self {
        let slot = || Slot {
            k: vec![Vec::new(); layers],
            v: vec![Vec::new(); layers],
            capacity: 0,
            len: 0,
        };
        KvCache {
            kv_heads,
            head_dim,
            context_length,
            slots: (0..slots.max(1)).map(|_| slot()).collect(),
        }
    }

    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// How many positions of `slot`'s sequence are held (the next one to compute).
    pub fn len(&self, slot: usize) -> usize {
        self.slots[slot].len
    }

    /// Records that `slot` holds positions `0..len` (after a pass wrote them).
    pub fn set_len(&mut self, slot: usize, len: usize) {
        debug_assert!(len <= self.slots[slot].capacity);
        self.slots[slot].len = len;
    }

    /// Forgets every sequence; the memory is kept for the next ones.
    pub fn clear(&mut self) {
        self.slots.iter_mut().for_each(|s| s.len = 0);
    }

    /// Grows `slot`'s buffers (geometrically, up to the context length) to hold
    /// `needed` positions, keeping what they hold.
    pub fn reserve(&mut self, slot: usize, needed: usize) {
        let (kv_heads, hd) = (self.kv_heads, self.head_dim);
        let s = &mut self.slots[slot];
        if needed <= s.capacity {
            return;
        }
        let new_cap = needed.max(s.capacity * 2).max(256).min(self.context_length);
        let old_cap = s.capacity;
        for cache in s.k.iter_mut().chain(s.v.iter_mut()) {
            let mut grown = vec![f16::ZERO; kv_heads * new_cap * hd];
            for h in 0..kv_heads {
                let old = &cache[h * old_cap * hd..(h + 1) * old_cap * hd];
                grown[h * new_cap * hd..h * new_cap * hd + old.len()].copy_from_slice(old);
            }
            *cache = grown;
        }
        s.capacity = new_cap;
    }

    /// Stores the keys and values of one token (`kv_heads * head_dim` each) at `pos`
    /// of `slot`, in `layer`, rounded to f16. The slot must have room ([`reserve`]).
    ///
    /// [`reserve`]: Self::reserve
    pub fn write(&mut self, layer: usize, slot: usize, pos: usize, k: &[f32], v: &[f32]) {
        let hd = self.head_dim;
        let s = &mut self.slots[slot];
        assert!(pos < s.capacity, "KV cache position {pos} not reserved");
        for (cache, src) in [(&mut s.k[layer], k), (&mut s.v[layer], v)] {
            for (h, head) in src.chunks_exact(hd).enumerate() {
                let dst = (h * s.capacity + pos) * hd;
                for (d, x) in cache[dst..dst + hd].iter_mut().zip(head) {
                    *d = f16::from_f32(*x);
                }
            }
        }
    }

    /// The keys and the values of `kv_head` at `positions` of `slot`, in `layer`.
    pub fn head(
        &self,
        layer: usize,
        slot: usize,
        kv_head: usize,
        positions: std::ops::Range<usize>,
    ) -> (&[f16], &[f16]) {
        let (s, hd) = (&self.slots[slot], self.head_dim);
        let base = kv_head * s.capacity;
        let range = (base + positions.start) * hd..(base + positions.end) * hd;
        (&s.k[layer][range.clone()], &s.v[layer][range])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_grow_independently_and_keep_what_they_hold() {
        let (layers, heads, hd) = (2, 2, 4);
        let mut kv = KvCache::new(layers, heads, hd, 1000, 3);
        assert_eq!(kv.slots(), 3);
        let token = |pos: usize, slot: usize| -> Vec<f32> {
            (0..heads * hd)
                .map(|i| (pos * 100 + slot * 10 + i) as f32)
                .collect()
        };
        kv.reserve(1, 10);
        for pos in 0..10 {
            kv.write(1, 1, pos, &token(pos, 1), &token(pos, 1));
        }
        kv.set_len(1, 10);
        // Growing past the first allocation (256) keeps the positions written.
        kv.reserve(1, 300);
        assert_eq!((kv.len(1), kv.len(0), kv.len(2)), (10, 0, 0));
        for pos in 0..10 {
            for h in 0..heads {
                let (k, v) = kv.head(1, 1, h, pos..pos + 1);
                let want: Vec<f16> = token(pos, 1)[h * hd..(h + 1) * hd]
                    .iter()
                    .map(|&x| f16::from_f32(x))
                    .collect();
                assert_eq!((k, v), (&want[..], &want[..]), "position {pos} head {h}");
            }
        }
        // Another slot is not allocated until it is used.
        assert_eq!(kv.slots[0].capacity, 0);
        kv.clear();
        assert_eq!(kv.len(1), 0);
        // Geometric growth, never past the context length.
        kv.reserve(2, 600);
        kv.reserve(2, 700);
        assert_eq!(kv.slots[2].capacity, 1000);
    }
}
