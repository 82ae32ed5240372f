/* Per-document figures for the quality rules, one pass of C per document.
 *
 * The text is first brought to the form the normalize stage gives it (newlines, control
 * characters, runs of spaces, trailing spaces, blank lines; NFC is applied beforehand by
 * the caller), so the rules decide the same with or without normalize. Words are split as
 * spaCy 3.8's English tokenizer splits them, which is what the reference filters
 * (datatrove's Gopher, C4 and FineWeb) count: whitespace, then prefixes, suffixes, special
 * cases, URLs and infixes, with the character classes and special cases loaded from
 * text_tables.json. Loaded with ctypes; no Python headers needed.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum {
    F_SPACE = 1u << 0, F_PY_ALPHA = 1u << 1, F_UNICODE_PUNCT = 1u << 2, F_LETTER = 1u << 3,
    F_WORD_CHAR = 1u << 4, F_DIGIT = 1u << 5, F_SENTENCE_PUNCT = 1u << 6, F_DT_PUNCT = 1u << 7,
    F_DT_TERMINAL = 1u << 8, F_PREFIX = 1u << 9, F_SUFFIX = 1u << 10, F_PERIOD_AFTER = 1u << 11,
    F_ALPHA = 1u << 12, F_ALPHA_LOWER = 1u << 13, F_ALPHA_UPPER = 1u << 14, F_QUOTE = 1u << 15,
    F_ICON = 1u << 16, F_UNSPACED = 1u << 17, F_NFC_UNSAFE = 1u << 18,
};

/* Figures written per document; the Python side names them in the same order. */
enum {
    S_CHARS, S_LETTERS, S_SPACES, S_UNSPACED_LETTERS, S_TOKENS, S_WORDS, S_WORD_CHARS, S_ALPHA_TOKENS,
    S_HASHES, S_ELLIPSES, S_GOPHER_LINES, S_BULLET_LINES, S_ELLIPSIS_LINES, S_STOP_WORDS,
    S_PARAGRAPHS, S_DUP_PARAGRAPHS, S_DUP_PARAGRAPH_CHARS, S_LINES, S_DUP_LINES, S_DUP_LINE_CHARS,
    S_LOREM_IPSUM, S_CURLY_BRACKET, S_SENTENCES, S_NOTICE_LINES,
    S_FW_LINES, S_FW_PUNCT_LINES, S_FW_SHORT_LINES, S_FW_DUP_CHARS, S_NEWLINES, S_NFC_UNSAFE,
    N_BASE_SIGNALS
};

static const uint32_t *FLAGS;
#define FL(c) ((c) < 0x110000u ? FLAGS[(c)] : 0u)

/* ---- hashing ---------------------------------------------------------------------- */

static uint64_t fnv(const uint32_t *s, int64_t n) {
    uint64_t h = 14695981039346656037ull;
    for (int64_t i = 0; i < n; i++) { h ^= s[i]; h *= 1099511628211ull; }
    return h ^ ((uint64_t)n * 0x9E3779B97F4A7C15ull);
}

/* Open addressing, key 0 marking a free slot; cap is the part in use for the current
 * document, alloc what is allocated. vals/aux are only touched by callers that count. */
typedef struct { uint64_t *keys; int32_t *vals; int32_t *aux; int64_t cap, alloc; } Map;

static int map_reserve(Map *m, int64_t n) {
    int64_t cap = 16;
    while (cap < 2 * n + 2) cap <<= 1;
    if (cap > m->alloc) {
        free(m->keys); free(m->vals); free(m->aux);
        m->keys = malloc(cap * sizeof(uint64_t)); m->vals = malloc(cap * sizeof(int32_t));
        m->aux = malloc(cap * sizeof(int32_t));
        if (!m->keys || !m->vals || !m->aux) return -1;
        m->alloc = cap;
    }
    m->cap = cap;
    memset(m->keys, 0, cap * sizeof(uint64_t));
    return 0;
}

/* Slot of key, inserting it when absent (then vals/aux are the caller's to set); *fresh says which. */
static inline int64_t map_slot(Map *m, uint64_t key, int *fresh) {
    key |= key == 0;
    uint64_t mask = (uint64_t)m->cap - 1, i = (key * 0x9E3779B97F4A7C15ull) >> 17 & mask;
    while (m->keys[i]) {
        if (m->keys[i] == key) { *fresh = 0; return (int64_t)i; }
        i = (i + 1) & mask;
    }
    m->keys[i] = key; *fresh = 1;
    return (int64_t)i;
}

/* ---- special cases and multi-character affixes ------------------------------------ */

static uint32_t *SP_CHARS; static int64_t *SP_OFF; static int32_t *SP_PIECES; static int64_t *SP_PIECE_OFF;
static int64_t SP_N, SP_CAP; static int64_t *SP_TABLE; static uint64_t *SP_HASH;
static uint32_t *AD_CHARS; static int64_t *AD_OFF; static int64_t AD_N;  /* suffixes after a digit */
static int64_t AD_LONGEST;
static int32_t *MT_PIECES; static int64_t *MT_OFF; static int64_t MT_LONGEST;  /* special-case matcher patterns */

static uint8_t SP_FIRST[32][256];  /* a special case of length l (capped at 31) starts with a character c (mod 256) */
static int64_t SP_LONGEST;

static int64_t special(const uint32_t *s, int64_t n) {
    if (n <= 0 || n > SP_LONGEST || !SP_FIRST[n < 31 ? n : 31][s[0] & 255]) return -1;
    uint64_t h = fnv(s, n), mask = (uint64_t)SP_CAP - 1, i = (h * 0x9E3779B97F4A7C15ull) >> 7 & mask;
    while (SP_TABLE[i] >= 0) {
        int64_t k = SP_TABLE[i];
        if (SP_HASH[k] == h && SP_OFF[k + 1] - SP_OFF[k] == n && !memcmp(SP_CHARS + SP_OFF[k], s, n * 4)) return k;
        i = (i + 1) & mask;
    }
    return -1;
}

