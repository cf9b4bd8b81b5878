"""zone-aware balancer in Python: prefers eligible backends whose `zone` label matches the
request's `x-zone` header, picks between two of them by power of two choices on their
load, and falls back to every eligible backend when the header is absent or no eligible
backend is in that zone. The same policy as examples/plugins/{rust,js,c}.

Build: `just example-plugins` (or `examples/plugins/build.sh python`), which runs
  componentize-py -d wit -w balancer-plugin componentize -p examples/plugins/python \
    -p plugins/sdk/python zone -o target/example-plugins/zone-python.wasm
Load:  balancer = { plugin = "target/example-plugins/zone-python.wasm",
                    config = { header = "x-zone", label = "zone" },
                    memory_limit_mib = 32, call_timeout_ms = 10 }

Config (both optional): `header`, the request header naming the client's zone (default
"x-zone"); `label`, the backend label holding a backend's zone (default "zone").
"""

import weir
from wit_world import exports
from wit_world.imports import request

# Instance state lives in the module: componentize-py may make a new `Balancer` object
# per call, but the module (like the instance's linear memory) lives as long as the instance.
POOL = weir.PoolCache()
CONFIG = {"header": "x-zone", "label": "zone"}
ZONES = {}  # eligible ids by zone, rebuilt in `pool_changed`


def p2c(ids) -> int:
    """Power of two choices among `ids`: the less loaded of two distinct random ones."""
    n = len(ids)
    if n == 1:
        return ids[0]
    i = weir.below(n)
    j = weir.below(n - 1)
    if j >= i:
        j += 1
    a, b = ids[i], ids[j]
    load_a, load_b = weir.load_pair(a, b)
    return b if load_b < load_a else a


class Balancer(exports.Balancer):
    def configure(self, config: str) -> None:
        CONFIG.update(weir.parse_config(config, {"header": (str, "x-zone"), "label": (str, "zone")}))

    def pool_changed(self) -> None:
        if not POOL.refresh():
            return
        ZONES.clear()
        for backend_id in POOL.eligible:
            zone = POOL.label(backend_id, CONFIG["label"])
            if zone is not None:
                ZONES.setdefault(zone, []).append(backend_id)
        weir.debug(f"generation {POOL.generation}: {len(POOL.eligible)} eligible in {len(ZONES)} zones")

    def pick(self) -> int:
        if not POOL.eligible:
            raise weir.no_backend()
        zone = request.header(CONFIG["header"])
        local = ZONES.get(zone) if zone is not None else None
        return p2c(local or POOL.eligible)
