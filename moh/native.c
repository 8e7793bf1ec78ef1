/* CPU kernels for the adaptive router's per-token work (loaded by moh/native.py).

   Why C: at the default model size a router works on ~3,400 numbers per layer (429 tokens x 8
   heads), and its torch formulation (moh/route_fast.py, moh/losses.py, moh/difficulty.py) is
   hundreds of tensor operations per training step, each a few microseconds of dispatch for a
   few thousand elements (docs/benchmarks.md, "Router cost"). One loop over the tokens does the
   same work in tens of microseconds.

   What equals what: comparisons, selections, counts and ranks are exact, and the exclusive
   cumulative sum is a double sum rounded once, as aten's CPU cumsum. exp is libm's expf, not
   aten's vectorised one, so the softmax, the sigmoids, logsumexp and everything downstream of
   them agree with torch to a few ulps; the token sums are accumulated in double. The hard
   selection, and the LM loss with it, is therefore the torch path's unless a cumulative
   probability falls within those ulps of its threshold; aux terms and gradients agree to
   float32 rounding (tests/moh/test_native.py, and the route / loss tests run on both).

   Conventions: float32 arrays, row-major, contiguous unless a row stride is passed; `n` tokens,
   `H` heads (at most MAX_HEADS). Compiled with -ffp-contract=off: no fused multiply-add, so
   `a + b * c` rounds twice, as the torch code it replaces does. */

#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_HEADS 256

/* Runs `impl(...)` with the head count H as a compile-time constant for the common widths (the
   argument list names it H_): the per-head loops (softmax, the branch-free sort's H^2 / 2
   comparisons, the selection, the surrogate's gradient) then unroll and vectorise. The same
   arithmetic in the same order, so the same bits. In a training step at 8 heads (~330 tokens a
   layer) route_forward went from 97 to 69 us a call and route_backward from 59 to 53 (with
   -O3; -O2 gives 73 and 56): docs/benchmarks.md, "Seventh session". Other widths run the
   generic loops. */
#define BY_HEADS(H, impl, ...)                                     \
    do {                                                           \
        switch (H) {                                               \
        case 4: { const int64_t H_ = 4; impl(__VA_ARGS__); break; }   \
        case 8: { const int64_t H_ = 8; impl(__VA_ARGS__); break; }   \
        case 16: { const int64_t H_ = 16; impl(__VA_ARGS__); break; } \
        default: { const int64_t H_ = H; impl(__VA_ARGS__); }         \
        }                                                          \
    } while (0)

/* The heads of one token in descending probability, ties in head order (torch's stable
   descending sort). Each pair is compared once and the later head goes first only when it is
   strictly larger, so a head's rank counts the heads before it: no branch on the data (at 8
   heads ~40 ns a token against ~90 ns for an insertion sort, whose branches on random
   probabilities are mispredicted). That count is a permutation only for a total order; a row
   with a NaN takes the insertion sort, which moves an element left only past strictly smaller
   ones (a NaN compares false, so it stays where it is and `order` stays a permutation). */
static inline void sort_desc(const float *p, int64_t H, uint8_t *order) {
    int nan = 0;
    for (int64_t h = 0; h < H; h++) nan |= p[h] != p[h];
    if (nan) {
        for (int64_t i = 0; i < H; i++) {
            int64_t j = i;
            while (j > 0 && p[order[j - 1]] < p[i]) {
                order[j] = order[j - 1];
                j--;
            }
            order[j] = (uint8_t)i;
        }
        return;
    }
    int32_t rank[MAX_HEADS];
    for (int64_t h = 0; h < H; h++) rank[h] = 0;
    for (int64_t h = 0; h < H; h++) {
        for (int64_t k = h + 1; k < H; k++) {
            int32_t k_first = p[k] > p[h];
            rank[h] += k_first;
            rank[k] += 1 - k_first;
        }
    }
    for (int64_t h = 0; h < H; h++) order[rank[h]] = (uint8_t)h;
}

/* Exclusive cumulative probability in sorted order: cum[0] = 0 exactly, cum[j] the float32
   rounding of the double sum of the j largest (aten's CPU cumsum accumulates float in double). */
static inline void exclusive_cumsum(const float *p, const uint8_t *order, int64_t H, float *cum) {
    double acc = 0.0;
    cum[0] = 0.0f;
    for (int64_t j = 1; j < H; j++) {
        acc += (double)p[order[j - 1]];
        cum[j] = (float)acc;
    }
}

/* The logistic function (libm's exp: equal to torch.sigmoid up to a few ulps). */
static inline float sigmoidf_(float z) { return 1.0f / (1.0f + expf(-z)); }

/* softmax of one row of H logits: exp(x - max) / sum. torch's softmax kernel costs ~40 us
   for 429 rows of 8 on this CPU (a per-row setup), this loop a few; the values agree with
   torch's to a few ulps (its exp is a vectorised approximation, this one libm's).
   `lse`, `entropy`: the row's logsumexp, as aux_sums computes it (the same bits), and the
   entropy -sum p log max(p, 1e-12) with log p = (x - max) - log(sum) in double: route_forward's
   token sums for the aux objective use both, without 17 more exp/log calls a token. */
static inline void softmax_row(const float *x, int64_t H, float *p, float *lse, double *entropy) {
    float m = x[0];
    for (int64_t h = 1; h < H; h++) m = x[h] > m ? x[h] : m;
    float s = 0.0f;
    for (int64_t h = 0; h < H; h++) {
        p[h] = expf(x[h] - m);
        s += p[h];
    }
    for (int64_t h = 0; h < H; h++) p[h] /= s;
    *lse = isinf(m) ? m : m + logf(s); /* all -inf: -inf, as torch.logsumexp */
    double log_s = log((double)s), e = 0.0;
    for (int64_t h = 0; h < H; h++) /* the clamp: log(1e-12) below it, as the torch formula */
        e -= (double)p[h] * (p[h] >= 1e-12f ? (double)(x[h] - m) - log_s : (double)logf(1e-12f));
    *entropy = e;
}

/* One token's selection: heads in descending probability while the exclusive cumulative
   probability is < tau and the rank is < kappa, the first always (moh/routing.py
   `select_heads`). Writes the sort order (head of each rank), the 0/1 mask in head order as
   bytes and as floats; returns the count. */
