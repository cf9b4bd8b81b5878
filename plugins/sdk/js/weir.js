// weir.js: what a weir plugin written in JavaScript needs, the same things the Rust guest
// library (`plugins/guest`) gives Rust plugins: a pool cache refreshed in `pool-changed`,
// config parsing that turns a bad key into `invalid-config` instead of a trap, error
// helpers, shared `u64` counters and logging through the host.
//
// Use it from a plugin module built with componentize-qjs (QuickJS; see docs/plugins.md):
//
//     import { PoolCache, parseConfig, noBackend } from './weir.js';
//     const pool = new PoolCache();
//     export const balancer = {
//       configure(json) { config = parseConfig(json, { header: { type: 'string', default: 'x-zone' } }); },
//       poolChanged() { pool.refresh(); },
//       pick() { if (pool.eligible.length === 0) throw noBackend(); return pool.eligible[0]; },
//     };
//
// How the component model maps onto JavaScript here (componentize-qjs 0.4): `u32` and
// `u64` are Numbers (a `u64` above 2^53 loses precision), `option<T>` is the value or
// `null`, an exported function returning `result<T, E>` returns T and throws E itself (a
// `variant` as `{ tag, val }`, an `enum` as its case name: the helpers below make them),
// and a record's fields are camelCase.

import * as pool from 'weir:plugin/pool@0.1.0';
import * as log from 'weir:plugin/log@0.1.0';

// ---------------------------------------------------------------------------------------
// Errors: the values a function throws to return `err(E)` (`throw noBackend()`). They are
// the WIT values themselves, not Error objects: an Error thrown out of an export traps.

/** `configure` refused its config: the host refuses to load the plugin and shows `message`. */
export function invalidConfig(message) {
  return { tag: 'invalid-config', val: String(message) };
}

/** Any other failure outside `pick`: the host logs `message` and counts a plugin error. */
export function internal(message) {
  return { tag: 'internal', val: String(message) };
}

/** `pick`: no backend can take this work (503); not a plugin failure. */
export function noBackend() {
  return 'no-backend';
}

/** `pick`: the plugin could not decide; explain why with `log.write` first. */
export function failed() {
  return 'failed';
}

// ---------------------------------------------------------------------------------------
// Config.

const TYPES = new Set(['string', 'number', 'integer', 'boolean', 'object', 'array']);

function typeOf(value) {
  if (Array.isArray(value)) return 'array';
  if (value === null) return 'null';
  if (typeof value === 'number' && Number.isInteger(value)) return 'integer';
  return typeof value;
}

/**
 * Parses the JSON `configure` receives against `schema`, `{ key: spec }` where a spec is a
 * type name (`'string'`, `'number'`, `'integer'`, `'boolean'`, `'object'`, `'array'`: the
 * key is required) or `{ type, default }` (optional). Returns an object with every key of
 * the schema. Throws `invalid-config` naming the key for a missing or mistyped key and for
 * a key the schema does not know (a misspelt key is refused, not ignored).
 */
export function parseConfig(json, schema = {}) {
  let raw;
  try {
    raw = json.trim() === '' ? {} : JSON.parse(json);
  } catch (e) {
    throw invalidConfig(`not JSON: ${e.message}`);
  }
  if (raw === null) raw = {};
  if (typeOf(raw) !== 'object') throw invalidConfig(`expected a table, got ${typeOf(raw)}`);
  for (const key of Object.keys(raw)) {
    if (!Object.hasOwn(schema, key)) {
      const known = Object.keys(schema);
      throw invalidConfig(`${key}: unknown key${known.length ? `, expected one of ${known.join(', ')}` : ' (this plugin takes none)'}`);
    }
  }
  const out = {};
  for (const [key, spec] of Object.entries(schema)) {
    const { type, default: fallback } = typeof spec === 'string' ? { type: spec } : spec;
    if (!TYPES.has(type)) throw internal(`schema of ${key}: unknown type ${type}`);
    if (!Object.hasOwn(raw, key)) {
      if (typeof spec === 'string' || !Object.hasOwn(spec, 'default')) throw invalidConfig(`${key}: missing (a ${type})`);
      out[key] = fallback;
      continue;
    }
    const value = raw[key];
    const got = typeOf(value);
    const ok = got === type || (type === 'number' && got === 'integer');
    if (!ok) throw invalidConfig(`${key}: expected a ${type}, got ${got} ${JSON.stringify(value)}`);
    out[key] = value;
  }
  return out;
}

/** Accepts only an empty config (`{}`, `null` or nothing), for plugins that take none. */
export function noConfig(json) {
  parseConfig(json, {});
}

// ---------------------------------------------------------------------------------------
// The pool.

/**
 * A per-instance copy of the pool, refreshed only when the host's generation changes. Call
 * `refresh()` from `poolChanged`; `pick` then reads `eligible` (ids, ascending) and
 * `members` (records: id, address, weight, maxConnections, labels as [key, value] pairs)
 * without crossing into the host. `generation` is a Number.
 */
export class PoolCache {
  constructor() {
    this.generation = undefined;
    this.members = [];
    this.eligible = [];
    this.totalWeight = 0;
  }

  /** Re-reads the pool if its generation changed; true when it did. */
  refresh() {
    const generation = pool.generation();
    if (generation === this.generation) return false;
    this.generation = generation;
    this.members = pool.members();
    this.eligible = Uint32Array.from(pool.eligible());
    let total = 0;
    for (const id of this.eligible) total += this.members[id].weight;
    this.totalWeight = total;
    return true;
  }

  /** The value of label `name` on backend `id`, or undefined. */
  label(id, name) {
    const member = this.members[id];
    if (member === undefined) return undefined;
    for (const [k, v] of member.labels) if (k === name) return v;
    return undefined;
  }

  /** Address of backend `id` ('' if unknown): its identity across reloads. */
  address(id) {
    return this.members[id]?.address ?? '';
  }
}

const TWO_32 = 4294967296;

/**
 * `pool.load-pair(a, b)` unpacked: `[load of a, load of b]` as Numbers. The packed `u64`
 * arrives as a Number, exact while the load of `a` is below 2^21.
 */
export function loadPair(a, b) {
  const packed = pool.loadPair(a, b);
  const high = Math.floor(packed / TWO_32);
  return [high, packed - high * TWO_32];
}

/**
 * A counter shared by every instance of every plugin on the pool, on every thread (a
 * global sequence such as a round-robin position). Resolve it once, in `configure` or
 * `poolChanged`; `next()` returns a Number (the `u64`, exact below 2^53), starting at 0.
 */
export class Counter {
  constructor(name) {
    this.handle = pool.counter(name);
  }

  next() {
    return pool.counterNext(this.handle);
  }
}

/** A uniform integer in `0..n` (n > 0), from the engine's random source (WASI random). */
export function below(n) {
  return Math.floor(Math.random() * n);
}

// ---------------------------------------------------------------------------------------
// Logging through the host (`log.write`): lines land in weir's log tagged with the
// plugin and pool. Do not log per `pick` at info or above.

export const trace = (message) => log.write('trace', String(message));
export const debug = (message) => log.write('debug', String(message));
export const info = (message) => log.write('info', String(message));
export const warn = (message) => log.write('warn', String(message));
export const error = (message) => log.write('error', String(message));
