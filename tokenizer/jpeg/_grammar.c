/* Which of many token sequences a JPEG-DCT grammar cursor accepts (tokenizer/jpeg/accepts.py).
 *
 * A port of the body transitions of tokenizer/jpeg/grammar.py (JpegGrammar: allowed() + push()) to a
 * few ints of state, for BPE pieces: piece i is accepted iff the cursor takes all its base ids. The
 * pieces come sorted, each with its common prefix length with the one before, so a shared prefix is
 * stepped once and a failing one rejects every piece that starts with it. grammar.py is the
 * reference; tests/test_bpe_grammar.py checks the two agree mask for mask. */
#include "_scan.h"

/* One id: 1 and S advanced if the cursor takes it, else 0 (grammar.py: allowed()[tok], push(tok)). */
static inline int step(const GCtx *C, GState *S, int tok) {
    const VocabIds *v = &C->v;
    int r = v->dc_range, a = v->ac_range;
    if (S->done) return 0;
    if (S->n_pending) {                              /* inside an escape: its next byte, within its limits */
        int value = tok - v->byte, lo = S->pending_lo[0], hi = S->pending_hi[0];
        if (value < lo || value > hi) return 0;
        if (S->n_pending == 2) {                     /* a high byte inside its limits frees the low byte */
            S->pending_lo[0] = value == lo ? S->pending_lo[1] : 0;
            S->pending_hi[0] = value == hi ? S->pending_hi[1] : 255;
        }
        S->n_pending--;
        if (S->esc_active) {                         /* a DC escape: its value once complete */
            S->esc_payload = S->esc_payload * 256 + value;
            if (!S->n_pending) {
                S->dc[S->esc_comp] += S->esc_sign * (S->esc_payload + r + 1);
                S->esc_active = 0;
            }
        }
        return 1;
    }
    if (S->u == C->n_units) {                        /* every unit coded: only EOS */
        if (tok != v->eos) return 0;
        S->done = 1;
        return 1;
    }
    const int32_t *unit = C->units + 3 * S->u;       /* (start, end, component) */
    int s = unit[0], e = unit[1], c = unit[2], next_no_skip = 0;
    if (s == 0) {                                   /* DC: keep the component's DC in bounds */
        long lo = C->dc_lo[c] - S->dc[c], hi = C->dc_hi[c] - S->dc[c];
        if (tok >= v->dc && tok <= v->dc + 2 * r) {
            long d = tok - v->dc - r;
            if (d < lo || d > hi) return 0;
            S->dc[c] += d;
        } else if (tok == v->dc + 2 * r + 1 || tok == v->dc + 2 * r + 2) {
            int sign = tok == v->dc + 2 * r + 1 ? 1 : -1;
            if (sign > 0 ? hi <= r : lo >= -r) return 0;
            long least = (sign > 0 ? lo : -hi) - r - 1, most = (sign > 0 ? hi : -lo) - r - 1;
            if (least < 0) least = 0;                /* |difference| limits, as payloads */
            S->n_pending = 2;
            S->pending_lo[0] = (int)(least >> 8); S->pending_hi[0] = (int)(most >> 8);
            S->pending_lo[1] = (int)(least & 255); S->pending_hi[1] = (int)(most & 255);
            S->esc_active = 1; S->esc_comp = c; S->esc_sign = sign; S->esc_payload = 0;
        } else return 0;
    } else {                                        /* AC band [s, e) from k */
        int fresh = S->k == s, room = e - S->k, skip_max = 0;
        if (fresh && !C->raster && !S->no_skip) {
            long n = C->n_blocks, left = n * (S->u / n + 1) - S->u;
            skip_max = left < C->max_skip ? (int)left : C->max_skip;
        }
        if (tok == v->eob) {
            if (S->after_zrl || (!C->raster && fresh)) return 0;
        } else if (tok >= v->skip && tok < v->skip + skip_max) {
            int m = tok - v->skip + 1;
            long nxt = S->u + m;
            next_no_skip = m < C->max_skip && nxt / C->n_blocks == S->u / C->n_blocks;
            S->u += m - 1;                           /* entered below, like EOB's u + 1 */
        } else if (tok == v->zrl) {
            if (room < 17) return 0;
            S->k += 16;
            S->after_zrl = 1;
            return 1;
        } else if (tok >= v->ac && tok < v->zrl) {
            int run = (tok - v->ac) / v->ac_stride, slot = (tok - v->ac) % v->ac_stride;
            if (run >= room || run >= 16) return 0;
            S->k += run + 1;
            S->after_zrl = 0;
            if (slot >= 2 * a) {
                int limit = C->ac_max - a - 1;
                S->n_pending = 2;
                S->pending_lo[0] = 0; S->pending_hi[0] = limit >> 8;
                S->pending_lo[1] = 0; S->pending_hi[1] = limit & 255;
            }
            return 1;
        } else return 0;
    }
    S->u++;                                          /* enter the next unit */
    S->k = S->u < C->n_units ? C->units[3 * S->u] : 0;
    S->after_zrl = 0;
    S->no_skip = next_no_skip;
    return 1;
}

void accepts_sorted(const GCtx *C, const GState *start, const int32_t *ids, const int32_t *offsets,
                    const int32_t *order, const int32_t *lcp, size_t n, char *mask) {
    GState states[MAX_PIECE + 1];       /* states[d]: after the first d ids of the current piece */
    int dead = MAX_PIECE + 1;           /* the previous piece failed at its dead-th id (prefix length) */
    states[0] = *start;
    for (size_t i = 0; i < n; i++) {
        int p = order[i], len = offsets[p + 1] - offsets[p], d = lcp[i];
        const int32_t *t = ids + offsets[p];
        mask[p] = 0;
        if (len == 0 || len > MAX_PIECE || dead <= d) continue;   /* a shared prefix already fails */
        dead = MAX_PIECE + 1;
        for (int j = d; j < len; j++) {
            states[j + 1] = states[j];
            if (!step(C, &states[j + 1], t[j])) {
                dead = j + 1;
                break;
            }
        }
        mask[p] = dead > len;
    }
}