static inline float select_row(const float *p, float ti, float ki, int64_t H, uint8_t *order, uint8_t *hr, float *gr) {
    float cum[MAX_HEADS];
    sort_desc(p, H, order);
    exclusive_cumsum(p, order, H, cum);
    float cnt = 0.0f;
    for (int64_t j = 0; j < H; j++) {
        uint8_t keep = j == 0 || (cum[j] < ti && (float)j < ki);
        hr[order[j]] = keep;
        gr[order[j]] = (float)keep;
        cnt += (float)keep;
    }
    return cnt;
}

/* The logged predictor norm of the adaptive router: (|w_c| + |w_t|) / 2 for its complexity and
   threshold weight vectors of C values each (sums of squares in double). */
static float predictor_norm(int64_t C, const float *w_c, const float *w_t) {
    double a = 0.0, b = 0.0;
    for (int64_t i = 0; i < C; i++) {
        a += (double)w_c[i] * (double)w_c[i];
        b += (double)w_t[i] * (double)w_t[i];
    }
    return 0.5f * ((float)sqrt(a) + (float)sqrt(b));
}

/* AdaptiveRouter.route_reference: the projections -> the routing of each token.
   in:  proj: rows of H + 2 values `row_stride` floats apart: H router logits, the complexity
        logit, the threshold logit; w_c, w_t: the complexity and threshold weight vectors (C);
        valid: NULL, or the real tokens (n bytes): then `sums` (2H + 3) gets this layer's token
        sums over them for the aux objective, [f numerators (H), P numerators (H), z, head count,
        entropy] (losses._layer_sums' sums that need no complexity target; aux_sums, L_SUMS).
   out: probs (n, H); c, kappa, tau, s_t (n) (s_t: the threshold's sigmoid, for the backward
        pass); lse (n): each logit row's logsumexp (the z-loss's, for the backward pass);
        tau_kept (n): 1 where the clamp left tau as it was; order (n, H): the head of each rank,
        for the backward pass; hard (n, H) 0/1 bytes; gates (n, H) the same as float; count (n);
        pred_norm: the logged predictor norm (one call instead of two). */
static inline __attribute__((always_inline)) void route_forward_heads(int64_t n, int64_t H, const float *proj, int64_t row_stride, float k_min,
                   float span_k, float tau_min, float span_t, float tau_lo, float tau_hi,
                   int64_t C, const float *w_c, const float *w_t,
                   float *probs, float *c, float *kappa, float *tau, float *s_t, float *lse,
                   uint8_t *tau_kept, uint8_t *order, uint8_t *hard, float *gates, float *count,
                   float *pred_norm, const uint8_t *valid, float *sums) {
    double f[MAX_HEADS], P[MAX_HEADS], z = 0.0, cnt = 0.0, ent = 0.0;
    memset(f, 0, sizeof f);
    memset(P, 0, sizeof P);
    for (int64_t i = 0; i < n; i++) {
        const float *row = proj + i * row_stride;
        float *p = probs + i * H;
        double entropy;
        softmax_row(row, H, p, lse + i, &entropy);
        float ci = sigmoidf_(row[H]), si = sigmoidf_(row[H + 1]);
        float ki = k_min + span_k * ci;
        float tf = tau_min + span_t * si;
        float ti = tf < tau_lo ? tau_lo : (tf > tau_hi ? tau_hi : tf); /* NaN stays NaN */
        c[i] = ci;
        s_t[i] = si;
        kappa[i] = ki;
        tau[i] = ti;
        tau_kept[i] = (uint8_t)(tf == ti);
        count[i] = select_row(p, ti, ki, H, order + i * H, hard + i * H, gates + i * H);
        if (valid && valid[i]) { /* the sums aux_sums would make, while the token is at hand */
            for (int64_t h = 0; h < H; h++) {
                f[h] += hard[i * H + h] ? 1.0 : 0.0;
                P[h] += (double)p[h];
            }
            z += (double)lse[i] * (double)lse[i];
            cnt += count[i];
            ent += entropy;
        }
    }
    *pred_norm = predictor_norm(C, w_c, w_t);
    if (valid) {
        for (int64_t h = 0; h < H; h++) {
            sums[h] = (float)f[h];
            sums[H + h] = (float)P[h];
        }
        sums[2 * H] = (float)z;
        sums[2 * H + 1] = (float)cnt;
        sums[2 * H + 2] = (float)ent;
    }
}

void route_forward(int64_t n, int64_t H, const float *proj, int64_t row_stride, float k_min,
                   float span_k, float tau_min, float span_t, float tau_lo, float tau_hi,
                   int64_t C, const float *w_c, const float *w_t,
                   float *probs, float *c, float *kappa, float *tau, float *s_t, float *lse,
                   uint8_t *tau_kept, uint8_t *order, uint8_t *hard, float *gates, float *count,
                   float *pred_norm, const uint8_t *valid, float *sums) {
    BY_HEADS(H, route_forward_heads, n, H_, proj, row_stride, k_min, span_k, tau_min, span_t, tau_lo, tau_hi, C, w_c, w_t, probs, c, kappa, tau, s_t, lse, tau_kept, order, hard, gates, count, pred_norm, valid, sums);
}

/* The hard top-p-with-budget mask alone, for probabilities, thresholds and budgets given
   directly (n tokens): route_forward's selection, exposed for known-answer tests. */
void select_heads(int64_t n, int64_t H, const float *probs, const float *tau, const float *kappa,
                  uint8_t *hard) {
    float gates[MAX_HEADS];
    uint8_t order[MAX_HEADS];
    for (int64_t i = 0; i < n; i++) select_row(probs + i * H, tau[i], kappa[i], H, order, hard + i * H, gates);
}

/* The backward pass of route_forward's node (moh/route_fast.py `_AdaptiveRoute`): upstream
   gradients of gates, probs, c, kappa, tau and count (NULL = none), and of the token sums
   (g_sums, 2H + 3, NULL = none; `valid` the real tokens they were summed over, `lse` the
   forward pass's logsumexp) -> the gradient of the projections g_out (n, H + 2): H router
   logits, the complexity logit, the threshold logit. `straight_through` = 0: the gates and
   count carry no gradient (pitfall 1 on purpose).
   The surrogate s_j = sigmoid((tau - C_j) / t1) * sigmoid((kappa - j - 1/2) / t2) of sorted rank
   j gives d s_j / d tau = dz1_j, d s_j / d kappa = dz2_j and, through C_j = sum_{i<j} p_(i),
   d/d p_(i) = -sum_{j>i} dz1_j. The sums: P_h = sum w p_h, z = sum w lse^2 (d lse / d logit =
   p), count = sum w count, entropy = sum w (-sum_h p_h log max(p_h, 1e-12)); f has none. */
