//! Reuse of freed storage buffers. Creating and first-binding a buffer is slow on
//! WebGPU, and a diffusion step allocates the same activation sizes every time.
//!
//! Buffers are numbered as they are made, and a request takes the lowest-numbered free
//! buffer of its class: which buffer a tensor gets then depends only on which are free,
//! not on the order they were freed in, so step after step the same launches get the
//! same buffers and find their bind groups cached (`bind_groups`).

use std::collections::HashMap;

#[derive(Default)]
pub(super) struct BufferPool {
    free: HashMap<u64, Vec<(u64, wgpu::Buffer)>>,
    held: u64,
    made: u64,
}

impl BufferPool {
    /// Rounds a request up to a size class: multiples of 256 bytes up to 4 KiB,
    /// then eight classes per power of two, so reuse wastes at most 12.5%.
    pub fn size_class(bytes: u64) -> u64 {
        let bytes = bytes.max(4);
        if bytes <= 4096 {
            return bytes.div_ceil(256) * 256;
        }
        let octave = 63 - (bytes - 1).leading_zeros() as u64; // 2^octave < bytes <= 2^(octave+1)
        let step = 1u64 << (octave - 3);
        bytes.div_ceil(step) * step
    }

    /// The number of a buffer about to be made.
    pub fn number_new(&mut self) -> u64 {
        self.made += 1;
        self.made
    }

    /// The lowest-numbered free buffer of `class`, with its number.
    pub fn take(&mut self, class: u64) -> Option<(u64, wgpu::Buffer)> {
        let list = self.free.get_mut(&class)?;
        let lowest = list.iter().enumerate().min_by_key(|(_, (number, _))| *number)?.0;
        self.held -= class;
        Some(list.swap_remove(lowest))
    }

    pub fn give(&mut self, class: u64, number: u64, buffer: wgpu::Buffer) {
        self.held += class;
        self.free.entry(class).or_default().push((number, buffer));
    }

    pub fn held_bytes(&self) -> u64 {
        self.held
    }

    pub fn clear(&mut self) {
        self.free.clear();
        self.held = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::BufferPool;

    #[test]
    fn size_classes_cover_the_request_with_bounded_waste() {
        for bytes in [1u64, 4, 255, 256, 257, 4096, 4097, 5000, 65536, 65537, 1 << 20, 123_456_789] {
            let class = BufferPool::size_class(bytes);
            assert!(class >= bytes, "{bytes} -> {class}");
            assert!(class.is_multiple_of(4));
            assert!((class - bytes) as f64 <= bytes.max(256) as f64 * 0.125 + 256.0, "{bytes} -> {class}");
        }
        assert_eq!(BufferPool::size_class(4097), BufferPool::size_class(4600));
    }
}
