/* batch.c -- freeing and failing requests (see batch.h for the types and who touches them). */
#include "actors/serve/batch.h"

#include <stdlib.h>

#include "actors/node/metrics.h"

void ex_req_drop_frame(ex_req *r)
{
    if (r->wm) {
        wire_msg_free(r->wm);
        free(r->wm);
        r->wm = NULL;
    }
    if (r->charge) conn_uncharge(r->c, r->charge);
    r->charge = 0;
    for (int i = 0; i < 2 * KERN_MAX_IO; i++) {
        free(r->owned[i]);
        r->owned[i] = NULL;
    }
}

void ex_req_free(ex_req *r)
{
    if (!r) return;
    ex_req_drop_frame(r);
    act_entry_release(r->cached);
    if (r->c) {
        conn_release(r->c);
        conn_unref(r->c);
    }
    free(r);
}

void ex_reply_error(ex_req *r, int code, const char *msg)
{
    metrics_std_error(r->met, code);
    if (r->c && conn_is_open(r->c)) {
        wire_out *o = wire_error_reply(r->id, code, msg);
        if (o) conn_send(r->c, o);
        else conn_close(r->c, 1);   /* cannot even say so: closing tells the caller instead of silence */
    }
    ex_req_free(r);
}
