/* Whole-column rewrites of UTF-8 text that Arrow's RE2 kernels made slow (about 40 MB/s
 * each): newlines, control characters, blanks and blank lines for normalize, and the
 * whitespace collapse of exact dedup's normalized key. Each pass is the exact equivalent of
 * one regex replacement it stands for, and they run in the same order, over each document
 * in place (no pass makes a text longer).
 *
 * Inputs are Arrow's string layout: data bytes and n + 1 offsets (int64). Outputs: out
 * (at least as large as the input's bytes) and n + 1 offsets into it.
 */
#include <stdint.h>
#include <string.h>

/* "\r\n" -> "\n", then "\r" -> "\n" */
static int64_t newlines(uint8_t *w, int64_t len) {
    const uint8_t *first = memchr(w, '\r', (size_t)len);  /* most texts have none */
    if (first == NULL) return len;
    int64_t j = first - w;
    for (int64_t i = j; i < len; i++) {
        if (w[i] == '\r') {
            w[j++] = '\n';
            if (i + 1 < len && w[i + 1] == '\n') i++;
        } else {
            w[j++] = w[i];
        }
    }
    return j;
}

/* The UTF-8 length of the removable character at w[i] (0: none): C0 and C1 controls except
 * tab, newline and carriage return, and U+200B-U+200D, U+2060, U+FEFF. */
static int control_at(const uint8_t *w, int64_t i, int64_t len) {
    uint8_t c = w[i];
    if (c < 0x20) return (c == '\t' || c == '\n' || c == '\r') ? 0 : 1;
    if (c == 0x7f) return 1;
    if (c == 0xc2 && i + 1 < len && w[i + 1] >= 0x80 && w[i + 1] <= 0x9f) return 2;
    if (c == 0xe2 && i + 2 < len) {
        if (w[i + 1] == 0x80 && w[i + 2] >= 0x8b && w[i + 2] <= 0x8d) return 3;
        if (w[i + 1] == 0x81 && w[i + 2] == 0xa0) return 3;
    }
    if (c == 0xef && i + 2 < len && w[i + 1] == 0xbb && w[i + 2] == 0xbf) return 3;
    return 0;
}

/* The first bytes of what control_at and blank_at may match: every other byte is copied
 * without a closer look. */
static const uint8_t control_lead[256] = {
    [0x00] = 1, [0x01] = 1, [0x02] = 1, [0x03] = 1, [0x04] = 1, [0x05] = 1, [0x06] = 1, [0x07] = 1,
    [0x08] = 1, [0x0b] = 1, [0x0c] = 1, [0x0e] = 1, [0x0f] = 1, [0x10] = 1, [0x11] = 1, [0x12] = 1,
    [0x13] = 1, [0x14] = 1, [0x15] = 1, [0x16] = 1, [0x17] = 1, [0x18] = 1, [0x19] = 1, [0x1a] = 1,
    [0x1b] = 1, [0x1c] = 1, [0x1d] = 1, [0x1e] = 1, [0x1f] = 1, [0x7f] = 1, [0xc2] = 1, [0xe2] = 1,
    [0xef] = 1,
};
static const uint8_t blank_lead[256] = {[' '] = 1, ['\t'] = 1, [0xc2] = 1, [0xe1] = 1, [0xe2] = 1, [0xe3] = 1};

static int64_t remove_controls(uint8_t *w, int64_t len) {
    int64_t i = 0;
    for (; i < len; i++) {  /* read only up to the first one */
        if (control_lead[w[i]] && control_at(w, i, len)) break;
    }
    int64_t j = i;
    while (i < len) {
        int k = control_lead[w[i]] ? control_at(w, i, len) : 0;
        if (k) {
            i += k;
        } else {
            w[j++] = w[i++];
        }
    }
    return j;
}

/* The UTF-8 length of the inline blank at w[i] (0: none): space, tab, U+00A0, U+1680,
 * U+2000-U+200A, U+202F, U+205F, U+3000. */
static int blank_at(const uint8_t *w, int64_t i, int64_t len) {
    uint8_t c = w[i];
    if (c == ' ' || c == '\t') return 1;
    if (c == 0xc2 && i + 1 < len && w[i + 1] == 0xa0) return 2;
    if (i + 2 >= len) return 0;
    if (c == 0xe1 && w[i + 1] == 0x9a && w[i + 2] == 0x80) return 3;
    if (c == 0xe2 && w[i + 1] == 0x80 && ((w[i + 2] >= 0x80 && w[i + 2] <= 0x8a) || w[i + 2] == 0xaf)) return 3;
    if (c == 0xe2 && w[i + 1] == 0x81 && w[i + 2] == 0x9f) return 3;
    if (c == 0xe3 && w[i + 1] == 0x80 && w[i + 2] == 0x80) return 3;
    return 0;
}