int tq_init(const uint32_t *flags, const uint32_t *sp_chars, const int64_t *sp_off, const int32_t *sp_pieces,
            const int64_t *sp_piece_off, int64_t sp_n, const uint32_t *ad_chars, const int64_t *ad_off, int64_t ad_n,
            const int32_t *mt_pieces, const int64_t *mt_off) {
    FLAGS = flags;
    SP_N = sp_n;
    SP_CHARS = malloc(sp_off[sp_n] * 4 + 4); SP_OFF = malloc((sp_n + 1) * 8);
    SP_PIECES = malloc(sp_piece_off[sp_n] * 4 + 4); SP_PIECE_OFF = malloc((sp_n + 1) * 8);
    SP_HASH = malloc(sp_n * 8 + 8);
    AD_CHARS = malloc(ad_off[ad_n] * 4 + 4); AD_OFF = malloc((ad_n + 1) * 8); AD_N = ad_n;
    if (!SP_CHARS || !SP_OFF || !SP_PIECES || !SP_PIECE_OFF || !SP_HASH || !AD_CHARS || !AD_OFF) return -1;
    memcpy(SP_CHARS, sp_chars, sp_off[sp_n] * 4); memcpy(SP_OFF, sp_off, (sp_n + 1) * 8);
    memcpy(SP_PIECES, sp_pieces, sp_piece_off[sp_n] * 4); memcpy(SP_PIECE_OFF, sp_piece_off, (sp_n + 1) * 8);
    memcpy(AD_CHARS, ad_chars, ad_off[ad_n] * 4); memcpy(AD_OFF, ad_off, (ad_n + 1) * 8);
    AD_LONGEST = 0;
    for (int64_t k = 0; k < ad_n; k++) if (ad_off[k + 1] - ad_off[k] > AD_LONGEST) AD_LONGEST = ad_off[k + 1] - ad_off[k];
    MT_PIECES = malloc(mt_off[sp_n] * 4 + 4); MT_OFF = malloc((sp_n + 1) * 8);
    if (!MT_PIECES || !MT_OFF) return -1;
    memcpy(MT_PIECES, mt_pieces, mt_off[sp_n] * 4); memcpy(MT_OFF, mt_off, (sp_n + 1) * 8);
    MT_LONGEST = 0;
    for (int64_t k = 0; k < sp_n; k++) if (MT_OFF[k + 1] - MT_OFF[k] > MT_LONGEST) MT_LONGEST = MT_OFF[k + 1] - MT_OFF[k];
    SP_CAP = 16;
    while (SP_CAP < 4 * sp_n) SP_CAP <<= 1;
    SP_TABLE = malloc(SP_CAP * 8);
    if (!SP_TABLE) return -1;
    for (int64_t i = 0; i < SP_CAP; i++) SP_TABLE[i] = -1;
    uint64_t mask = (uint64_t)SP_CAP - 1;
    for (int64_t k = 0; k < sp_n; k++) {
        SP_HASH[k] = fnv(SP_CHARS + SP_OFF[k], SP_OFF[k + 1] - SP_OFF[k]);
        uint64_t i = (SP_HASH[k] * 0x9E3779B97F4A7C15ull) >> 7 & mask;
        while (SP_TABLE[i] >= 0) i = (i + 1) & mask;
        SP_TABLE[i] = k;
        int64_t len = SP_OFF[k + 1] - SP_OFF[k];
        if (len > SP_LONGEST) SP_LONGEST = len;
        if (len > 0) SP_FIRST[len < 31 ? len : 31][SP_CHARS[SP_OFF[k]] & 255] = 1;
    }
    return 0;
}

/* ---- the word splitter (spaCy's English tokenizer) -------------------------------- */

typedef struct { int32_t *start, *len; int64_t n, cap; } Tokens;

static int push(Tokens *t, int64_t start, int64_t len) {
    if (t->n == t->cap) {
        int64_t cap = t->cap ? 2 * t->cap : 1024;
        int32_t *s = realloc(t->start, cap * 4), *l = realloc(t->len, cap * 4);
        if (!s || !l) return -1;
        t->start = s; t->len = l; t->cap = cap;
    }
    t->start[t->n] = (int32_t)start; t->len[t->n] = (int32_t)len; t->n++;
    return 0;
}

static int is_ascii_digit(uint32_t c) { return c >= '0' && c <= '9'; }

static int64_t find_prefix(const uint32_t *s, int64_t n) {
    uint32_t c = s[0];
    if (c == '+') return (n > 1 && is_ascii_digit(s[1])) ? 0 : 1;
    if (c == '.') { int64_t r = 0; while (r < n && s[r] == '.') r++; return r >= 2 ? r : 0; }
    if (FL(c) & F_PREFIX) return 1;
    if (n >= 3 && c == 'U' && s[1] == 'S' && s[2] == '$') return 3;
    if (n >= 2 && (c == 'C' || c == 'A') && s[1] == '$') return 2;
    return 0;
}

/* Longest suffix any alternative matches: the leftmost start of a regex search anchored at $. */
static int64_t find_suffix(const uint32_t *s, int64_t n) {
    if (n <= 0) return 0;
    int64_t best = 0;
    uint32_t c = s[n - 1];
    if (FL(c) & F_SUFFIX) best = 1;
    if (n >= 2 && s[n - 2] == 0x2026 && c == 0x2026) best = 2;
    if (c == '.') {
        int64_t r = 0;
        while (r < n && s[n - 1 - r] == '.') r++;
        if (r >= 2 && r > best) best = r;
        if (n >= 2 && (FL(s[n - 2]) & F_PERIOD_AFTER) && best < 1) best = 1;
        if (n >= 3 && (FL(s[n - 3]) & F_ALPHA_UPPER) && (FL(s[n - 2]) & F_ALPHA_UPPER) && best < 1) best = 1;
        uint32_t u = n >= 2 ? s[n - 2] : 0;
        if (n >= 3 && s[n - 3] == 0xB0 && (u == 'F' || u == 'f' || u == 'C' || u == 'c' || u == 'K' || u == 'k') && best < 1) best = 1;
    }
    if (n >= 2 && (s[n - 2] == '\'' || s[n - 2] == 0x2019) && (c == 's' || c == 'S') && best < 2) best = 2;
    if (c == '+' && n >= 2 && is_ascii_digit(s[n - 2]) && best < 1) best = 1;
    int digit_before = 0;  /* units and currencies follow a digit: most words have none near the end */
    for (int64_t j = n - 2; j >= 0 && j >= n - 1 - AD_LONGEST; j--) if (is_ascii_digit(s[j])) { digit_before = 1; break; }
    for (int64_t k = 0; digit_before && k < AD_N; k++) {
        int64_t m = AD_OFF[k + 1] - AD_OFF[k];
        if (m <= best || m >= n) continue;
        if (is_ascii_digit(s[n - m - 1]) && !memcmp(s + n - m, AD_CHARS + AD_OFF[k], m * 4)) best = m;
    }
    return best;
}

