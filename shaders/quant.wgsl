// Row-blocked q8 / q4 weights (crate::quant): each row holds its quants, then its f16
// block scales two per word (block b = elements 32b..32b+31, even block in the low half).
// q8: element k is the i8 in byte k % 4 of word k / 4. q4: element k is q + 8 in nibble
// k % 8 of word k / 8. The value is q * scale. Included with `#include "quant.wgsl"`;
// define WEIGHT_Q4 for q4, q8 otherwise.

#ifdef WEIGHT_Q4
const QUANTS_PER_WORD: u32 = 8u;
#else
const QUANTS_PER_WORD: u32 = 4u;
#endif

// Quant j (0 <= j < QUANTS_PER_WORD) of a word of quants.
fn quant_at(word: u32, j: u32) -> f32 {
#ifdef WEIGHT_Q4
    return f32(i32(extractBits(word, 4u * j, 4u)) - 8);
#else
    return f32(extractBits(bitcast<i32>(word), 8u * j, 8u));
#endif
}

// Within a row of `row_len` elements: the word holding element k's quant, and the word
// holding the scale of its block.
fn quant_word(k: u32) -> u32 {
    return k / QUANTS_PER_WORD;
}

fn scale_word(row_len: u32, k: u32) -> u32 {
    return row_len / QUANTS_PER_WORD + k / 64u;
}

// The scale of element k's block, from the word scale_word() points at.
fn block_scale(word: u32, k: u32) -> f32 {
    return unpack2x16float(word)[(k / 32u) & 1u];
}