/* Every maximal run of inline blanks -> one space. */
static int64_t collapse_blanks(uint8_t *w, int64_t len) {
    int64_t i = 0;
    for (; i < len; i++) {  /* read only up to the first run that changes: not one lone space */
        int k = blank_lead[w[i]] ? blank_at(w, i, len) : 0;
        if (k && !(w[i] == ' ' && !(i + 1 < len && blank_lead[w[i + 1]] && blank_at(w, i + 1, len)))) break;
    }
    int64_t j = i;
    while (i < len) {
        int k = blank_lead[w[i]] ? blank_at(w, i, len) : 0;
        if (!k) {
            w[j++] = w[i++];
            continue;
        }
        while (k) {
            i += k;
            k = i < len && blank_lead[w[i]] ? blank_at(w, i, len) : 0;
        }
        w[j++] = ' ';
    }
    return j;
}

/* (?m)[ \t]+$ -> "": spaces and tabs before a newline or the end. */
static int64_t strip_trailing(uint8_t *w, int64_t len) {
    int64_t i = 0, run = -1;
    for (; i < len; i++) {  /* read only up to the first blanks before a newline or the end */
        uint8_t c = w[i];
        if (c == ' ' || c == '\t') {
            if (run < 0) run = i;
        } else if (c == '\n' && run >= 0) {
            break;
        } else {
            run = -1;
        }
    }
    if (run < 0) return len;
    int64_t j = run;
    i = run;
    run = -1;
    for (; i < len; i++) {
        uint8_t c = w[i];
        if (c == ' ' || c == '\t') {
            if (run < 0) run = j;
        } else {
            if (c == '\n' && run >= 0) j = run;
            run = -1;
        }
        w[j++] = c;
    }
    return run >= 0 ? run : j;
}

/* \n{keep+1,} -> keep newlines */
static int64_t limit_newlines(uint8_t *w, int64_t len, int64_t keep) {
    int64_t j = 0;
    for (int64_t i = 0; i < len;) {
        if (w[i] != '\n') {
            w[j++] = w[i++];
            continue;
        }
        int64_t start = i;
        while (i < len && w[i] == '\n') i++;
        int64_t run = i - start;
        if (run > keep) run = keep;
        memset(w + j, '\n', (size_t)run);
        j += run;
    }
    return j;
}

static int trimmed(uint8_t c) { return c == ' ' || c == '\t' || c == '\n'; }

/* Normalize's rewrites after the Unicode form, per document: newlines; controls (when
 * remove_controls); inline blanks of prose documents (prose[i]); trailing blanks (when
 * strip); runs of more than max_blank_lines + 1 newlines; and " \t\n" trimmed off both
 * ends. Returns the bytes written. */
int64_t tn_normalize(const uint8_t *data, const int64_t *offsets, int64_t n, const uint8_t *prose,
                     int remove_controls_flag, int strip, int64_t max_blank_lines, uint8_t *out,
                     int64_t *out_offsets) {
    int64_t at = 0;
    out_offsets[0] = 0;
    for (int64_t d = 0; d < n; d++) {
        int64_t len = offsets[d + 1] - offsets[d];
        uint8_t *w = out + at;
        memmove(w, data + offsets[d], (size_t)len);
        len = newlines(w, len);
        if (remove_controls_flag) len = remove_controls(w, len);
        if (prose[d]) len = collapse_blanks(w, len);
        if (strip) len = strip_trailing(w, len);
        len = limit_newlines(w, len, max_blank_lines + 1);
        int64_t lo = 0, hi = len;
        while (lo < hi && trimmed(w[lo])) lo++;
        while (hi > lo && trimmed(w[hi - 1])) hi--;
        if (lo) memmove(w, w + lo, (size_t)(hi - lo));
        at += hi - lo;
        out_offsets[d + 1] = at;
    }
    return at;
}

static int ascii_space(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\f' || c == '\r'; }

/* RE2's \s+ -> " " (\s is [\t\n\f\r ] in RE2). Returns the bytes written. */
int64_t tn_collapse_spaces(const uint8_t *data, const int64_t *offsets, int64_t n, uint8_t *out,
                           int64_t *out_offsets) {
    int64_t j = 0;
    out_offsets[0] = 0;
    for (int64_t d = 0; d < n; d++) {
        for (int64_t i = offsets[d], end = offsets[d + 1]; i < end;) {
            if (!ascii_space(data[i])) {
                out[j++] = data[i++];
                continue;
            }
            while (i < end && ascii_space(data[i])) i++;
            out[j++] = ' ';
        }
        out_offsets[d + 1] = j;
    }
    return j;
}
