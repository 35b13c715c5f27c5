/* moe_retry.c -- the requests of a MoE call (see moe.h): sending one, counting its rows when it
 * settles, and in a forward with retry_rounds > 0, moving a failed request's rows to their samples'
 * spares, putting a peer down for the rest of the forward and the hedge against stalls.
 *
 * Design notes. The search asks for k_best * (1 + retry_rounds) experts per sample; the first k_best
 * are the sample's slots, the rest its spares, taken best first through the per-sample cursor o->next
 * (set by moe_call.c's dispatch as each wave goes out). A lost request's rows each move to their next
 * spare not on a peer that is down; the spares chosen for one failure are asked together, one request
 * per expert (a new entry in f->exp, which may grow: requests are referred to by index). A peer put
 * down has every other request out to it abandoned (its call_ctx marked: the answer is dropped when it
 * comes) and retried at once. The hedge gives up only on peers that answered nothing in this forward
 * and whose rows all have spares. Retries stop with less than MOE_RETRY_MIN_MS to the deadline, or
 * when a sample has no spare left.
 *
 * The op and its timing are moe_call.c's: it calls in here from its answer callback, its dispatch and
 * its timer, on the loop thread, and settles afterwards. This file calls nothing of moe_call.c's: a
 * request's answer goes to o->answer, the callback moe_call.c set when it made the op.
 */
#include "actors/moe/moe_retry.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/rt_err.h"
#include "runtime/rt_log.h"

/* moe_retry_account counts request ei's rows as answered (ok) or not: it is no longer out for them. */
void moe_retry_account(op *o, int ei, int ok)
{
    const moe_exp *e = &o->f->exp[ei];
    for (int64_t r = 0; r < e->nrows; r++) {
        int64_t b = e->rows[r];
        o->left[b]--;
        if (ok) o->got[b]++;
    }
}

/* moe_retry_send sends request ei (gout: a backward's output gradient, else NULL). Returns 0 (the request is
 * out: counted in pending, live and its rows' left) or the caller's error. */
int moe_retry_send(op *o, int ei, const rx_tensor *gout)
{
    moe_fwd *f = o->f;
    moe_exp *e = &f->exp[ei];
    uint64_t now = rt_clock_us();
    uint64_t ms = o->deadline > now ? (o->deadline - now + 999) / 1000 : 1;
    call_ctx *c = malloc(sizeof *c);
    if (!c) return DMOE_ENOMEM;
    *c = (call_ctx){ o, ei, 0 };
    int rc = o->m->caller.call(o->m->caller.impl, e->uid, &e->addr, e->in, 1 + f->n_extra, gout, ms, o->answer, c);
    if (rc) {
        free(c);
        LOG_WARN("cannot call %s: %s", e->uid, dmoe_strerror(rc));
        return rc;
    }
    e->call = c;
    o->last_sent = now;
    o->pending++;
    o->live++;
    for (int64_t r = 0; r < e->nrows; r++) o->left[e->rows[r]]++;
    return 0;
}

static int same_peer(const wire_maddr *a, const wire_maddr *b)
{
    return a->port == b->port && strcmp(a->host, b->host) == 0;
}

static int is_down(const op *o, const wire_maddr *a)
{
    for (int i = 0; i < o->ndown; i++)
        if (same_peer(&o->down[i], a)) return 1;
    return 0;
}

/* retry_rows moves the rows of failed request ei to their samples' next live spares and sends the new
 * requests (a forward with retries on, while the deadline allows). */
static void retry_rows(op *o, int ei)
{
    moe_fwd *f = o->f;
    if (o->backward || o->m->c.retry_rounds <= 0 || !o->beam || !o->next) return;
    if (rt_clock_us() + MOE_RETRY_MIN_MS * 1000ull >= o->deadline) return;
    int first = f->nexp, k = f->k;
    for (int64_t r = 0; r < f->exp[ei].nrows; r++) {
        int64_t b = f->exp[ei].rows[r];
        int j = 0;
        while (j < k && f->slot_exp[b * k + j] != ei) j++;
        if (j == k) continue;
        const moe_beam_expert *ch;
        size_t n = moe_beam_result(o->beam, b, &ch);
        while ((size_t)o->next[b] < n && is_down(o, &ch[o->next[b]].addr)) o->next[b]++;
        if ((size_t)o->next[b] >= n) continue;   /* no spare left: the slot stays failed */
        const moe_beam_expert *pick = &ch[o->next[b]++];
        int nj = first;
        while (nj < f->nexp && strcmp(f->exp[nj].uid, pick->uid) != 0) nj++;
        if (nj == f->nexp) nj = moe_fwd_add_expert(f, pick);
        if (nj == DMOE_ENOMEM) { LOG_WARN("out of memory retrying the rows of %s", f->exp[ei].uid); break; }
        if (nj < 0) continue;
        moe_exp *e = &f->exp[nj];
        f->slot_exp[b * k + j] = nj;
        f->slot_row[b * k + j] = e->nrows;
        e->rows[e->nrows++] = b;
    }
    for (int nj = first; nj < f->nexp; nj++) {
        if (moe_fwd_inputs(f, nj) != 0 || moe_retry_send(o, nj, NULL) != 0) continue;   /* its rows stay failed */
        f->st.experts_retried++;
        f->st.rows_retried += f->exp[nj].nrows;
        LOG_DEBUG("forward: %lld rows of %s retried on %s", (long long)f->exp[nj].nrows, f->exp[ei].uid, f->exp[nj].uid);
    }
}