static int host_char(uint32_t c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || (c >= 0xA1 && c <= 0xFFFF);
}

static int host_matches(const uint32_t *s, int64_t h, int64_t n) {
    int64_t e = h;
    while (e < n && (host_char(s[e]) || s[e] == '_' || s[e] == '-' || s[e] == '.')) e++;
    if (e < n) {
        if (s[e] == ':') {
            int64_t d = e + 1;
            while (d < n && (FL(s[d]) & F_DIGIT)) d++;
            if (d - e - 1 < 2 || d - e - 1 > 5) return 0;
            if (d < n && s[d] != '/' && s[d] != '?' && s[d] != '#') return 0;
        } else if (s[e] != '/' && s[e] != '?' && s[e] != '#') {
            return 0;
        }
    }
    /* host = labels '.' TLD: every label 1-64 chars, inner '_' '-' allowed; TLD 2-63 lower-case letters */
    int64_t last_dot = -1;
    for (int64_t i = h; i < e; i++) if (s[i] == '.') last_dot = i;
    if (last_dot < 0) return 0;
    int64_t tld = e - last_dot - 1;
    if (tld < 2 || tld > 63) return 0;
    for (int64_t i = last_dot + 1; i < e; i++) if (!(FL(s[i]) & F_ALPHA_LOWER)) return 0;
    int64_t a = h;
    while (a < last_dot) {
        int64_t b = a;
        while (s[b] != '.') b++;
        int64_t len = b - a;
        if (len < 1 || len > 64 || !host_char(s[a]) || !host_char(s[b - 1])) return 0;
        a = b + 1;
    }
    return a == last_dot + 1;
}

static int url_match(const uint32_t *s, int64_t n) {
    int64_t pos = 0, dot = 0;
    for (int64_t i = 0; i < n && !dot; i++) dot = s[i] == '.';
    if (!dot) return 0;  /* every host has a dot before its top-level domain */
    int64_t k = 0;
    while (k < n && ((FL(s[k]) & F_WORD_CHAR) || s[k] == '+' || s[k] == '-' || s[k] == '.')) k++;
    int64_t with_scheme = (k >= 2 && k + 2 < n && s[k] == ':' && s[k + 1] == '/' && s[k + 2] == '/') ? k + 3 : -1;
    for (int pass = 0; pass < 2; pass++) {
        pos = pass == 0 ? with_scheme : 0;
        if (pos < 0) continue;
        for (int64_t at = n - 1; at > pos; at--)  /* user info, the last '@' first, as \S+ backtracks */
            if (s[at] == '@' && host_matches(s, at + 1, n)) return 1;
        if (host_matches(s, pos, n)) return 1;
    }
    return 0;
}

static int is_hyphen_at(const uint32_t *s, int64_t i, int64_t n, int64_t *len) {
    /* alternatives in spaCy's order: - – — -- --- —— ~ ; each needs an ALPHA after it */
    static const uint32_t alts[7][3] = {{'-'}, {0x2013}, {0x2014}, {'-', '-'}, {'-', '-', '-'}, {0x2014, 0x2014}, {'~'}};
    static const int alen[7] = {1, 1, 1, 2, 3, 2, 1};
    for (int a = 0; a < 7; a++) {
        int64_t m = alen[a];
        if (i + m >= n) continue;
        int ok = 1;
        for (int64_t j = 0; j < m; j++) if (s[i + j] != alts[a][j]) { ok = 0; break; }
        if (ok && (FL(s[i + m]) & F_ALPHA)) { *len = m; return 1; }
    }
    return 0;
}

/* Length of the infix at i (0: none), alternatives tried in spaCy's order. */
static int64_t infix_at(const uint32_t *s, int64_t i, int64_t n) {
    uint32_t c = s[i];
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return 0;  /* no infix starts so */
    if (c == '.' && i + 1 < n && s[i + 1] == '.') { int64_t r = i; while (r < n && s[r] == '.') r++; return r - i; }
    if (c == 0x2026) return 1;
    if (FL(c) & F_ICON) return 1;
    if (i == 0) return 0;
    uint32_t p = s[i - 1], q = i + 1 < n ? s[i + 1] : 0;
    if ((c == '+' || c == '-' || c == '*' || c == '^') && is_ascii_digit(p) && i + 1 < n && (is_ascii_digit(q) || q == '-')) return 1;
    if (c == '.' && i + 1 < n && (FL(p) & (F_ALPHA_LOWER | F_QUOTE)) && (FL(q) & (F_ALPHA_UPPER | F_QUOTE))) return 1;
    if (c == ',' && i + 1 < n && (FL(p) & F_ALPHA) && (FL(q) & F_ALPHA)) return 1;
    int64_t hl;
    if ((c == '-' || c == 0x2013 || c == 0x2014 || c == '~') && (FL(p) & F_ALPHA || is_ascii_digit(p)) && is_hyphen_at(s, i, n, &hl)) return hl;
    if ((c == ':' || c == '<' || c == '>' || c == '=' || c == '/') && i + 1 < n && (FL(p) & F_ALPHA || is_ascii_digit(p)) && (FL(q) & F_ALPHA)) return 1;
    return 0;
}

static int emit_special(Tokens *t, int64_t k, int64_t at) {
    for (int64_t p = SP_PIECE_OFF[k]; p < SP_PIECE_OFF[k + 1]; p++) {
        if (push(t, at, SP_PIECES[p])) return -1;
        at += SP_PIECES[p];
    }
    return 0;
}

/* spaCy's special-case matcher over the tokens [t0, t->n) of one span: runs of tokens that
 * spell a special case and are split as its pattern are replaced by the special case's
 * pieces; longest runs first, then leftmost, a run skipped when its first or last token is
 * already taken. */
