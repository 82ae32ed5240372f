/* Word shingle hashes of near dedup (minhash.py), in one pass over the text.
 *
 * A word is a maximal run of word bytes (ASCII letters, digits, '_', every non-ASCII byte)
 * inside one document, optionally ASCII-lower-cased. Its hash is splitmix64 of
 * (sum of byte_t * q^t mod 2^64) xor (length * len_mix); a shingle is splitmix64 of the
 * sum of n consecutive word hashes times combine[0..n-1] (n = 1: the word hashes
 * themselves), and a document with fewer than n words (but one at least) has one shingle
 * of all of them. These are the numbers the column-wise numpy version computed, without
 * its arrays of word bounds and its dictionary of distinct words.
 */
#include <stddef.h>
#include <stdint.h>

static uint64_t mix(uint64_t x) {
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

static int word_byte(uint8_t c) {
    return c >= 0x80 || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

#define MAX_NGRAM 256

/* With out == NULL only counts (per document into counts) and returns the total; else
 * writes the shingles too. Returns -1 for an n out of 1..MAX_NGRAM. */
int64_t tn_word_shingles(const uint8_t *data, const int64_t *offsets, int64_t n_docs, int64_t n, int lowercase,
                         uint64_t q, uint64_t len_mix, const uint64_t *combine, uint64_t *out, int64_t *counts) {
    if (n < 1 || n > MAX_NGRAM) return -1;
    uint64_t ring[MAX_NGRAM];
    int64_t total = 0;
    for (int64_t d = 0; d < n_docs; d++) {
        int64_t words = 0, emitted = 0;
        int64_t i = offsets[d], end = offsets[d + 1];
        while (i < end) {
            if (!word_byte(data[i])) {
                i++;
                continue;
            }
            int64_t start = i;
            uint64_t h = 0, power = 1;
            for (; i < end && word_byte(data[i]); i++) {
                uint8_t c = data[i];
                if (lowercase && c >= 'A' && c <= 'Z') c += 32;
                h += (uint64_t)c * power;
                power *= q;
            }
            if (out != NULL) {
                uint64_t unit = mix(h ^ ((uint64_t)(i - start) * len_mix));
                ring[words % n] = unit;
                if (words + 1 >= n) {
                    uint64_t acc = 0;
                    for (int64_t j = 0; j < n; j++) acc += ring[(words + 1 - n + j) % n] * combine[j];
                    out[total + emitted] = n == 1 ? unit : mix(acc);
                }
            }
            if (words + 1 >= n) emitted++;
            words++;
        }
        if (words > 0 && words < n) {  /* one shingle of all of a short document's words */
            if (out != NULL) {
                uint64_t acc = 0;
                for (int64_t j = 0; j < words; j++) acc += ring[j] * combine[j];
                out[total] = mix(acc);
            }
            emitted = 1;
        }
        counts[d] = emitted;
        total += emitted;
    }
    return total;
}