static inline __attribute__((always_inline)) void route_backward_heads(int64_t n, int64_t H, const float *probs, const float *c, const float *s_t,
                    const float *kappa, const float *tau, const uint8_t *tau_kept,
                    const uint8_t *orders, const float *g_gates,
                    const float *g_probs, const float *g_c, const float *g_kappa, const float *g_tau,
                    const float *g_count, const uint8_t *valid, const float *g_sums, const float *lse,
                    int straight_through, float t1, float t2, float span_k, float span_t, float *g_out) {
    float cum[MAX_HEADS], gp[MAX_HEADS], dz1[MAX_HEADS];
    int surrogate = straight_through && (g_gates || g_count || g_sums);
    const float *gP = g_sums ? g_sums + H : NULL;
    float gz = g_sums ? g_sums[2 * H] : 0.0f, gcnt = g_sums ? g_sums[2 * H + 1] : 0.0f;
    float gent = g_sums ? g_sums[2 * H + 2] : 0.0f;
    for (int64_t i = 0; i < n; i++) {
        const float *p = probs + i * H;
        float *go = g_out + i * (H + 2);
        float wi = g_sums && valid && valid[i] ? 1.0f : 0.0f;
        for (int64_t h = 0; h < H; h++) {
            gp[h] = g_probs ? g_probs[i * H + h] : 0.0f;
            if (wi != 0.0f) {
                gp[h] += gP[h];
                if (gent != 0.0f) /* d/dp of -p log max(p, 1e-12) */
                    gp[h] += gent * (p[h] >= 1e-12f ? -(logf(p[h]) + 1.0f) : -logf(1e-12f));
            }
        }
        float gk = g_kappa ? g_kappa[i] : 0.0f;
        float gt = g_tau ? g_tau[i] : 0.0f;
        if (surrogate) { /* the forward pass's sort order, and its cumulative sums again */
            const uint8_t *order = orders + i * H;
            float gcount = (g_count ? g_count[i] : 0.0f) + wi * gcnt;
            exclusive_cumsum(p, order, H, cum);
            float tail = 0.0f, sum1 = 0.0f, sum2 = 0.0f;
            for (int64_t j = 0; j < H; j++) {
                int64_t h = order[j];
                float gs = (g_gates ? g_gates[i * H + h] : 0.0f) + gcount;
                float a = sigmoidf_((tau[i] - cum[j]) / t1);
                float b = sigmoidf_((kappa[i] - (float)j - 0.5f) / t2);
                dz1[j] = gs * b * (1.0f - a) * a / t1;
                sum1 += dz1[j];
                sum2 += gs * a * (1.0f - b) * b / t2;
            }
            for (int64_t j = H - 1; j >= 0; j--) { /* p_(j) gets -sum_{k>j} dz1_k */
                gp[order[j]] -= tail;
                tail += dz1[j];
            }
            gt += sum1;
            gk += sum2;
        }
        float dot = 0.0f; /* softmax: d logit_h = p_h (g_h - sum_k g_k p_k); logsumexp: + g p_h */
        for (int64_t h = 0; h < H; h++) dot += gp[h] * p[h];
        float gl = wi * 2.0f * gz * lse[i];
        for (int64_t h = 0; h < H; h++) go[h] = p[h] * (gp[h] - dot) + gl * p[h];
        float ci = c[i], si = s_t[i];
        float gc = (g_c ? g_c[i] : 0.0f) + gk * span_k; /* kappa = k_min + span_k c */
        go[H] = gc * (1.0f - ci) * ci;
        float gtk = tau_kept[i] ? gt * span_t : 0.0f; /* the clamp passes tau where it kept it */
        go[H + 1] = gtk * (1.0f - si) * si;
    }
}

void route_backward(int64_t n, int64_t H, const float *probs, const float *c, const float *s_t,
                    const float *kappa, const float *tau, const uint8_t *tau_kept,
                    const uint8_t *orders, const float *g_gates,
                    const float *g_probs, const float *g_c, const float *g_kappa, const float *g_tau,
                    const float *g_count, const uint8_t *valid, const float *g_sums, const float *lse,
                    int straight_through, float t1, float t2, float span_k, float span_t, float *g_out) {
    BY_HEADS(H, route_backward_heads, n, H_, probs, c, s_t, kappa, tau, tau_kept, orders, g_gates, g_probs, g_c, g_kappa, g_tau, g_count, valid, g_sums, lse, straight_through, t1, t2, span_k, span_t, g_out);
}

/* ---- the aux objective (moh/losses.py `_NativeAux`): every routed layer's token sums, the
   terms and their weighted total, and the backward pass of both, in four calls a step.

   A layer is described by L_FIELDS int64 values (addresses as integers), `layers` holding one
   such record per routed layer: */
enum {
    L_HB,           /* balanced heads Hb */
    L_H,            /* all heads H */
    L_HARD,         /* hard mask rows (bytes, H of them from the row start) */
    L_HARD_STRIDE,  /* bytes between hard rows */
    L_B0,           /* the first balanced head */
    L_PROBS,        /* probabilities (n, Hb) contiguous */
    L_LOGITS,       /* router logits, Hb per row */
    L_LOGIT_STRIDE, /* floats between logit rows */
    L_KAPPA,        /* adaptive: budget kappa (n), else 0 */
    L_COUNT,        /* adaptive: head count (n) */
    L_DIFF,         /* adaptive: difficulty quantile (n, NaN = none), 0 = the "heads" target */
    L_PER_K,        /* balance divided by the mean head count (Switch form) */
    L_SUMS,         /* the layer's sums route_forward made over the same real tokens, [f (H), P (H), z,
                       count, entropy] (the adaptive router, Hb = H), or 0: from the per-token inputs;
                       with them no other per-token input but kappa, difficulty and hard is read */
    L_FIELDS
};
/* The flat sums: [real tokens n, then per layer: f numerators (Hb), P numerators (Hb), z, and
   for adaptive layers complexity, head count, entropy, complexity tokens] (losses._layer_sums),
   float32, accumulated in double and rounded once. */