static int apply_matcher(Tokens *t, int64_t t0, const uint32_t *text) {
    int64_t m = t->n - t0;
    if (m < 2 || MT_LONGEST < 2) return 0;
    enum { MAXM = 64 };
    int64_t ms[MAXM], me[MAXM], mk[MAXM], nm = 0;
    for (int64_t i = t0; i < t->n; i++) {
        for (int64_t j = i + 2; j <= t->n && j - i <= MT_LONGEST; j++) {
            int64_t a = t->start[i], b = t->start[j - 1] + t->len[j - 1];
            int64_t k = special(text + a, b - a);
            if (k < 0 || MT_OFF[k + 1] - MT_OFF[k] != j - i) continue;
            int same = 1;
            for (int64_t q = 0; q < j - i; q++) if (MT_PIECES[MT_OFF[k] + q] != t->len[i + q]) { same = 0; break; }
            if (same && nm < MAXM) { ms[nm] = i; me[nm] = j; mk[nm] = k; nm++; }
        }
    }
    if (!nm) return 0;
    uint8_t seen[256];
    if (m > 256) return 0;
    memset(seen, 0, (size_t)m);
    int64_t accepted[MAXM], na = 0;
    uint8_t done[MAXM];
    memset(done, 0, sizeof done);
    for (int64_t round = 0; round < nm; round++) {  /* longest first, then leftmost */
        int64_t best = -1;
        for (int64_t q = 0; q < nm; q++) {
            if (done[q]) continue;
            if (best < 0 || me[q] - ms[q] > me[best] - ms[best] || (me[q] - ms[q] == me[best] - ms[best] && ms[q] < ms[best])) best = q;
        }
        done[best] = 1;
        if (!seen[ms[best] - t0] && !seen[me[best] - 1 - t0]) accepted[na++] = best;
        for (int64_t q = ms[best]; q < me[best]; q++) seen[q - t0] = 1;
    }
    /* rebuild the span's tokens */
    int32_t starts[256], lens[256];
    int64_t n = 0, i = t0;
    while (i < t->n) {
        int64_t hit = -1;
        for (int64_t q = 0; q < na; q++) if (ms[accepted[q]] == i) hit = accepted[q];
        if (hit < 0) { starts[n] = t->start[i]; lens[n] = t->len[i]; n++; i++; continue; }
        int64_t k = mk[hit], at = t->start[i];
        for (int64_t p = SP_PIECE_OFF[k]; p < SP_PIECE_OFF[k + 1] && n < 256; p++) { starts[n] = (int32_t)at; lens[n] = SP_PIECES[p]; at += SP_PIECES[p]; n++; }
        i = me[hit];
    }
    t->n = t0;
    for (int64_t q = 0; q < n; q++) if (push(t, starts[q], lens[q])) return -1;
    return 0;
}

/* Tokens of one whitespace-free span s[0:n) at text offset base. */
static int split_span(Tokens *t, const uint32_t *s, int64_t n, int64_t base, int32_t *sufs, int64_t *nsufs_out) {
    int64_t t0 = t->n;
    int64_t k = special(s, n);
    if (k >= 0) return emit_special(t, k, base);
    /* [ca, cb) is known not to be a special case; k >= 0 is the special case [a, b) is */
    int64_t a = 0, b = n, last = -1, nsufs = 0, ca = 0, cb = n;
    while (b > a && b - a != last) {
        if (a != ca || b != cb) {
            if ((k = special(s + a, b - a)) >= 0) break;
            ca = a; cb = b;
        }
        last = b - a;
        int64_t pre = find_prefix(s + a, b - a);
        if (pre && b - a - pre > 0 && (k = special(s + a + pre, b - a - pre)) >= 0) {
            if (push(t, base + a, pre)) return -1;
            a += pre;
            break;
        }
        int64_t suf = find_suffix(s + a + pre, b - a - pre);
        if (suf && b - a - suf > 0 && (k = special(s + a, b - a - suf)) >= 0) {
            sufs[nsufs++] = (int32_t)suf;
            b -= suf;
            break;
        }
        if (pre && suf && pre + suf <= b - a) {
            if (push(t, base + a, pre)) return -1;
            a += pre;
            sufs[nsufs++] = (int32_t)suf;
            b -= suf;
        } else if (pre) {
            if (push(t, base + a, pre)) return -1;
            a += pre;
        } else if (suf) {
            sufs[nsufs++] = (int32_t)suf;
            b -= suf;
        }
    }
    if (b > a) {
        const uint32_t *m = s + a;
        int64_t len = b - a;
        if (k < 0 && (a != ca || b != cb)) k = special(m, len);
        if (k >= 0) {
            if (emit_special(t, k, base + a)) return -1;
        } else if (url_match(m, len)) {
            if (push(t, base + a, len)) return -1;
        } else {
            int64_t start = 0, i = 0;
            while (i < len) {
                int64_t il = infix_at(m, i, len);
                if (!il) { i++; continue; }
                if (i != 0) {
                    if (i != start && push(t, base + a + start, i - start)) return -1;
                    if (push(t, base + a + i, il)) return -1;
                    start = i + il;
                }
                i += il;
            }
            if (start < len && push(t, base + a + start, len - start)) return -1;
        }
    }
    int64_t end = base + b;
    for (int64_t j = nsufs - 1; j >= 0; j--) {
        if (push(t, end, sufs[j])) return -1;
        end += sufs[j];
    }
    *nsufs_out = nsufs;
    return apply_matcher(t, t0, s - base);
}

static int tokenize(Tokens *t, const uint32_t *s, int64_t from, int64_t to, int32_t *sufs) {
    int64_t i = from, nsufs;
    while (i < to) {
        while (i < to && (FL(s[i]) & F_SPACE)) i++;
        int64_t j = i;
        while (j < to && !(FL(s[j]) & F_SPACE)) j++;
        if (j > i && split_span(t, s + i, j - i, i, sufs, &nsufs)) return -1;
        i = j;
    }
    return 0;
}

/* ---- normalize's view of the text ------------------------------------------------- */

