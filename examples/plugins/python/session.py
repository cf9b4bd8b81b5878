"""session affinity in Python: pins a client to a backend by the value of a request header
(a session id), through a stick table the host shares between every instance on every
thread. A request without the header, or whose pinned backend is no longer eligible, is
left to the balancer; `bind` then records where it went. Sets no response header.

Build: `just example-plugins` (or `examples/plugins/build.sh python`), which runs
  componentize-py -d wit -w affinity-plugin componentize -p examples/plugins/python \
    -p plugins/sdk/python session -o target/example-plugins/session-python.wasm
Load:  affinity = { plugin = "target/example-plugins/session-python.wasm",
                    config = { header = "x-session", ttl_ms = 600000 },
                    memory_limit_mib = 32, call_timeout_ms = 10 }

Config (both optional): `header`, the request header carrying the session id (default
"x-session"); `ttl_ms`, how long an unused pin lives (default 600000, 10 minutes).
"""

import weir
from wit_world import exports
from wit_world.imports import pool, request

# Instance state lives in the module: componentize-py may make a new `Affinity` object per
# call, but the module lives as long as the instance.
STATE = {"header": "x-session", "table": 0}


class Affinity(exports.Affinity):
    def configure(self, config: str) -> None:
        c = weir.parse_config(config, {"header": (str, "x-session"), "ttl_ms": (int, 600_000)})
        if c["ttl_ms"] <= 0:
            raise weir.invalid_config(f"ttl_ms: must be positive, got {c['ttl_ms']}")
        STATE["header"] = c["header"]
        STATE["table"] = pool.stick_table("session", c["ttl_ms"])

    def pool_changed(self) -> None:
        pass

    def pinned(self):
        session = request.header(STATE["header"])
        if session is None:
            return None
        return pool.stick_get(STATE["table"], weir.fnv1a64(session))

    def bind(self, chosen: int):
        session = request.header(STATE["header"])
        if session is not None:
            pool.stick_set(STATE["table"], weir.fnv1a64(session), chosen)
        return []