#define PTR(type, v) ((type)(intptr_t)(v))

static int64_t layer_width(const int64_t *y) { return 2 * y[L_HB] + (y[L_KAPPA] ? 5 : 1); }

/* What token i's complexity is trained toward, and whether it counts (losses._complexity_target):
   with a difficulty quantile u (finite), kappa* = min(max(k_min + span u, k_min), H); without
   one (NaN) target k_min + 0 and weight 0; under the "heads" target the hard count, weight w. */
static float complexity_target(const int64_t *y, int64_t i, float wi, float k_min, float span, float *w_c) {
    const float *d = PTR(const float *, y[L_DIFF]);
    int64_t H = y[L_H];
    if (!d) {
        const uint8_t *hr = PTR(const uint8_t *, y[L_HARD]) + i * y[L_HARD_STRIDE];
        int64_t cnt = 0;
        for (int64_t h = 0; h < H; h++) cnt += hr[h] != 0;
        *w_c = wi;
        return (float)cnt;
    }
    int has = isfinite(d[i]);
    float t = k_min + span * (has ? d[i] : 0.0f);
    t = t < k_min ? k_min : t;
    *w_c = wi * (float)has;
    return t > (float)H ? (float)H : t;
}

/* Forward, part 1: the flat sums of every layer (`flat`, 1 + sum of widths floats) over the real
   tokens, `valid` (n bytes, 1 = real: the weights w are 0 or 1); `lse` (layers x n): each logit
   row's logsumexp, for the backward pass. */
void aux_sums(int64_t n, int64_t layers_n, const int64_t *layers, const uint8_t *valid, float k_min, float span,
              float *lse, float *flat) {
    double real = 0.0;
    for (int64_t i = 0; i < n; i++) real += valid[i] ? 1.0 : 0.0;
    flat[0] = (float)real;
    float *out = flat + 1;
    for (int64_t l = 0; l < layers_n; l++) {
        const int64_t *y = layers + l * L_FIELDS;
        int64_t Hb = y[L_HB];
        const uint8_t *hard = PTR(const uint8_t *, y[L_HARD]) + y[L_B0];
        const float *probs = PTR(const float *, y[L_PROBS]), *logits = PTR(const float *, y[L_LOGITS]);
        const float *kappa = PTR(const float *, y[L_KAPPA]), *count = PTR(const float *, y[L_COUNT]);
        float *ls = lse + l * n;
        double f[MAX_HEADS], P[MAX_HEADS];
        double z = 0.0, cx = 0.0, cnt = 0.0, ent = 0.0, wcs = 0.0;
        memset(f, 0, sizeof f);
        memset(P, 0, sizeof P);
        const float *pre = PTR(const float *, y[L_SUMS]);
        if (pre) { /* the router's sums; the complexity's need the target, so they are made here */
            for (int64_t i = 0; kappa && i < n; i++) {
                float wc;
                double d = (double)complexity_target(y, i, valid[i] ? 1.0f : 0.0f, k_min, span, &wc) - (double)kappa[i];
                cx += (double)wc * d * d;
                wcs += wc;
            }
            for (int64_t h = 0; h < 2 * Hb + 1; h++) out[h] = pre[h]; /* f, P, z */
            if (kappa) {
                out[2 * Hb + 1] = (float)cx;
                out[2 * Hb + 2] = pre[2 * Hb + 1];
                out[2 * Hb + 3] = pre[2 * Hb + 2];
                out[2 * Hb + 4] = (float)wcs;
            }
            out += layer_width(y);
            continue;
        }
        for (int64_t i = 0; i < n; i++) {
            const float *x = logits + i * y[L_LOGIT_STRIDE];
            float m = x[0];
            for (int64_t h = 1; h < Hb; h++) m = x[h] > m ? x[h] : m;
            float s = 0.0f;
            for (int64_t h = 0; h < Hb; h++) s += expf(x[h] - m);
            ls[i] = isinf(m) ? m : m + logf(s); /* all -inf: -inf, as torch.logsumexp */
            double wi = valid[i] ? 1.0 : 0.0;
            const float *p = probs + i * Hb;
            const uint8_t *hr = hard + i * y[L_HARD_STRIDE];
            if (wi != 0.0) {
                for (int64_t h = 0; h < Hb; h++) {
                    f[h] += hr[h] ? wi : 0.0;
                    P[h] += wi * p[h];
                }
                z += wi * (double)ls[i] * (double)ls[i];
            }
            if (kappa) {
                float wc;
                double d = (double)complexity_target(y, i, (float)wi, k_min, span, &wc) - (double)kappa[i];
                cx += (double)wc * d * d;
                wcs += wc;
                if (wi != 0.0) {
                    cnt += wi * count[i];
                    double e = 0.0;
                    for (int64_t h = 0; h < Hb; h++) {
                        float ph = p[h] > 1e-12f ? p[h] : 1e-12f;
                        e -= (double)p[h] * (double)logf(ph);
                    }
                    ent += wi * e;
                }
            }
        }
        for (int64_t h = 0; h < Hb; h++) {
            out[h] = (float)f[h];
            out[Hb + h] = (float)P[h];
        }
        out[2 * Hb] = (float)z;
        if (kappa) {
            out[2 * Hb + 1] = (float)cx;
            out[2 * Hb + 2] = (float)cnt;
            out[2 * Hb + 3] = (float)ent;
            out[2 * Hb + 4] = (float)wcs;
        }
        out += layer_width(y);
    }
}

/* The terms in TERMS order (load_balance, z, then complexity, budget, entropy when a layer is
   adaptive), each averaged over the layers it applies to, in double from the float32 sums
   (losses._terms); returns how many. */
