// {{name}}: a weighted round robin over the eligible backends. Each backend gets a share
// of the requests proportional to its weight; the position is a host counter, shared by
// every instance of the plugin on every worker thread.
//
// The pool is read in `poolChanged` (called before the first `pick` and whenever the
// pool's membership, weights or health change), never in `pick`. `weir.js` is weir's
// JavaScript helper module (the pool cache, config parsing, errors, counters, logging).

import { PoolCache, Counter, noConfig, noBackend, debug } from './weir.js';

const pool = new PoolCache();
/** The running sum of the eligible backends' weights: `ends[i]` sums `pool.eligible[..=i]`. */
let ends = [];
let counter;

export const balancer = {
  configure(json) {
    // This plugin takes no options yet: anything but an empty table is refused, so a
    // misspelt key is an error, not silently ignored.
    noConfig(json);
  },

  poolChanged() {
    counter ??= new Counter('{{name}}');
    if (!pool.refresh()) return;
    ends = [];
    let total = 0;
    for (const id of pool.eligible) {
      total += pool.members[id]?.weight ?? 0;
      ends.push(total);
    }
    debug(`generation ${pool.generation}: ${pool.eligible.length} eligible, total weight ${total}`);
  },

  pick() {
    const total = ends.length === 0 ? 0 : ends[ends.length - 1];
    if (total === 0) throw noBackend();
    const at = counter.next() % total;
    // The first backend whose running sum passes `at` (binary search).
    let lo = 0;
    let hi = ends.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (ends[mid] <= at) lo = mid + 1;
      else hi = mid;
    }
    return pool.eligible[lo];
  },
};
