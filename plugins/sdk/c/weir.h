/*
 * weir.h: what a weir plugin written in C needs, the same things the Rust guest library
 * (plugins/guest) gives Rust plugins: a pool cache refreshed in `pool_changed`, config
 * parsing that turns a bad key into `invalid-config` instead of a trap, error helpers,
 * shared u64 counters, a fast random source and logging through the host.
 *
 * Header-only, on top of the bindings `wit-bindgen c` generates for the plugin's world.
 * Include the world's header first, then name the world and include this one:
 *
 *     #include "balancer_plugin.h"
 *     #define WEIR_WORLD balancer_plugin
 *     #include "weir.h"
 *
 * It uses no WASI: its random source is seeded from the pool's shared secret and a pool
 * counter, so a plugin built with it imports only weir's interfaces and needs no preview1
 * adapter (docs/plugins.md, "In C"). Link with -Wl,-z,stack-size=65536: zig's default
 * 16 MiB stack alone exceeds weir's default memory limit.
 */
#ifndef WEIR_H
#define WEIR_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef WEIR_WORLD
#error "define WEIR_WORLD as the world's C prefix (balancer_plugin, affinity_plugin, health_plugin) before including weir.h"
#endif

#define WEIR_CAT_(a, b) a##b
#define WEIR_CAT(a, b) WEIR_CAT_(a, b)

/* The world's string type and its helpers. */
typedef WEIR_CAT(WEIR_WORLD, _string_t) weir_string_t;
#define weir_string_free WEIR_CAT(WEIR_WORLD, _string_free)

typedef weir_plugin_types_backend_id_t weir_backend_id_t;
typedef weir_plugin_types_backend_t weir_backend_t;
typedef weir_plugin_types_plugin_error_t weir_plugin_error_t;

/* ------------------------------------------------------------------------------------ */
/* Strings. */

/* A string borrowing a NUL-terminated C string, to pass to an import. */
static inline weir_string_t weir_str(const char *s) {
    weir_string_t out = {(uint8_t *)s, strlen(s)};
    return out;
}

/* Whether `s` holds exactly the NUL-terminated `c`. */
static inline bool weir_str_eq(const weir_string_t *s, const char *c) {
    size_t n = strlen(c);
    return s->len == n && memcmp(s->ptr, c, n) == 0;
}

/* Whether two strings are equal. */
static inline bool weir_str_same(const weir_string_t *a, const weir_string_t *b) {
    return a->len == b->len && memcmp(a->ptr, b->ptr, a->len) == 0;
}

/* ------------------------------------------------------------------------------------ */
/* Errors. An export's error text is freed by the bindings after the call, so it is
 * malloc'ed here. Each returns false, for `return weir_invalid_config(err, ...)`. */

static inline void weir_vformat(weir_string_t *out, const char *fmt, va_list ap) {
    char buf[256];
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    size_t len = n < 0 ? 0 : (size_t)n >= sizeof buf ? sizeof buf - 1 : (size_t)n;
    out->ptr = (uint8_t *)malloc(len ? len : 1);
    out->len = out->ptr ? len : 0;
    if (out->ptr) memcpy(out->ptr, buf, len);
}

/* `configure` refused its config: the host refuses to load the plugin and shows it. */
static inline bool weir_invalid_config(weir_plugin_error_t *err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    err->tag = WEIR_PLUGIN_TYPES_PLUGIN_ERROR_INVALID_CONFIG;
    weir_vformat(&err->val.invalid_config, fmt, ap);
    va_end(ap);
    return false;
}

/* Any other failure outside `pick`: the host logs it and counts a plugin error. */
static inline bool weir_internal(weir_plugin_error_t *err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    err->tag = WEIR_PLUGIN_TYPES_PLUGIN_ERROR_INTERNAL;
    weir_vformat(&err->val.internal, fmt, ap);
    va_end(ap);
    return false;
}

/* ------------------------------------------------------------------------------------ */
/* Logging through the host (`log.write`): lines land in weir's log tagged with the
 * plugin and pool. Do not log per `pick` at info or above. */