static int64_t terms_of(int64_t layers_n, const int64_t *layers, const float *flat, double target_heads,
                        double *terms) {
    double n = flat[0] > 1.0f ? (double)flat[0] : 1.0;
    double acc[5] = {0, 0, 0, 0, 0};
    int64_t adaptive_layers = 0;
    const float *at = flat + 1;
    for (int64_t l = 0; l < layers_n; l++) {
        const int64_t *y = layers + l * L_FIELDS;
        int64_t Hb = y[L_HB], H = y[L_H];
        double fp = 0.0, fs = 0.0;
        for (int64_t h = 0; h < Hb; h++) {
            double fh = (double)at[h] / n;
            fp += fh * ((double)at[Hb + h] / n);
            fs += fh;
        }
        double balance = (double)Hb * fp;
        acc[0] += y[L_PER_K] ? balance / (fs > 1e-6 ? fs : 1e-6) : balance;
        acc[1] += (double)at[2 * Hb] / n;
        if (y[L_KAPPA]) {
            const float *a = at + 2 * Hb + 1;
            double gap = ((double)a[1] / n - target_heads) / (double)H;
            acc[2] += (double)a[0] / ((double)a[3] > 1.0 ? (double)a[3] : 1.0) / (double)(H * H);
            acc[3] += gap * gap;
            acc[4] += (double)a[2] / n;
            adaptive_layers++;
        }
        at += layer_width(y);
    }
    int64_t k = 0;
    terms[k++] = acc[0] / (double)layers_n;
    terms[k++] = acc[1] / (double)layers_n;
    if (adaptive_layers)
        for (int64_t t = 2; t < 5; t++) terms[k++] = acc[t] / (double)adaptive_layers;
    return k;
}

/* Forward, part 2: out = [total, term_0, ...] (float32) from the (reduced) flat sums; total =
   sum_t weights[t] term_t. */
void aux_terms(int64_t layers_n, const int64_t *layers, const float *flat, double target_heads,
               const double *weights, float *out) {
    double terms[5], total = 0.0;
    int64_t k = terms_of(layers_n, layers, flat, target_heads, terms);
    for (int64_t t = 0; t < k; t++) {
        total += weights[t] * terms[t];
        out[1 + t] = (float)terms[t];
    }
    out[0] = (float)total;
}

/* Backward, part 1: the gradient of the flat sums (g_flat, float32) for the upstream gradients
   of the total (g_total) and of each term (g_terms, 0 where none): term t receives its own plus
   weights[t] g_total, then / the layers it averages. Only the probability, z, complexity,
   head-count and entropy sums carry a gradient; the counts of masks get 0. */
void aux_terms_backward(int64_t layers_n, const int64_t *layers, const float *flat, double target_heads,
                        const double *weights, double g_total, const double *g_terms, float *g_flat) {
    int64_t adaptive_layers = 0;
    for (int64_t l = 0; l < layers_n; l++) adaptive_layers += layers[l * L_FIELDS + L_KAPPA] != 0;
    double gl[5];
    for (int64_t t = 0; t < 5; t++)
        gl[t] = (g_terms[t] + weights[t] * g_total) / (double)(t < 2 ? layers_n : (adaptive_layers ? adaptive_layers : 1));
    double n = flat[0] > 1.0f ? (double)flat[0] : 1.0;
    g_flat[0] = 0.0f;
    const float *at = flat + 1;
    float *g = g_flat + 1;
    for (int64_t l = 0; l < layers_n; l++) {
        const int64_t *y = layers + l * L_FIELDS;
        int64_t Hb = y[L_HB], H = y[L_H];
        double fs = 0.0;
        for (int64_t h = 0; h < Hb; h++) fs += (double)at[h] / n;
        /* balance = Hb sum_h f_h P_h (/ mean_k), P_h = sum_h / n: d/d sum_h = Hb f_h (/ mean_k) / n */
        double scale = gl[0] * (double)Hb / n / (y[L_PER_K] ? (fs > 1e-6 ? fs : 1e-6) : 1.0);
        for (int64_t h = 0; h < Hb; h++) {
            g[h] = 0.0f;
            g[Hb + h] = (float)(scale * ((double)at[h] / n));
        }
        g[2 * Hb] = (float)(gl[1] / n);
        if (y[L_KAPPA]) { /* complexity = sum / max(tokens, 1) / H^2; budget = ((count / n - t) / H)^2 */
            const float *a = at + 2 * Hb + 1;
            g[2 * Hb + 1] = (float)(gl[2] / ((double)a[3] > 1.0 ? (double)a[3] : 1.0) / (double)(H * H));
            g[2 * Hb + 2] = (float)(gl[3] * 2.0 * (((double)a[1] / n - target_heads) / (double)H) / (double)H / n);
            g[2 * Hb + 3] = (float)(gl[4] / n);
            g[2 * Hb + 4] = 0.0f;
        }
        at += layer_width(y);
        g += layer_width(y);
    }
}

/* Backward, part 2: per-token gradients of every layer from the (reduced) g_flat. `grads`:
   4 addresses a layer (d probs (n, Hb) or, with L_SUMS, d sums (2Hb + 3), d logits (n, Hb),
   d kappa (n), d count (n); 0 = not wanted). `ent_grad`: the entropy sum reaches the probabilities (its weight is not 0). */
void aux_sums_backward(int64_t n, int64_t layers_n, const int64_t *layers, const uint8_t *valid, float k_min,
                       float span, const float *lse, const float *g_flat, int ent_grad, const int64_t *grads) {
    const float *g = g_flat + 1;
    for (int64_t l = 0; l < layers_n; l++) {
        const int64_t *y = layers + l * L_FIELDS;
        int64_t Hb = y[L_HB];
        const float *probs = PTR(const float *, y[L_PROBS]), *logits = PTR(const float *, y[L_LOGITS]);
        const float *kappa = PTR(const float *, y[L_KAPPA]), *ls = lse + l * n;
        float *g_probs = PTR(float *, grads[4 * l]), *g_logits = PTR(float *, grads[4 * l + 1]);
        float *g_kappa = PTR(float *, grads[4 * l + 2]), *g_count = PTR(float *, grads[4 * l + 3]);
        const float *gP = g + Hb;
        float gz2 = 2.0f * g[2 * Hb];
        if (y[L_SUMS]) { /* the gradient of the router's sums (slot 0), in their order; kappa's */
            float *g_sums = g_probs;
            if (g_sums) {
                for (int64_t h = 0; h < 2 * Hb + 1; h++) g_sums[h] = g[h]; /* f (0), P, z */
                g_sums[2 * Hb + 1] = kappa ? g[2 * Hb + 2] : 0.0f;
                g_sums[2 * Hb + 2] = kappa && ent_grad ? g[2 * Hb + 3] : 0.0f;
            }
            for (int64_t i = 0; kappa && g_kappa && i < n; i++) {
                float wc, t = complexity_target(y, i, valid[i] ? 1.0f : 0.0f, k_min, span, &wc);
                g_kappa[i] = -2.0f * g[2 * Hb + 1] * wc * (t - kappa[i]);
            }
            g += layer_width(y);
            continue;
        }
        for (int64_t i = 0; i < n; i++) {
            float wi = valid[i] ? 1.0f : 0.0f;
            const float *p = probs + i * Hb;
            if (g_probs) {
                float ge = kappa && ent_grad ? g[2 * Hb + 3] * wi : 0.0f;
                for (int64_t h = 0; h < Hb; h++) {
                    float v = gP[h] * wi;
                    if (ge != 0.0f) { /* ent = -sum p log max(p, 1e-12) */
                        float d = p[h] >= 1e-12f ? -(logf(p[h]) + 1.0f) : -logf(1e-12f);
                        v += ge * d;
                    }
                    g_probs[i * Hb + h] = v;
                }
            }
            if (g_logits) { /* z = sum w lse^2: d/d logit = 2 w lse softmax(logit) */
                const float *x = logits + i * y[L_LOGIT_STRIDE];
                float s = gz2 * wi * ls[i];
                for (int64_t h = 0; h < Hb; h++) g_logits[i * Hb + h] = s * expf(x[h] - ls[i]);
            }
            if (kappa && g_kappa) { /* complexity = sum w_c (target - kappa)^2 */
                float wc, t = complexity_target(y, i, wi, k_min, span, &wc);
                g_kappa[i] = -2.0f * g[2 * Hb + 1] * wc * (t - kappa[i]);
            }
            if (kappa && g_count) g_count[i] = g[2 * Hb + 2] * wi;
        }
        g += layer_width(y);
    }
}

