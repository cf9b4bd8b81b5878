// zone-aware balancer in JavaScript: prefers eligible backends whose `zone` label matches
// the request's `x-zone` header, picks between two of them by power of two choices on
// their load, and falls back to every eligible backend when the header is absent or no
// eligible backend is in that zone. The same policy as examples/plugins/{rust,python,c}.
//
// Build: `just example-plugins` (or `examples/plugins/build.sh js`), which runs
//   componentize-qjs --sync --wit wit -n balancer-plugin -j examples/plugins/js/zone.js \
//     -o target/example-plugins/zone-js.wasm
// Load:  balancer = { plugin = "target/example-plugins/zone-js.wasm",
//                     config = { header = "x-zone", label = "zone" } }
//
// Config (both optional): `header`, the request header naming the client's zone (default
// "x-zone"); `label`, the backend label holding a backend's zone (default "zone").

import { header } from 'weir:plugin/request@0.1.0';
import { PoolCache, parseConfig, noBackend, loadPair, below, debug } from '../../../plugins/sdk/js/weir.js';

const pool = new PoolCache();
let config = { header: 'x-zone', label: 'zone' };
/** Eligible ids by zone, rebuilt in `poolChanged`. */
let zones = new Map();

/** Power of two choices among `ids`: the less loaded of two distinct random ones. */
function p2c(ids) {
  const n = ids.length;
  if (n === 1) return ids[0];
  const i = below(n);
  let j = below(n - 1);
  if (j >= i) j += 1;
  const [a, b] = [ids[i], ids[j]];
  const [loadA, loadB] = loadPair(a, b);
  return loadB < loadA ? b : a;
}

export const balancer = {
  configure(json) {
    config = parseConfig(json, {
      header: { type: 'string', default: 'x-zone' },
      label: { type: 'string', default: 'zone' },
    });
  },

  poolChanged() {
    if (!pool.refresh()) return;
    zones = new Map();
    for (const id of pool.eligible) {
      const zone = pool.label(id, config.label);
      if (zone === undefined) continue;
      let ids = zones.get(zone);
      if (ids === undefined) zones.set(zone, (ids = []));
      ids.push(id);
    }
    debug(`generation ${pool.generation}: ${pool.eligible.length} eligible in ${zones.size} zones`);
  },

  pick() {
    if (pool.eligible.length === 0) throw noBackend();
    const zone = header(config.header);
    const local = zone === null ? undefined : zones.get(zone);
    return p2c(local ?? pool.eligible);
  },
};