#define WEIR_TRACE WEIR_PLUGIN_LOG_LEVEL_TRACE
#define WEIR_DEBUG WEIR_PLUGIN_LOG_LEVEL_DEBUG
#define WEIR_INFO WEIR_PLUGIN_LOG_LEVEL_INFO
#define WEIR_WARN WEIR_PLUGIN_LOG_LEVEL_WARN
#define WEIR_ERROR WEIR_PLUGIN_LOG_LEVEL_ERROR

static inline void weir_log(weir_plugin_log_level_t level, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    weir_string_t message = {(uint8_t *)buf, n < 0 ? 0 : (size_t)n >= sizeof buf ? sizeof buf - 1 : (size_t)n};
    weir_plugin_log_write(level, &message);
}

/* ------------------------------------------------------------------------------------ */
/* Config: a flat JSON object (what weir hands `configure`) against a table of keys.
 *
 *     char *header = "x-zone"; int64_t ttl = 600000;
 *     weir_config_key_t keys[] = {
 *         {"header", WEIR_CONFIG_STRING, &header, false},
 *         {"ttl_ms", WEIR_CONFIG_INTEGER, &ttl, false},
 *     };
 *     if (!weir_parse_config(config, keys, 2, err)) return false;
 *
 * A key not in the table, a value of another type and a missing required key give
 * `invalid-config` naming the key. A string value is stored malloc'ed (`char **`, NUL-
 * terminated; the previous pointer is not freed, as it may be a literal default). */

typedef enum { WEIR_CONFIG_STRING, WEIR_CONFIG_INTEGER, WEIR_CONFIG_NUMBER, WEIR_CONFIG_BOOL } weir_config_kind_t;

typedef struct {
    const char *name;
    weir_config_kind_t kind;
    /* char **, int64_t *, double *, bool * by kind. */
    void *out;
    bool required;
} weir_config_key_t;

typedef struct {
    const uint8_t *p, *end;
} weir_json_t;

