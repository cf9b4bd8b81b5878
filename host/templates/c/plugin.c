/*
 * {{name}}: a weighted round robin over the eligible backends. Each backend gets a share
 * of the requests proportional to its weight; the position is a host counter, shared by
 * every instance of the plugin on every worker thread.
 *
 * The pool is read in `pool-changed` (called before the first `pick` and whenever the
 * pool's membership, weights or health change), never in `pick`. `weir.h` is weir's C
 * helper (the pool cache, config parsing, errors, counters, logging); `wit-bindgen c`
 * generates balancer_plugin.{h,c} from wit/ at build time.
 */
#include "balancer_plugin.h"
#define WEIR_WORLD balancer_plugin
#include "weir.h"

static weir_pool_t pool;
/* ends[i] is the sum of the weights of eligible[0..=i]. */
static uint64_t *ends;
static bool have_counter;
static uint32_t counter;

bool exports_weir_plugin_balancer_configure(balancer_plugin_string_t *config,
                                            exports_weir_plugin_balancer_plugin_error_t *err) {
    /* This plugin takes no options yet: anything but an empty table is refused, so a
     * misspelt key is an error, not silently ignored. */
    return weir_parse_config(config, NULL, 0, err);
}

void exports_weir_plugin_balancer_pool_changed(void) {
    if (!have_counter) {
        counter = weir_counter("{{name}}");
        have_counter = true;
    }
    if (!weir_pool_refresh(&pool)) return;
    free(ends);
    ends = malloc((pool.eligible.len + 1) * sizeof *ends);
    if (!ends) return;
    uint64_t total = 0;
    for (size_t i = 0; i < pool.eligible.len; i++) {
        uint32_t id = pool.eligible.ptr[i];
        if (id < pool.members.len) total += pool.members.ptr[id].weight;
        ends[i] = total;
    }
    weir_log(WEIR_DEBUG, "generation %llu: %zu eligible, total weight %llu", (unsigned long long)pool.generation,
             pool.eligible.len, (unsigned long long)total);
}

bool exports_weir_plugin_balancer_pick(exports_weir_plugin_balancer_backend_id_t *ret,
                                       exports_weir_plugin_balancer_pick_error_t *err) {
    size_t n = pool.eligible.len;
    if (!ends || n == 0 || ends[n - 1] == 0) {
        *err = WEIR_PLUGIN_TYPES_PICK_ERROR_NO_BACKEND;
        return false;
    }
    uint64_t at = weir_counter_next(counter) % ends[n - 1];
    /* The first backend whose running sum passes `at` (binary search). */
    size_t lo = 0, hi = n - 1;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ends[mid] <= at) lo = mid + 1;
        else hi = mid;
    }
    *ret = pool.eligible.ptr[lo];
    return true;
}
