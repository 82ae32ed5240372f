/* The digit runs the phone recognizer reads: the matches of
 *
 *     [0-9](?:[ \t]?[().\-/]?[ \t]?[0-9]){min_digits - 1,}
 *
 * as Python's re.finditer finds them, in one pass. Between two digits the pattern admits
 * only a gap of non-digits (a blank, a bracket, dot, dash or slash, a blank), so from any
 * digit the next digit of a match is the next digit of the text, reached or not: every
 * match is a maximal chain of digits joined by such gaps, and a chain too short to match
 * has no shorter chain inside it that would. Python's re spent about 40 ns a character
 * here, trying every digit of every number as a start.
 *
 * text: code points (UTF-32); writes the [start, end) of each match, at most cap of them,
 * and returns how many it found.
 */
#include <stdint.h>

static int digit(uint32_t c) { return c >= '0' && c <= '9'; }
static int blank(uint32_t c) { return c == ' ' || c == '\t'; }
static int joiner(uint32_t c) { return c == '(' || c == ')' || c == '.' || c == '-' || c == '/'; }

int64_t tn_phone_runs(const uint32_t *text, int64_t n, int64_t min_digits, int64_t *start, int64_t *end,
                      int64_t cap) {
    int64_t found = 0;
    int64_t i = 0;
    while (i < n) {
        if (!digit(text[i])) {
            i++;
            continue;
        }
        int64_t first = i, last = i, digits = 1;
        for (;;) {
            int64_t k = last + 1;  /* the gap, read greedily as the regex's first try does */
            if (k < n && blank(text[k])) k++;
            if (k < n && joiner(text[k])) k++;
            if (k < n && blank(text[k])) k++;
            if (k >= n || !digit(text[k])) break;
            last = k;
            digits++;
        }
        if (digits >= min_digits && found < cap) {
            start[found] = first;
            end[found] = last + 1;
            found++;
        }
        i = last + 1;
    }
    return found;
}