static inline void weir_json_ws(weir_json_t *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

/* A JSON string at j->p into a malloc'ed NUL-terminated copy (escapes decoded; \u
 * escapes outside ASCII are kept as UTF-8 of the code unit). NULL: malformed. */
static inline char *weir_json_string(weir_json_t *j) {
    if (j->p >= j->end || *j->p != '"') return NULL;
    j->p++;
    char *out = (char *)malloc((size_t)(j->end - j->p) * 3 + 1);
    if (!out) return NULL;
    size_t n = 0;
    while (j->p < j->end && *j->p != '"') {
        uint8_t c = *j->p++;
        if (c != '\\') {
            out[n++] = (char)c;
            continue;
        }
        if (j->p >= j->end) break;
        c = *j->p++;
        switch (c) {
        case 'n': out[n++] = '\n'; break;
        case 't': out[n++] = '\t'; break;
        case 'r': out[n++] = '\r'; break;
        case 'b': out[n++] = '\b'; break;
        case 'f': out[n++] = '\f'; break;
        case 'u': {
            unsigned v = 0;
            for (int i = 0; i < 4; i++) {
                if (j->p >= j->end) { free(out); return NULL; }
                uint8_t h = *j->p++;
                v = v * 16 + (h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : 99);
                if (v > 0xffff) { free(out); return NULL; }
            }
            if (v < 0x80) out[n++] = (char)v;
            else if (v < 0x800) { out[n++] = (char)(0xc0 | v >> 6); out[n++] = (char)(0x80 | (v & 0x3f)); }
            else { out[n++] = (char)(0xe0 | v >> 12); out[n++] = (char)(0x80 | (v >> 6 & 0x3f)); out[n++] = (char)(0x80 | (v & 0x3f)); }
            break;
        }
        default: out[n++] = (char)c;
        }
    }
    if (j->p >= j->end) { free(out); return NULL; }
    j->p++;
    out[n] = 0;
    return out;
}

/* What kind of JSON value starts at j->p, for messages. */
static inline const char *weir_json_kind(const weir_json_t *j) {
    if (j->p >= j->end) return "nothing";
    switch (*j->p) {
    case '"': return "a string";
    case '{': return "a table";
    case '[': return "an array";
    case 't': case 'f': return "a boolean";
    case 'n': return "null";
    default: return "a number";
    }
}

static inline const char *weir_config_kind_name(weir_config_kind_t k) {
    switch (k) {
    case WEIR_CONFIG_STRING: return "a string";
    case WEIR_CONFIG_INTEGER: return "an integer";
    case WEIR_CONFIG_NUMBER: return "a number";
    default: return "a boolean";
    }
}

static inline bool weir_parse_config(const weir_string_t *config, const weir_config_key_t *keys, size_t n_keys,
                                     weir_plugin_error_t *err) {
    weir_json_t j = {config->ptr, config->ptr + config->len};
    bool seen[64] = {false};
    if (n_keys > 64) return weir_internal(err, "weir_parse_config: more than 64 keys");
    weir_json_ws(&j);
    if (j.p == j.end || (j.end - j.p >= 4 && memcmp(j.p, "null", 4) == 0)) goto done;
    if (*j.p != '{') return weir_invalid_config(err, "expected a table, got %s", weir_json_kind(&j));
    j.p++;
    weir_json_ws(&j);
    if (j.p < j.end && *j.p == '}') { j.p++; goto done; }
    for (;;) {
        weir_json_ws(&j);
        char *name = weir_json_string(&j);
        if (!name) return weir_invalid_config(err, "not JSON: expected a key");
        weir_json_ws(&j);
        if (j.p >= j.end || *j.p != ':') { free(name); return weir_invalid_config(err, "not JSON: expected ':'"); }
        j.p++;
        weir_json_ws(&j);
        size_t k = 0;
        while (k < n_keys && strcmp(keys[k].name, name) != 0) k++;
        if (k == n_keys) {
            char known[200] = "";
            for (size_t i = 0; i < n_keys; i++) {
                strncat(known, i ? ", " : "", sizeof known - strlen(known) - 1);
                strncat(known, keys[i].name, sizeof known - strlen(known) - 1);
            }
            bool r = n_keys ? weir_invalid_config(err, "%s: unknown key, expected one of %s", name, known)
                            : weir_invalid_config(err, "%s: unknown key (this plugin takes none)", name);
            free(name);
            return r;
        }
        const weir_config_key_t *key = &keys[k];
        seen[k] = true;
        bool ok = false;
        const char *got = weir_json_kind(&j);
        switch (key->kind) {
        case WEIR_CONFIG_STRING: {
            char *s = weir_json_string(&j);
            if (s) { *(char **)key->out = s; ok = true; }
            break;
        }
        case WEIR_CONFIG_BOOL:
            if (j.end - j.p >= 4 && memcmp(j.p, "true", 4) == 0) { *(bool *)key->out = true; j.p += 4; ok = true; }
            else if (j.end - j.p >= 5 && memcmp(j.p, "false", 5) == 0) { *(bool *)key->out = false; j.p += 5; ok = true; }
            break;
        case WEIR_CONFIG_INTEGER:
        case WEIR_CONFIG_NUMBER: {
            char num[40];
            size_t len = 0;
            while (j.p + len < j.end && len < sizeof num - 1 && strchr("+-0123456789.eE", j.p[len])) len++;
            if (len == 0) break;
            memcpy(num, j.p, len);
            num[len] = 0;
            char *endp;
            if (key->kind == WEIR_CONFIG_INTEGER) {
                long long v = strtoll(num, &endp, 10);
                if (*endp == 0) { *(int64_t *)key->out = v; ok = true; }
                else got = "a number with a fraction";
            } else {
                double v = strtod(num, &endp);
                if (*endp == 0) { *(double *)key->out = v; ok = true; }
            }
            if (ok) j.p += len;
            break;
        }
        }
        if (!ok) {
            bool r = weir_invalid_config(err, "%s: expected %s, got %s", name, weir_config_kind_name(key->kind), got);
            free(name);
            return r;
        }
        free(name);
        weir_json_ws(&j);
        if (j.p < j.end && *j.p == ',') { j.p++; continue; }
        if (j.p < j.end && *j.p == '}') { j.p++; break; }
        return weir_invalid_config(err, "not JSON: expected ',' or '}'");
    }
done:
    for (size_t k = 0; k < n_keys; k++) {
        if (keys[k].required && !seen[k]) {
            return weir_invalid_config(err, "%s: missing (%s)", keys[k].name, weir_config_kind_name(keys[k].kind));
        }
    }
    return true;
}

/* ------------------------------------------------------------------------------------ */
/* The pool. */

/* A per-instance copy of the pool, refreshed only when the host's generation changes:
 * call weir_pool_refresh from `pool_changed`; `pick` then reads `eligible` and `members`
 * without crossing into the host. Zero-initialise it (`static weir_pool_t pool;`). */
typedef struct {
    bool valid;
    uint64_t generation;
    weir_plugin_pool_list_backend_t members;
    weir_plugin_pool_list_backend_id_t eligible;
    uint64_t total_weight;
} weir_pool_t;

/* Re-reads the pool if its generation changed (freeing the lists it held); true when it
 * did. */
static inline bool weir_pool_refresh(weir_pool_t *pool) {
    uint64_t generation = weir_plugin_pool_generation();
    if (pool->valid && pool->generation == generation) return false;
    if (pool->valid) {
        weir_plugin_pool_list_backend_free(&pool->members);
        weir_plugin_pool_list_backend_id_free(&pool->eligible);
    }
    weir_plugin_pool_members(&pool->members);
    weir_plugin_pool_eligible(&pool->eligible);
    pool->generation = generation;
    pool->valid = true;
    pool->total_weight = 0;
    for (size_t i = 0; i < pool->eligible.len; i++) {
        uint32_t id = pool->eligible.ptr[i];
        if (id < pool->members.len) pool->total_weight += pool->members.ptr[id].weight;
    }
    return true;
}

/* The value of label `name` on backend `id`, or NULL. */
static inline const weir_string_t *weir_pool_label(const weir_pool_t *pool, weir_backend_id_t id, const char *name) {
    if (id >= pool->members.len) return NULL;
    const weir_backend_t *b = &pool->members.ptr[id];
    for (size_t i = 0; i < b->labels.len; i++) {
        if (weir_str_eq(&b->labels.ptr[i].f0, name)) return &b->labels.ptr[i].f1;
    }
    return NULL;
}

/* `pool.load-pair(a, b)` unpacked. */
static inline void weir_load_pair(weir_backend_id_t a, weir_backend_id_t b, uint32_t *load_a, uint32_t *load_b) {
    uint64_t packed = weir_plugin_pool_load_pair(a, b);
    *load_a = (uint32_t)(packed >> 32);
    *load_b = (uint32_t)packed;
}

/* A counter shared by every instance of every plugin on the pool, on every thread:
 * resolve it once (in `configure` or `pool_changed`), then weir_counter_next. */
static inline uint32_t weir_counter(const char *name) {
    weir_string_t s = weir_str(name);
    return weir_plugin_pool_counter(&s);
}

static inline uint64_t weir_counter_next(uint32_t counter) {
    return weir_plugin_pool_counter_next(counter);
}

/* ------------------------------------------------------------------------------------ */
/* Random: splitmix64, seeded on first use from the pool's shared secret and a pool
 * counter (distinct for every instance of the pool, on every thread), so no WASI is
 * needed. For tie-breaks and sampling, not cryptography. */

static uint64_t weir_rng_state;

static inline uint64_t weir_random(void) {
    if (weir_rng_state == 0) {
        weir_string_t name = weir_str("weir-c-rng");
        WEIR_CAT(WEIR_WORLD, _list_u8_t) secret;
        weir_plugin_pool_secret(&name, &secret);
        uint64_t seed = 0;
        for (size_t i = 0; i < secret.len && i < 8; i++) seed = seed << 8 | secret.ptr[i];
        WEIR_CAT(WEIR_WORLD, _list_u8_free)(&secret);
        seed ^= weir_counter_next(weir_plugin_pool_counter(&name)) * 0x9e3779b97f4a7c15ull;
        weir_rng_state = seed | 1;
    }
    uint64_t z = (weir_rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A uniform integer in 0..n (n > 0), Lemire's multiply-shift. */
static inline uint32_t weir_below(uint32_t n) {
    return (uint32_t)(((weir_random() >> 32) * (uint64_t)n) >> 32);
}

#endif /* WEIR_H */