/* A float's place in ascending order as an unsigned key; every NaN gets the largest (sorted
   last, among themselves by position). -0 sorts just before +0, next to it: the tie pass
   compares values, so they share their ranks. */
static inline uint64_t sort_key(float v) {
    if (v != v) return 0xFFFFFFFFu;
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* average_ranks_row for a series of small non-negative integers (head counts: most tokens tie):
   a counting pass instead of the sort, the same ranks (a value's run starts after every
   smaller value). 0 when some value is not one (then nothing is written). */
#define SMALL_INT_VALUES 128
static int small_int_ranks(int64_t n, const float *x, double *ranks) {
    int64_t count[SMALL_INT_VALUES] = {0};
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        if (!(v >= 0.0f && v < (float)SMALL_INT_VALUES) || v != (float)(int)v) return 0; /* NaN fails too */
        count[(int)v]++;
    }
    double rank[SMALL_INT_VALUES];
    int64_t start = 0;
    for (int v = 0; v < SMALL_INT_VALUES; v++) {
        int64_t end = start + count[v] - 1; /* the run of v: sorted positions start..end */
        rank[v] = ((double)start + (double)end) / 2.0;
        start = end + 1;
    }
    for (int64_t i = 0; i < n; i++) ranks[i] = rank[(int)x[i]];
    return 1;
}

/* Ranks 0..n-1 of x (n,), tied values sharing the mean of their ranks (a NaN is a run of its
   own, sorted last), as float64: moh/alignment.py `average_ranks` for one series. `order`,
   `tmp`: int64 scratch of n each. The sort is a stable least-significant-digit radix sort of
   (key << 32 | position) by the key's four bytes (a byte that every value shares is skipped):
   ascending values, equal ones by position, as a stable sort. Branch-free, unlike the merge
   sort it replaced, whose comparisons were mispredicted inside a training step (~60 us for the
   record's three float series there, docs/benchmarks.md "Tenth session"). n < 2^32. */
static void average_ranks_row(int64_t n, const float *x, int64_t *order, int64_t *tmp, double *ranks) {
    if (small_int_ranks(n, x, ranks)) return;
    uint64_t *a = (uint64_t *)order, *b = (uint64_t *)tmp;
    for (int64_t i = 0; i < n; i++) a[i] = sort_key(x[i]) << 32 | (uint64_t)i;
    for (int shift = 32; shift < 64; shift += 8) {
        int64_t count[257] = {0};
        for (int64_t i = 0; i < n; i++) count[((a[i] >> shift) & 0xFF) + 1]++;
        int skip = 0;
        for (int d = 0; d < 256; d++) {
            if (count[d + 1] == n) skip = 1;
            count[d + 1] += count[d];
        }
        if (skip) continue; /* every value has this byte: the order stands */
        for (int64_t i = 0; i < n; i++) b[count[(a[i] >> shift) & 0xFF]++] = a[i];
        uint64_t *t = a;
        a = b;
        b = t;
    }
    for (int64_t i = 0; i < n; i++) order[i] = (int64_t)(a[i] & 0xFFFFFFFFu);
    int64_t start = 0;
    while (start < n) {
        int64_t end = start;
        while (end + 1 < n && x[order[end + 1]] == x[order[start]]) end++;
        double r = ((double)start + (double)end) / 2.0;
        for (int64_t k = start; k <= end; k++) ranks[order[k]] = r;
        start = end + 1;
    }
}

/* average_ranks_row for each of `rows` series of n values (a (rows, n) table). */
void average_ranks(int64_t rows, int64_t n, const float *x, int64_t *order, int64_t *tmp, double *ranks) {
    for (int64_t r = 0; r < rows; r++) average_ranks_row(n, x + r * n, order, tmp, ranks + r * n);
}

/* moh/alignment.py `spearman_rows`: the Spearman correlation of rows 1..rows-1 of x (rows, n)
   with row 0, into out (rows - 1), float64, each clamped to [-1, 1] (NaN for a constant row).
   `order`, `tmp`: int64 scratch of n each; `ranks`: float64 scratch of rows * n. The torch
   formulation's bits: ranks centred by (n - 1) / 2 are multiples of 1/2, so every product and
   sum here is exact whatever its order (for n below alignment.EXACT_N, which the caller checks), and the
   product, square root and division after them are single IEEE roundings on both sides. */
