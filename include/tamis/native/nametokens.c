/* The capitalised words of a text for the PII stage's name rules: the matches of
 * tamis.pii_recognizers._NAME_TOKEN, found by one pass of C instead of Python's regular
 * expression engine (which spends most of the rule's time trying every position).
 *
 *   UP LO+ ( after exactly "Mc" "Mac" "De" "Di" "Le" "La": UP LO+ )?
 *   ( ( ['’] not followed by "s" and a non-letter | "-" ) UP? LO+ )*
 *
 * The text is UTF-32; classes[c] holds each code point's bits (C_UP, C_LO, C_LETTER as the
 * Python side computes them from the same definitions). Every choice of the pattern is
 * greedy and never needs to be undone, so one left-to-right pass finds its matches.
 */
#include <stdint.h>

enum { C_UP = 1u << 5, C_LO = 1u << 6, C_LETTER = 1u << 7 };

#define CLS(c) ((c) < 0x110000u ? classes[(c)] : 0u)

/* Writes the start and end of each match (at most cap of them); returns how many there are. */
int64_t tn_name_tokens(const uint32_t *text, int64_t n, const uint8_t *classes, int64_t *start, int64_t *end,
                       int64_t cap) {
    int64_t found = 0;
    int64_t i = 0;
    while (i + 1 < n) {
        if (!(CLS(text[i]) & C_UP) || !(CLS(text[i + 1]) & C_LO)) { i++; continue; }
        int64_t j = i + 2;
        while (j < n && (CLS(text[j]) & C_LO)) j++;
        int64_t len = j - i;
        uint32_t a = text[i], b = text[i + 1];
        int prefix = (len == 2 && ((a == 'M' && b == 'c') || (a == 'D' && (b == 'e' || b == 'i')) ||
                                   (a == 'L' && (b == 'e' || b == 'a')))) ||
                     (len == 3 && a == 'M' && b == 'a' && text[i + 2] == 'c');
        if (prefix && j + 1 < n && (CLS(text[j]) & C_UP) && (CLS(text[j + 1]) & C_LO)) {
            j += 2;
            while (j < n && (CLS(text[j]) & C_LO)) j++;
        }
        for (;;) {
            int64_t k = j;
            if (k < n && (text[k] == '\'' || text[k] == 0x2019)) {
                if (k + 1 < n && text[k + 1] == 's' && !(k + 2 < n && (CLS(text[k + 2]) & C_LETTER))) break;
            } else if (!(k < n && text[k] == '-')) {
                break;
            }
            k++;
            if (k + 1 < n && (CLS(text[k]) & C_UP) && (CLS(text[k + 1]) & C_LO)) k++;
            if (!(k < n && (CLS(text[k]) & C_LO))) break;
            while (k < n && (CLS(text[k]) & C_LO)) k++;
            j = k;
        }
        if (found < cap) { start[found] = i; end[found] = j; }
        found++;
        i = j;
    }
    return found;
}
