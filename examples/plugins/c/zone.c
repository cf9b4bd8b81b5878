/*
 * zone-aware balancer in C: prefers eligible backends whose `zone` label matches the
 * request's `x-zone` header, picks between two of them by power of two choices on their
 * load, and falls back to every eligible backend when the header is absent or no eligible
 * backend is in that zone. The same policy as examples/plugins/{rust,js,python}.
 *
 * Build: `just example-plugins` (or `examples/plugins/build.sh c`), which runs
 *   wit-bindgen c wit --world balancer-plugin --out-dir GEN
 *   python -m ziglang cc --target=wasm32-wasi -mexec-model=reactor -O2 -Wl,-z,stack-size=65536 \
 *     -I GEN -I plugins/sdk/c -o zone-c.core.wasm examples/plugins/c/zone.c \
 *     GEN/balancer_plugin.c GEN/balancer_plugin_component_type.o
 *   wasm-tools component new zone-c.core.wasm -o target/example-plugins/zone-c.wasm
 * Load:  balancer = { plugin = "target/example-plugins/zone-c.wasm", config = { header = "x-zone" } }
 *
 * Config (both optional): `header`, the request header naming the client's zone (default
 * "x-zone"); `label`, the backend label holding a backend's zone (default "zone").
 */
#include "balancer_plugin.h"
#define WEIR_WORLD balancer_plugin
#include "weir.h"

static char *header_name = "x-zone";
static char *label_name = "zone";
static weir_pool_t pool;

/* Eligible ids grouped by zone: zone_ids holds them zone after zone; zone k's are
 * zone_ids[zone_start[k] .. zone_start[k + 1]], its name zone_name[k]. */
static size_t zone_count;
static const weir_string_t **zone_name;
static size_t *zone_start;
static uint32_t *zone_ids;

static void rebuild_zones(void) {
    size_t n = pool.eligible.len;
    free(zone_name);
    free(zone_start);
    free(zone_ids);
    zone_name = malloc((n + 1) * sizeof *zone_name);
    zone_start = malloc((n + 1) * sizeof *zone_start);
    zone_ids = malloc((n + 1) * sizeof *zone_ids);
    zone_count = 0;
    size_t filled = 0;
    if (!zone_name || !zone_start || !zone_ids) return;
    /* O(eligible × zones): pool changes are rare and zones few. */
    for (size_t i = 0; i < n; i++) {
        const weir_string_t *z = weir_pool_label(&pool, pool.eligible.ptr[i], label_name);
        if (!z) continue;
        size_t k = 0;
        while (k < zone_count && !weir_str_same(zone_name[k], z)) k++;
        if (k < zone_count) continue; /* collected with the first backend of its zone */
        zone_name[zone_count] = z;
        zone_start[zone_count] = filled;
        for (size_t m = i; m < n; m++) {
            const weir_string_t *zm = weir_pool_label(&pool, pool.eligible.ptr[m], label_name);
            if (zm && weir_str_same(zm, z)) zone_ids[filled++] = pool.eligible.ptr[m];
        }
        zone_count++;
    }
    zone_start[zone_count] = filled;
}

/* Power of two choices among ids[0..n]: the less loaded of two distinct random ones. */
static uint32_t p2c(const uint32_t *ids, size_t n) {
    if (n == 1) return ids[0];
    uint32_t i = weir_below((uint32_t)n);
    uint32_t j = weir_below((uint32_t)n - 1);
    if (j >= i) j++;
    uint32_t load_a, load_b;
    weir_load_pair(ids[i], ids[j], &load_a, &load_b);
    return load_b < load_a ? ids[j] : ids[i];
}

bool exports_weir_plugin_balancer_configure(balancer_plugin_string_t *config,
                                            exports_weir_plugin_balancer_plugin_error_t *err) {
    weir_config_key_t keys[] = {
        {"header", WEIR_CONFIG_STRING, &header_name, false},
        {"label", WEIR_CONFIG_STRING, &label_name, false},
    };
    return weir_parse_config(config, keys, 2, err);
}

void exports_weir_plugin_balancer_pool_changed(void) {
    if (!weir_pool_refresh(&pool)) return;
    rebuild_zones();
    weir_log(WEIR_DEBUG, "generation %llu: %zu eligible in %zu zones", (unsigned long long)pool.generation,
             pool.eligible.len, zone_count);
}

bool exports_weir_plugin_balancer_pick(exports_weir_plugin_balancer_backend_id_t *ret,
                                       exports_weir_plugin_balancer_pick_error_t *err) {
    if (pool.eligible.len == 0) {
        *err = WEIR_PLUGIN_TYPES_PICK_ERROR_NO_BACKEND;
        return false;
    }
    const uint32_t *ids = pool.eligible.ptr;
    size_t n = pool.eligible.len;
    balancer_plugin_string_t name = weir_str(header_name), zone;
    if (weir_plugin_request_header(&name, &zone)) {
        for (size_t k = 0; k < zone_count; k++) {
            if (weir_str_same(zone_name[k], &zone)) {
                ids = zone_ids + zone_start[k];
                n = zone_start[k + 1] - zone_start[k];
                break;
            }
        }
        balancer_plugin_string_free(&zone);
    }
    *ret = p2c(ids, n);
    return true;
}