/* moe_retry_lost gives up on request ei (failed, or abandoned): its rows are retried, then no longer wait on it. */
void moe_retry_lost(op *o, int ei)
{
    retry_rows(o, ei);
    moe_retry_account(o, ei, 0);
}

/* moe_retry_peer_down puts peer a down for the rest of the forward and abandons every request still out to it. */
void moe_retry_peer_down(op *o, const wire_maddr *a)
{
    moe_fwd *f = o->f;
    if (!is_down(o, a)) {
        if (o->ndown < MOE_MAX_DOWN) o->down[o->ndown++] = *a;
        f->st.peers_down++;
        LOG_DEBUG("forward: peer %s:%u is down for this forward", a->host, (unsigned)a->port);
    }
    int n = f->nexp;   /* not the retries this sends: they avoid the peer */
    for (int ei = 0; ei < n; ei++) {
        moe_exp *e = &f->exp[ei];
        if (!e->call || !same_peer(&e->addr, a)) continue;
        ((call_ctx *)e->call)->abandoned = 1;
        e->call = NULL;
        o->live--;
        moe_retry_lost(o, ei);
    }
}

/* answered_from says whether any request of this forward to peer a has answered (a sign of life). */
static int answered_from(const moe_fwd *f, const wire_maddr *a)
{
    for (int ei = 0; ei < f->nexp; ei++)
        if (f->exp[ei].ok && same_peer(&f->exp[ei].addr, a)) return 1;
    return 0;
}

/* moe_retry_spares_cover says whether every row of the requests out to peer a has a spare left on another peer
 * that is not down: only then can giving up on a lose nothing that waiting for it could have saved. */
int moe_retry_spares_cover(const op *o, const wire_maddr *a)
{
    const moe_fwd *f = o->f;
    if (o->backward || o->m->c.retry_rounds <= 0 || !o->beam || !o->next) return 0;
    for (int ei = 0; ei < f->nexp; ei++) {
        const moe_exp *e = &f->exp[ei];
        if (!e->call || !same_peer(&e->addr, a)) continue;
        for (int64_t r = 0; r < e->nrows; r++) {
            int64_t b = e->rows[r];
            const moe_beam_expert *ch;
            size_t n = moe_beam_result(o->beam, b, &ch), j = (size_t)o->next[b];
            while (j < n && (same_peer(&ch[j].addr, a) || is_down(o, &ch[j].addr))) j++;
            if (j == n) return 0;
        }
    }
    return 1;
}

/* moe_retry_hedge: nothing has answered for the hedge time while samples wait; the requests they wait on, to
 * peers that have not answered anything in this forward, are presumed lost and those peers down -- when
 * spares can take all their rows (a peer that answered some request is alive, merely slow; one whose rows
 * have nowhere else to go keeps its requests until the deadline). */
void moe_retry_hedge(op *o)
{
    moe_fwd *f = o->f;
    int n = f->nexp;   /* not the retries this sends */
    for (int ei = 0; ei < n; ei++) {
        if (!f->exp[ei].call || answered_from(f, &f->exp[ei].addr)) continue;
        int waited = 0;
        for (int64_t r = 0; r < f->exp[ei].nrows && !waited; r++) {
            int64_t b = f->exp[ei].rows[r];
            waited = o->got[b] < o->need[b];
        }
        if (!waited || !moe_retry_spares_cover(o, &f->exp[ei].addr)) continue;
        wire_maddr a = f->exp[ei].addr;
        LOG_DEBUG("forward: %s stalled, its peer is presumed down", f->exp[ei].uid);
        moe_retry_peer_down(o, &a);
    }
}