static int is_control(uint32_t c) {
    return (c <= 0x08) || c == 0x0B || c == 0x0C || (c >= 0x0E && c <= 0x1F) || (c >= 0x7F && c <= 0x9F) ||
           (c >= 0x200B && c <= 0x200D) || c == 0x2060 || c == 0xFEFF;
}

static int is_inline_space(uint32_t c) {
    return c == ' ' || c == '\t' || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* Decodes UTF-8 and applies normalize's rules: \r\n and \r to \n, control characters out,
 * (prose) runs of spaces to one space, spaces and tabs before a newline out, at most two
 * blank lines, spaces, tabs and newlines trimmed at both ends. Returns the length. */
static int64_t canonical(const uint8_t *p, int64_t nbytes, int prose, uint32_t *out) {
    int64_t n = 0, i = 0, ws_start = -1, newline_run = 0;  /* out[ws_start:n) is a run of spaces and tabs */
    while (i < nbytes) {
        uint32_t c = p[i];
        if (c < 0x80) i += 1;
        else if (c < 0xE0) { c = ((c & 0x1F) << 6) | (p[i + 1] & 0x3F); i += 2; }
        else if (c < 0xF0) { c = ((c & 0x0F) << 12) | ((p[i + 1] & 0x3F) << 6) | (p[i + 2] & 0x3F); i += 3; }
        else { c = ((c & 0x07) << 18) | ((p[i + 1] & 0x3F) << 12) | ((p[i + 2] & 0x3F) << 6) | (p[i + 3] & 0x3F); i += 4; }
        if (c == '\r') { if (i < nbytes && p[i] == '\n') i++; c = '\n'; }
        if (is_control(c)) continue;
        if (prose && is_inline_space(c)) c = ' ';
        if (c == '\n') {
            if (ws_start >= 0) { n = ws_start; ws_start = -1; }
            if (n == 0) continue;
            if (++newline_run <= 3) out[n++] = '\n';
            continue;
        }
        if (c == ' ' || c == '\t') {
            if (n == 0 || (prose && ws_start >= 0)) continue;
            if (ws_start < 0) ws_start = n;
            out[n++] = c;
            continue;
        }
        ws_start = -1;
        newline_run = 0;
        out[n++] = c;
    }
    if (ws_start >= 0) n = ws_start;
    while (n > 0 && out[n - 1] == '\n') n--;
    return n;
}

/* ---- the figures ------------------------------------------------------------------ */

typedef struct {
    uint32_t *text; int64_t text_cap;
    uint32_t *line; int64_t line_cap;
    Tokens tok, line_tok;
    int32_t *sufs; int64_t sufs_cap;
    uint64_t *tok_hash; uint64_t *prefix_hash; int64_t tok_cap, char_cap;
    uint64_t *text_hash; int64_t text_hash_cap;  /* prefix hashes of the text */
    int64_t *char_at; int64_t char_at_cap;  /* token k starts at character char_at[k] of the concatenated tokens */
    Map map;
} Scratch;

static int grow(void **p, int64_t *cap, int64_t need, size_t size) {
    if (need <= *cap) return 0;
    int64_t c = need + need / 2 + 64;
    void *q = realloc(*p, c * size);
    if (!q) return -1;
    *p = q; *cap = c;
    return 0;
}

static int is_line_break(uint32_t c) {  /* str.splitlines, after canonical() */
    return c == '\n' || c == 0x1C || c == 0x1D || c == 0x1E || c == 0x85 || c == 0x2028 || c == 0x2029 || c == 0x0B || c == 0x0C || c == '\r';
}

enum { PH_JAVASCRIPT = 1, PH_POLICY = 2, PH_LOREM = 4 };
static const uint8_t PHRASE_START[128][128] = {['j'] = {['a'] = 1}, ['t'] = {['e'] = 1}, ['p'] = {['r'] = 1},
                                               ['c'] = {['o'] = 1}, ['u'] = {['s'] = 1}, ['l'] = {['o'] = 1}};

static int lower_at(const uint32_t *s, int64_t i, int64_t n, const char *needle) {
    for (int64_t j = 0; needle[j]; j++) {
        if (i + j >= n) return 0;
        uint32_t c = s[i + j];
        if (c >= 'A' && c <= 'Z') c += 32;
        if (c != (uint32_t)(unsigned char)needle[j]) return 0;
    }
    return 1;
}

/* The C4 phrases a line holds (ASCII case folded): javascript, a policy notice, lorem ipsum. */
static int phrases(const uint32_t *s, int64_t n) {
    int found = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t c = s[i] | 0x20;  /* ASCII letters to lower case; other characters never match below */
        if (i + 1 >= n) break;
        uint32_t d = s[i + 1] | 0x20;  /* the first two letters screen out most candidates */
        if (c >= 128 || d >= 128 || !PHRASE_START[c][d]) continue;
        switch (c) {
        case 'j': if (d == 'a' && lower_at(s, i, n, "javascript")) found |= PH_JAVASCRIPT; break;
        case 't': if (d == 'e' && lower_at(s, i, n, "terms of use")) found |= PH_POLICY; break;
        case 'p': if (d == 'r' && lower_at(s, i, n, "privacy policy")) found |= PH_POLICY; break;
        case 'c': if (d == 'o' && lower_at(s, i, n, "cookie policy")) found |= PH_POLICY; break;
        case 'u': if (d == 's' && (lower_at(s, i, n, "uses cookies") || lower_at(s, i, n, "use of cookies") || lower_at(s, i, n, "use cookies"))) found |= PH_POLICY; break;
        case 'l': if (d == 'o' && lower_at(s, i, n, "lorem ipsum")) found |= PH_LOREM; break;
        default: break;
        }
    }
    return found;
}

/* CITATION_REGEX = \[\d*]|\[edit]|\[citation needed] removed; returns the new length. */
static int64_t strip_citations(const uint32_t *s, int64_t n, uint32_t *out) {
    int64_t o = 0, i = 0;
    static const char *words[2] = {"edit]", "citation needed]"};
    while (i < n) {
        if (s[i] == '[') {
            int64_t j = i + 1;
            while (j < n && (FL(s[j]) & F_DIGIT)) j++;
            if (j < n && s[j] == ']') { i = j + 1; continue; }
            int matched = 0;
            for (int w = 0; w < 2 && !matched; w++) {
                int64_t m = (int64_t)strlen(words[w]);
                if (i + 1 + m <= n) {
                    int64_t k = 0;
                    while (k < m && s[i + 1 + k] == (uint32_t)words[w][k]) k++;
                    if (k == m) { i += 1 + m; matched = 1; }
                }
            }
            if (matched) continue;
        }
        out[o++] = s[i++];
    }
    return o;
}