void spearman_rows(int64_t rows, int64_t n, const float *x, int64_t *order, int64_t *tmp, double *ranks,
                   double *out) {
    const double mid = (double)(n - 1) / 2.0;
    for (int64_t r = 0; r < rows; r++) {
        double *c = ranks + r * n;
        average_ranks_row(n, x + r * n, order, tmp, c);
        for (int64_t i = 0; i < n; i++) c[i] -= mid;
    }
    double own = 0.0; /* row 0's sum of squares: its dot product with itself */
    for (int64_t i = 0; i < n; i++) own += ranks[i] * ranks[i];
    for (int64_t r = 1; r < rows; r++) {
        const double *c = ranks + r * n;
        double dot = 0.0, sq = 0.0;
        for (int64_t i = 0; i < n; i++) {
            dot += c[i] * ranks[i];
            sq += c[i] * c[i];
        }
        double v = dot / sqrt(sq * own); /* 0 / 0 = NaN: a constant row; the comparisons keep it */
        out[r - 1] = v > 1.0 ? 1.0 : (v < -1.0 ? -1.0 : v);
    }
}

/* spearman_rows of the table [y; rows] over the tokens `has` marks: y (n,) the values of those
   tokens, rows[r] (r < k) n_all values each, one per token, read at the positions where has
   (n_all bytes) is 1, in order. out (k) float64, and where out32 is not NULL the same rounded
   to float32 (the step record's values). Writes the number of marked positions to *found; when
   it is not n nothing else is written (the caller raises). `table`: float32 scratch of
   (1 + k) * n; `order`, `tmp`, `ranks` as spearman_rows. The bits of gathering the rows first
   and calling spearman_rows. */
void spearman_rows_at(int64_t n_all, const uint8_t *has, int64_t n, const float *y, int64_t k,
                      const float *const *rows, float *table, int64_t *order, int64_t *tmp, double *ranks,
                      double *out, float *out32, int64_t *found) {
    int64_t marked = 0;
    for (int64_t i = 0; i < n_all; i++) marked += has[i] != 0;
    *found = marked;
    if (marked != n) return;
    memcpy(table, y, (size_t)n * sizeof(float));
    float *row = table + n;
    for (int64_t r = 0; r < k; r++, row += n) {
        const float *src = rows[r];
        int64_t j = 0;
        for (int64_t i = 0; i < n_all; i++)
            if (has[i]) row[j++] = src[i];
    }
    spearman_rows(1 + k, n, table, order, tmp, ranks, out);
    if (out32)
        for (int64_t r = 0; r < k; r++) out32[r] = (float)out[r];
}

/* The head-count statistics of L layers' selections (moh/monitor/stacked.py): hard[l] (n_all, H)
   bytes, layer l's selection per token; valid (n_all) bytes, the tokens counted. Writes counts
   (L, n_all) float32, every token's head count (the loss alignment reads the target tokens), and
   stats, float32: per layer the valid tokens' head-count mean, min, max and std (four blocks of
   L), each head's share of them (head_load, L * H), and where hist is set the share using 0..H
   heads (L * (H + 1)). *found: the number of valid tokens (0: only counts written). torch's bits
   (tests/moh/test_native.py): counts and their sums are exact integers (the caller keeps
   n * H under 2^24, exact in float32 as torch sums them); a mean or share is one float32
   division; std is torch's 1-d CPU std below its parallel grain (the caller checks): the squared
   deviations from the float32 mean summed in token order in double, over n, square-rooted in
   double, cast to float32. */
static void head_count_stats(int64_t L, int64_t n_all, int64_t H, const uint8_t *const *hard,
                             const uint8_t *valid, int hist, float *counts, float *stats, int64_t *found) {
    int64_t n = 0;
    for (int64_t i = 0; i < n_all; i++) n += valid[i] != 0;
    *found = n;
    float *load_out = stats + 4 * L, *hist_out = stats + 4 * L + L * H;
    for (int64_t l = 0; l < L; l++) {
        const uint8_t *h = hard[l];
        float *c = counts + l * n_all;
        int64_t load[MAX_HEADS] = {0}, bins[MAX_HEADS + 1] = {0}, sum = 0, lo = H, hi = 0;
        for (int64_t i = 0; i < n_all; i++, h += H) {
            int64_t k = 0;
            for (int64_t j = 0; j < H; j++) k += h[j] != 0;
            c[i] = (float)k;
            if (!valid[i]) continue;
            sum += k;
            lo = k < lo ? k : lo;
            hi = k > hi ? k : hi;
            bins[k]++;
            for (int64_t j = 0; j < H; j++) load[j] += h[j] != 0;
        }
        if (n == 0) continue;
        const float mean = (float)sum / (float)n;
        double dev = 0.0;
        for (int64_t i = 0; i < n_all; i++) {
            if (!valid[i]) continue;
            double d = (double)c[i] - (double)mean;
            dev += d * d;
        }
        stats[l] = mean;
        stats[L + l] = (float)lo;
        stats[2 * L + l] = (float)hi;
        stats[3 * L + l] = (float)sqrt(dev / (double)n);
        for (int64_t j = 0; j < H; j++) load_out[l * H + j] = (float)load[j] / (float)n;
        if (hist)
            for (int64_t k = 0; k <= H; k++) hist_out[l * (H + 1) + k] = (float)bins[k] / (float)n;
    }
}

/* The float series of L layers' routing over the valid tokens (moh/monitor/stacked.py), in one
   pass each: `series` S rows of n_all float32 (every layer's thresholds, then complexities), and
   where `probs` is given L more rows, each token's sum p log max(p, 1e-12) over probs[l]
   (n_all, Hp) float32. valid (n_all bytes) marks the n >= 1 tokens counted. Writes, float32:
   every row's mean, min and max (three blocks of R = S + L rows, or S), then pred (L values)
   copied from pred[l] where pred is given, then where prob_mean is set each layer's mean of
   each probability (L * Hp). Means are double sums over the tokens, divided by n in double and
   rounded once (routing.layer_stats takes them in float64 the same way: the same float32 value
   unless the double sums' different orders straddle a float32 rounding boundary, ~2^-29 of
   values); the entropy term is double throughout. Min and max are exact; a NaN makes its row's
   mean, min and max NaN, as torch's. */
