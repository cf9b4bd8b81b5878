"""{{name}}: a weighted round robin over the eligible backends. Each backend gets a share of
the requests proportional to its weight; the position is a host counter, shared by every
instance of the plugin on every worker thread.

The pool is read in `pool_changed` (called before the first `pick` and whenever the pool's
membership, weights or health change), never in `pick`. `weir.py` is weir's Python helper
module (the pool cache, config parsing, errors, counters, logging).
"""

import bisect

import weir
from wit_world import exports

# Instance state lives in the module: componentize-py may make a new `Balancer` object per
# call, but the module (like the instance's linear memory) lives as long as the instance.
POOL = weir.PoolCache()
# The running sum of the eligible backends' weights: ENDS[i] sums POOL.eligible[..=i].
ENDS = []
COUNTER = []  # the host counter, resolved in the first `pool_changed`


class Balancer(exports.Balancer):
    def configure(self, config: str) -> None:
        # This plugin takes no options yet: anything but an empty table is refused, so a
        # misspelt key is an error, not silently ignored.
        weir.no_config(config)

    def pool_changed(self) -> None:
        if not COUNTER:
            COUNTER.append(weir.Counter("{{name}}"))
        if not POOL.refresh():
            return
        ENDS.clear()
        total = 0
        for backend_id in POOL.eligible:
            if backend_id < len(POOL.members):
                total += POOL.members[backend_id].weight
            ENDS.append(total)
        weir.debug(f"generation {POOL.generation}: {len(POOL.eligible)} eligible, total weight {total}")

    def pick(self) -> int:
        total = ENDS[-1] if ENDS else 0
        if total == 0:
            raise weir.no_backend()
        at = COUNTER[0].next() % total
        # The first backend whose running sum passes `at`.
        return POOL.eligible[bisect.bisect_right(ENDS, at)]