/* spaCy's Sentencizer over tokens [from, to): sentences counted. */
static int64_t sentences(const uint32_t *s, const Tokens *t, int64_t from, int64_t to) {
    if (to <= from) return 0;
    int64_t count = 1;
    int seen_period = 0;
    for (int64_t k = from; k < to; k++) {
        const uint32_t *w = s + t->start[k];
        int64_t len = t->len[k];
        int in_punct_chars = len == 1 && (FL(w[0]) & F_SENTENCE_PUNCT);
        int is_punct = 1;
        for (int64_t j = 0; j < len; j++) if (!(FL(w[j]) & F_UNICODE_PUNCT)) { is_punct = 0; break; }
        if (seen_period && !is_punct && !in_punct_chars) { count++; seen_period = 0; }
        else if (in_punct_chars) seen_period = 1;
    }
    return count;
}

static const uint64_t P = 0x100000001B3ull;
static __thread uint64_t *POW;  /* POW[i] = P^i */
static __thread int64_t POW_N;

/* Duplicate segments (lines, paragraphs): find_duplicates of the reference. th: prefix hashes of the text. */
static void duplicates(Map *m, const uint64_t *th, const int64_t *starts, const int64_t *ends, int64_t n, double *dups, double *dup_chars) {
    *dups = 0; *dup_chars = 0;
    for (int64_t k = 0; k < n; k++) {
        int fresh;
        int64_t len = ends[k] - starts[k];
        map_slot(m, (th[ends[k]] - th[starts[k]] * POW[len]) ^ ((uint64_t)len << 48), &fresh);
        if (!fresh) { *dups += 1; *dup_chars += (double)(ends[k] - starts[k]); }
    }
}

static __thread Scratch SCRATCH;
static __thread int64_t *SEG_START, *SEG_END, SEG_CAP;

static int powers(int64_t n) {
    if (n < POW_N) return 0;
    int64_t cap = n + n / 2 + 1024;
    uint64_t *q = realloc(POW, cap * 8);
    if (!q) return -1;
    if (POW_N == 0) q[0] = 1;
    for (int64_t i = POW_N ? POW_N : 1; i < cap; i++) q[i] = q[i - 1] * P;
    POW = q; POW_N = cap;
    return 0;
}