static void series_stats(int64_t n_all, const uint8_t *valid, int64_t n, int64_t S, const float *const *series,
                         int64_t L, int64_t Hp, const float *const *probs, const float *const *pred, int prob_mean, float *out) {
    const int64_t R = S + (probs ? L : 0);
    float *mean = out, *lo = out + R, *hi = out + 2 * R, *tail = out + 3 * R;
    for (int64_t r = 0; r < R; r++) {
        const float *x = r < S ? series[r] : NULL, *p = r < S ? NULL : probs[r - S];
        double sum = 0.0, mn = INFINITY, mx = -INFINITY;
        int nan = 0;
        for (int64_t i = 0; i < n_all; i++) {
            if (!valid[i]) continue;
            double v;
            if (x) {
                v = x[i];
            } else {
                const float *row = p + i * Hp;
                v = 0.0;
                for (int64_t h = 0; h < Hp; h++) {
                    double q = row[h];
                    v += q * log(q < 1e-12 ? 1e-12 : q); /* a NaN q stays NaN, as clamp_min's */
                }
            }
            nan |= v != v;
            sum += v;
            mn = v < mn ? v : mn;
            mx = v > mx ? v : mx;
        }
        mean[r] = (float)(sum / (double)n);
        lo[r] = nan ? NAN : (float)mn;
        hi[r] = nan ? NAN : (float)mx;
    }
    if (pred) {
        for (int64_t l = 0; l < L; l++) tail[l] = *pred[l];
        tail += L;
    }
    if (probs && prob_mean) {
        for (int64_t l = 0; l < L; l++) {
            double acc[MAX_HEADS] = {0.0};
            const float *p = probs[l];
            for (int64_t i = 0; i < n_all; i++, p += Hp)
                if (valid[i])
                    for (int64_t h = 0; h < Hp; h++) acc[h] += p[h];
            for (int64_t h = 0; h < Hp; h++) tail[l * Hp + h] = (float)(acc[h] / (double)n);
        }
    }
}

/* Every value the step record's `layers` entries need, for L layers of one step, in one call
   (moh/monitor/stacked.py): head_count_stats, then series_stats, then, where `loss` is given,
   spearman_rows_at of the loss (n_target values) against every layer's complexity rows
   (complexity[l], n_all values) and head-count rows over the tokens `has` marks. out, float32:
   the counts (L * n_all), the head-count statistics, the float series' block (series_stats:
   R = S + (probs ? L : 0) rows, so 3 R values, then pred, then prob_mean where full), then where
   loss is given the 2L correlations (complexity rows, then head-count rows). found[0]: the valid
   tokens (0: only the counts written), found[1]: the marked ones (not n_target: no correlation
   written, the caller raises). `scratch` (loss given): doubles for spearman_rows_at, (1 + 2L)
   n_target ranks, 2L correlations, then 2 n_target int64 and the (1 + 2L) n_target float32 table. */
void step_layers(int64_t L, int64_t n_all, int64_t H, const uint8_t *const *hard, const uint8_t *valid, int full,
                 int64_t S, const float *const *series, int64_t Hp, const float *const *probs,
                 const float *const *pred, const uint8_t *has, int64_t n_target, const float *loss,
                 const float *const *complexity, double *scratch, float *out, int64_t *found) {
    float *stats = out + L * n_all;
    head_count_stats(L, n_all, H, hard, valid, full, out, stats, found);
    found[1] = 0;
    const int64_t n = found[0];
    if (n == 0) return;
    float *tail = stats + 4 * L + L * H + (full ? L * (H + 1) : 0);
    series_stats(n_all, valid, n, S, series, L, Hp, probs, pred, full, tail);
    if (!loss) return;
    const int64_t R = S + (probs ? L : 0);
    tail += 3 * R + (pred ? L : 0) + (probs && full ? L * Hp : 0);
    const float *rows[2 * L];
    for (int64_t l = 0; l < L; l++) {
        rows[l] = complexity[l];
        rows[L + l] = out + l * n_all;
    }
    const int64_t m = (1 + 2 * L) * n_target;
    double *ranks = scratch, *corr = scratch + m;
    int64_t *order = (int64_t *)(corr + 2 * L);
    spearman_rows_at(n_all, has, n_target, loss, 2 * L, rows, (float *)(order + 2 * n_target), order,
                     order + n_target, ranks, corr, tail, found + 1);
}

/* The per-group gradient norms of moh/optim.py GradNorms in one pass. Column c of the group
   table is squares[c] for c < T (each tensor's squared norm, float32: what the total norm for
   the clip sums), else fused row c - T: the rows of the fused tensors in order, fused[f] being
   rows[f] x width[f] float32 (the gradient; NULL: none, rows of zero), each row's sum of squares
   in double. Group g sums columns cols[start[g]] .. cols[start[g + 1] - 1] in double; out[g] is
   the square root rounded once to float32. `scratch`: double, one per fused row. */
void group_norms(int64_t T, const float *squares, int64_t F, const float *const *fused, const int64_t *rows,
                 const int64_t *width, int64_t G, const int64_t *start, const int64_t *cols, double *scratch,
                 float *out) {
    double *row_sq = scratch;
    for (int64_t f = 0; f < F; f++) {
        const float *g = fused[f];
        for (int64_t r = 0; r < rows[f]; r++) {
            double acc = 0.0;
            if (g)
                for (int64_t j = 0; j < width[f]; j++) {
                    double x = g[r * width[f] + j];
                    acc += x * x;
                }
            *row_sq++ = acc;
        }
    }
    for (int64_t k = 0; k < G; k++) {
        double acc = 0.0;
        for (int64_t i = start[k]; i < start[k + 1]; i++) acc += cols[i] < T ? (double)squares[cols[i]] : scratch[cols[i] - T];
        out[k] = (float)sqrt(acc);
    }
}

/* The complexity target's rank quantiles in one pass (moh/difficulty.py `quantiles_at`):
   the average ranks of the n values of `signal` (the difficulty of the selected positions, in
   row-major order) divided by n - 1 (a single value: 0.5), as float32, written at the
   positions where has (n_all bytes) is 1, NaN elsewhere. `order`, `tmp`: int64 scratch of n
   each; `ranks`: float64 scratch of n. The same bits as rank_quantiles + the masked copy. */
void rank_quantiles_at(int64_t n_all, const uint8_t *has, int64_t n, const float *signal, int64_t *order,
                       int64_t *tmp, double *ranks, float *grid) {
    if (n > 1) average_ranks_row(n, signal, order, tmp, ranks);
    int64_t k = 0;
    for (int64_t i = 0; i < n_all; i++) {
        if (!has[i] || k == n) { /* k == n: more positions than values (a caller's error) */
            grid[i] = NAN;
            continue;
        }
        grid[i] = n > 1 ? (float)(ranks[k] / (double)(n - 1)) : 0.5f;
        k++;
    }
}