int64_t tq_signals(int64_t n_docs, const int64_t *offsets, const uint8_t *data, const uint8_t *prose,
                   const int32_t *stop_lang, const uint32_t *stop_chars, const int64_t *stop_off, const int64_t *lang_first,
                   int32_t n_langs, int32_t short_line_length, int32_t min_words_per_line, int32_t max_word_length, int32_t terminal_punct,
                   const int32_t *top_ns, int32_t n_top, const int32_t *dup_ns, int32_t n_dup, double *out) {
    Scratch z = SCRATCH;  /* this thread's buffers, kept between calls (given back at the end) */
    /* stop words hashed as tokens are (see tok_hash below), to compare a hash per token and word */
    int64_t n_stop = lang_first[n_langs] < 1024 ? lang_first[n_langs] : 1024, stop_longest = 0;
    uint64_t stop_hash[1024];
    for (int64_t q = 0; q < n_stop; q++) {
        uint64_t h = 0;
        int64_t len = stop_off[q + 1] - stop_off[q];
        for (int64_t j = 0; j < len; j++) h = h * P + stop_chars[stop_off[q] + j] + 1;
        stop_hash[q] = h ^ ((uint64_t)len << 48);
        if (len > stop_longest) stop_longest = len;
    }
    int64_t n_signals = N_BASE_SIGNALS + n_top + n_dup;
    int64_t *seg_start = SEG_START, *seg_end = SEG_END, seg_cap = SEG_CAP;
    int64_t status = 0;
#define OUT(sig) out[(int64_t)(sig) * n_docs + d]
#define CHECK(x) do { if (x) { status = -1; goto done; } } while (0)
    for (int64_t d = 0; d < n_docs; d++) {
        for (int64_t k = 0; k < n_signals; k++) OUT(k) = 0;
        if (!prose[d]) continue;  /* code: judged by the code rules */
        int64_t nbytes = offsets[d + 1] - offsets[d];
        CHECK(grow((void **)&z.text, &z.text_cap, nbytes + 1, 4));
        const uint32_t *s = z.text;
        int64_t n = canonical(data + offsets[d], nbytes, prose[d], z.text);
        OUT(S_CHARS) = (double)n;
        CHECK(grow((void **)&seg_start, &seg_cap, n + 2, 8));
        seg_end = realloc(seg_end, seg_cap * 8);
        CHECK(!seg_end);
        int64_t letters = 0, spaces = 0, unspaced = 0, hashes = 0, ellipses = 0, newlines = 0, nfc_unsafe = 0;
        CHECK(grow((void **)&z.text_hash, &z.text_hash_cap, n + 2, 8));
        CHECK(powers(n + 2));
        z.text_hash[0] = 0;
        for (int64_t i = 0; i < n; i++) {
            uint32_t f = FL(s[i]);
            z.text_hash[i + 1] = z.text_hash[i] * P + s[i] + 1;
            nfc_unsafe += !!(f & F_NFC_UNSAFE);
            letters += !!(f & F_LETTER); spaces += !!(f & F_SPACE); unspaced += !!(f & F_UNSPACED);
            hashes += s[i] == '#'; newlines += s[i] == '\n';
            if (s[i] == 0x2026) ellipses++;
        }
        for (int64_t i = 0; i + 2 < n; i++)
            if (s[i] == '.' && s[i + 1] == '.' && s[i + 2] == '.') { ellipses++; i += 2; }
        OUT(S_LETTERS) = (double)letters; OUT(S_SPACES) = (double)spaces; OUT(S_UNSPACED_LETTERS) = (double)unspaced;
        OUT(S_HASHES) = (double)hashes; OUT(S_ELLIPSES) = (double)ellipses; OUT(S_NEWLINES) = (double)newlines;
        OUT(S_NFC_UNSAFE) = (double)nfc_unsafe;

        /* words */
        z.tok.n = 0;
        CHECK(grow((void **)&z.sufs, &z.sufs_cap, n + 1, 4));
        CHECK(tokenize(&z.tok, s, 0, n, z.sufs));
        int64_t nt = z.tok.n;
        CHECK(grow((void **)&z.tok_hash, &z.tok_cap, nt + 1, 8));
        CHECK(grow((void **)&z.prefix_hash, &z.char_cap, n + 2, 8));
        CHECK(grow((void **)&z.char_at, &z.char_at_cap, nt + 2, 8));
        CHECK(powers(n + 2));
        /* polynomial hashes over the concatenated token characters: a token, or a run of tokens, is a slice */
        int64_t *char_at = z.char_at;
        int64_t concat = 0;
        z.prefix_hash[0] = 0;
        int64_t words = 0, word_chars = 0, alpha_tokens = 0;
        uint64_t stop_seen = 0;
        int32_t lang = stop_lang[d];
        for (int64_t k = 0; k < nt; k++) {
            const uint32_t *w = s + z.tok.start[k];
            int64_t len = z.tok.len[k];
            int non_symbol = 0, alpha = 0;
            char_at[k] = concat;
            for (int64_t j = 0; j < len; j++, concat++) {
                uint32_t f = FL(w[j]);
                non_symbol |= !(f & F_DT_PUNCT);
                alpha |= !!(f & F_PY_ALPHA);
                z.prefix_hash[concat + 1] = z.prefix_hash[concat] * P + w[j] + 1;
            }
            if (non_symbol) { words++; word_chars += len; }
            alpha_tokens += alpha;
            z.tok_hash[k] = (z.prefix_hash[concat] - z.prefix_hash[char_at[k]] * POW[len]) ^ ((uint64_t)len << 48);
            if (lang >= 0 && lang < n_langs && len <= stop_longest) {
                for (int64_t q = lang_first[lang]; q < lang_first[lang + 1] && q - lang_first[lang] < 64; q++) {
                    if (stop_hash[q] == z.tok_hash[k] && stop_off[q + 1] - stop_off[q] == len &&
                        !memcmp(stop_chars + stop_off[q], w, len * 4))
                        stop_seen |= 1ull << (q - lang_first[lang]);
                }
            }
        }
        char_at[nt] = concat;
        OUT(S_TOKENS) = (double)nt; OUT(S_WORDS) = (double)words; OUT(S_WORD_CHARS) = (double)word_chars;
        OUT(S_ALPHA_TOKENS) = (double)alpha_tokens;
        OUT(S_STOP_WORDS) = lang >= 0 ? (double)__builtin_popcountll(stop_seen) : -1.0;

        /* Gopher lines (str.splitlines) and C4 lines, with the tokens of each line */
        {
            int64_t lines = 0, bullets = 0, ell = 0, sentence_count = 0, notices = 0, tk = 0;
            int lorem = 0, curly = 0;
            int64_t i = 0;
            while (i < n) {
                int64_t a = i;
                while (i < n && !is_line_break(s[i])) i++;
                int64_t b = i;
                if (i < n) i++;
                lines++;
                int64_t la = a, lb = b;
                while (la < lb && (FL(s[la]) & F_SPACE)) la++;
                while (lb > la && (FL(s[lb - 1]) & F_SPACE)) lb--;
                if (la < lb && (s[la] == 0x2022 || s[la] == '-')) bullets++;
                if ((lb - la >= 3 && s[lb - 1] == '.' && s[lb - 2] == '.' && s[lb - 3] == '.') || (lb > la && s[lb - 1] == 0x2026)) ell++;
                /* tokens of this line: the text's tokens inside [la, lb) */
                while (tk < nt && z.tok.start[tk] < la) tk++;
                int64_t tk_end = tk;
                while (tk_end < nt && z.tok.start[tk_end] < lb) tk_end++;
                if (la < lb) {
                    int64_t line_words = 0, longest = 0, j = la;
                    while (j < lb) {
                        while (j < lb && (FL(s[j]) & F_SPACE)) j++;
                        int64_t e = j;
                        while (e < lb && !(FL(s[e]) & F_SPACE)) e++;
                        if (e > j) { line_words++; if (e - j > longest) longest = e - j; }
                        j = e;
                    }
                    int found = phrases(s + la, lb - la);
                    notices += (found & (PH_JAVASCRIPT | PH_POLICY)) != 0;
                    if (longest <= max_word_length && line_words >= min_words_per_line) {
                        const uint32_t *line = s + la;
                        int64_t len = lb - la, cited = 0;
                        for (int64_t q = la; q < lb; q++) if (s[q] == '[') { cited = 1; break; }
                        if (cited) {
                            CHECK(grow((void **)&z.line, &z.line_cap, len + 1, 4));
                            len = strip_citations(s + la, lb - la, z.line);
                            line = z.line;
                            found = phrases(line, len);
                        }
                        if (terminal_punct) {  /* C4's END_PUNCTUATION, and not an ellipsis */
                            uint32_t e = len ? line[len - 1] : 0;
                            int ends = e == '.' || e == '?' || e == '!' || e == '"' || e == '\'';
                            if (!ends || (len >= 3 && line[len - 2] == '.' && line[len - 3] == '.' && e == '.')) { tk = tk_end; continue; }
                        }
                        if (found & PH_LOREM) lorem = 1;
                        if (!(found & PH_JAVASCRIPT)) {
                            for (int64_t q = 0; q < len; q++) if (line[q] == '{') { curly = 1; break; }
                            if (!(found & PH_POLICY)) {
                                if (cited) {
                                    z.line_tok.n = 0;
                                    CHECK(tokenize(&z.line_tok, line, 0, len, z.sufs));
                                    sentence_count += sentences(line, &z.line_tok, 0, z.line_tok.n);
                                } else {
                                    sentence_count += sentences(s, &z.tok, tk, tk_end);
                                }
                            }
                        }
                    }
                }
                tk = tk_end;
            }
            OUT(S_GOPHER_LINES) = (double)lines; OUT(S_BULLET_LINES) = (double)bullets; OUT(S_ELLIPSIS_LINES) = (double)ell;
            OUT(S_LOREM_IPSUM) = lorem; OUT(S_CURLY_BRACKET) = curly; OUT(S_SENTENCES) = (double)sentence_count;
            OUT(S_NOTICE_LINES) = (double)notices;
        }

        /* paragraphs: re.split(r"\n{2,}", text.strip()) */
        {
            int64_t a = 0, b = n, k = 0;
            while (a < b && (FL(s[a]) & F_SPACE)) a++;
            while (b > a && (FL(s[b - 1]) & F_SPACE)) b--;
            int64_t i = a, start = a;
            while (i < b) {
                if (s[i] == '\n' && i + 1 < b && s[i + 1] == '\n') {
                    seg_start[k] = start; seg_end[k] = i; k++;
                    while (i < b && s[i] == '\n') i++;
                    start = i;
                } else i++;
            }
            seg_start[k] = start; seg_end[k] = b; k++;
            double dups, dup_chars;
            CHECK(map_reserve(&z.map, k));
            duplicates(&z.map, z.text_hash, seg_start, seg_end, k, &dups, &dup_chars);
            OUT(S_PARAGRAPHS) = (double)k; OUT(S_DUP_PARAGRAPHS) = dups; OUT(S_DUP_PARAGRAPH_CHARS) = dup_chars;
        }
        /* lines: re.split("\n+", text) */
        {
            int64_t i = 0, start = 0, k = 0;
            while (i < n) {
                if (s[i] == '\n') {
                    seg_start[k] = start; seg_end[k] = i; k++;
                    while (i < n && s[i] == '\n') i++;
                    start = i;
                } else i++;
            }
            seg_start[k] = start; seg_end[k] = n; k++;
            double dups, dup_chars;
            CHECK(map_reserve(&z.map, k));
            duplicates(&z.map, z.text_hash, seg_start, seg_end, k, &dups, &dup_chars);
            OUT(S_LINES) = (double)k; OUT(S_DUP_LINES) = dups; OUT(S_DUP_LINE_CHARS) = dup_chars;
        }
        /* FineWeb lines: text.split("\n"), blank ones left out */
        {
            int64_t i = 0, k = 0, punct = 0, shorts = 0;
            while (i <= n) {
                int64_t a = i;
                while (i < n && s[i] != '\n') i++;
                int64_t b = i;
                i++;
                int blank = 1;
                for (int64_t q = a; q < b; q++) if (!(FL(s[q]) & F_SPACE)) { blank = 0; break; }
                if (blank) continue;
                seg_start[k] = a; seg_end[k] = b; k++;
                punct += !!(FL(s[b - 1]) & F_DT_TERMINAL);
                shorts += (b - a) <= short_line_length;
            }
            double dups, dup_chars;
            CHECK(map_reserve(&z.map, k));
            duplicates(&z.map, z.text_hash, seg_start, seg_end, k, &dups, &dup_chars);
            OUT(S_FW_LINES) = (double)k; OUT(S_FW_PUNCT_LINES) = (double)punct; OUT(S_FW_SHORT_LINES) = (double)shorts;
            OUT(S_FW_DUP_CHARS) = dup_chars;
        }

        /* n-grams: the most frequent one (ties: the first seen) and greedy repeated runs */
        for (int32_t q = 0; q < n_top; q++) {
            int64_t ng = top_ns[q], m = nt - ng + 1;
            if (m <= 0) { OUT(N_BASE_SIGNALS + q) = -1; continue; }
            CHECK(map_reserve(&z.map, m));
            int32_t best_count = 0, best_first = 0;
            for (int64_t i = 0; i < m; i++) {
                uint64_t key = 0;
                for (int64_t j = 0; j < ng; j++) key = key * P + z.tok_hash[i + j];
                int fresh;
                int64_t slot = map_slot(&z.map, key, &fresh);
                if (fresh) { z.map.aux[slot] = (int32_t)i; z.map.vals[slot] = 0; }
                int32_t c = ++z.map.vals[slot];
                if (c > best_count || (c == best_count && z.map.aux[slot] < best_first)) {
                    best_count = c; best_first = z.map.aux[slot];
                }
            }
            int64_t chars = ng - 1;
            for (int64_t j = 0; j < ng; j++) chars += z.tok.len[best_first + j];
            OUT(N_BASE_SIGNALS + q) = (double)chars * best_count;
        }
        if (n_dup) {
            for (int32_t q = 0; q < n_dup; q++) {
                int64_t ng = dup_ns[q], idx = 0, repeated = 0;
                CHECK(map_reserve(&z.map, nt + 1));
                while (idx < nt - ng + 1) {
                    int64_t a = char_at[idx], b = char_at[idx + ng];
                    uint64_t key = (z.prefix_hash[b] - z.prefix_hash[a] * POW[b - a]) ^ ((uint64_t)(b - a) << 48);
                    int fresh;
                    map_slot(&z.map, key, &fresh);
                    if (!fresh) { repeated += b - a; idx += ng; }
                    else idx += 1;
                }
                OUT(N_BASE_SIGNALS + n_top + q) = (double)repeated;
            }
        }
    }
done:
    SCRATCH = z;
    SEG_START = seg_start; SEG_END = seg_end; SEG_CAP = seg_cap;
    return status;
#undef OUT
#undef CHECK
}

/* normalize's view of one text (into text, *text_len code points) and its words (start, length
 * pairs into out, at most cap of them); returns the number of words, or -1. For tests and tools. */
int64_t tq_tokens(const uint8_t *data, int64_t nbytes, int prose, uint32_t *text, int64_t *text_len, int32_t *out, int64_t cap) {
    int32_t *sufs = malloc((nbytes + 1) * 4);
    Tokens t = {0};
    int64_t result = -1;
    if (sufs) {
        int64_t n = canonical(data, nbytes, prose, text);
        *text_len = n;
        if (!tokenize(&t, text, 0, n, sufs)) {
            result = t.n;
            for (int64_t k = 0; k < t.n && k < cap; k++) { out[2 * k] = t.start[k]; out[2 * k + 1] = t.len[k]; }
        }
    }
    free(sufs); free(t.start); free(t.len);
    return result;
}
