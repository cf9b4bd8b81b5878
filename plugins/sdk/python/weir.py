"""weir: what a weir plugin written in Python needs, the same things the Rust guest library
(`plugins/guest`) gives Rust plugins: a pool cache refreshed in `pool_changed`, config
parsing that turns a bad key into `invalid-config` instead of a trap, error helpers,
shared `u64` counters and logging through the host.

Build a plugin with componentize-py, adding this directory to its path (docs/plugins.md):

    componentize-py -d wit -w balancer-plugin componentize -p plugins/sdk/python -p . app -o app.wasm

and use it from the module's export class:

    import weir
    from wit_world import exports

    POOL = weir.PoolCache()

    class Balancer(exports.Balancer):
        def configure(self, config: str) -> None:
            self.config = weir.parse_config(config, {"header": (str, "x-zone")})
        def pool_changed(self) -> None:
            POOL.refresh()
        def pick(self) -> int:
            if not POOL.eligible:
                raise weir.no_backend()
            return POOL.eligible[0]

How the component model maps onto Python here (componentize-py 0.25): `u32` and `u64` are
`int` (a `u64` is masked to 64 bits by the bindings), `option<T>` is the value or `None`,
an exported function returning `result<T, E>` returns T and raises `Err(E)` for E, a
`variant` case is a dataclass (`PluginError_InvalidConfig(value)`) and an `enum` an `Enum`.
"""

import json
import random

from componentize_py_types import Err
from wit_world.imports import log, pool
from wit_world.imports.types import (
    PickError,
    PluginError_Internal,
    PluginError_InvalidConfig,
)

# ---------------------------------------------------------------------------------------
# Errors.


def invalid_config(message: str) -> Err:
    """`configure` refused its config: the host refuses to load the plugin and shows it."""
    return Err(PluginError_InvalidConfig(str(message)))


def internal(message: str) -> Err:
    """Any other failure outside `pick`: the host logs it and counts a plugin error."""
    return Err(PluginError_Internal(str(message)))


def no_backend() -> Err:
    """`pick`: no backend can take this work (503); not a plugin failure."""
    return Err(PickError.NO_BACKEND)


def failed() -> Err:
    """`pick`: the plugin could not decide; explain why with `log.write` first."""
    return Err(PickError.FAILED)


# ---------------------------------------------------------------------------------------
# Config.

_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "table", list: "array"}
_REQUIRED = object()


def _type_name(value) -> str:
    if value is None:
        return "null"
    return _NAMES.get(type(value), type(value).__name__)


def parse_config(text: str, schema: dict) -> dict:
    """Parses the JSON `configure` receives against `schema`, `{key: type}` (required) or
    `{key: (type, default)}` (optional), where type is `str`, `int`, `float`, `bool`,
    `dict` or `list`. Returns a dict with every key of the schema. Raises `invalid-config`
    naming the key for a missing or mistyped key and for a key the schema does not know
    (a misspelt key is refused, not ignored)."""
    try:
        raw = json.loads(text) if text.strip() else {}
    except ValueError as e:
        raise invalid_config(f"not JSON: {e}")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise invalid_config(f"expected a table, got {_type_name(raw)}")
    for key in raw:
        if key not in schema:
            known = ", ".join(schema)
            raise invalid_config(
                f"{key}: unknown key, expected one of {known}" if known else f"{key}: unknown key (this plugin takes none)"
            )
    out = {}
    for key, spec in schema.items():
        kind, default = spec if isinstance(spec, tuple) else (spec, _REQUIRED)
        if key not in raw:
            if default is _REQUIRED:
                raise invalid_config(f"{key}: missing (a {_NAMES.get(kind, kind.__name__)})")
            out[key] = default
            continue
        value = raw[key]
        # JSON has one number type: an integer is a fine float; a bool is no integer.
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if not ok:
            raise invalid_config(
                f"{key}: expected a {_NAMES.get(kind, kind.__name__)}, got {_type_name(value)} {json.dumps(value)}"
            )
        out[key] = value
    return out


def no_config(text: str) -> None:
    """Accepts only an empty config (`{}`, `null` or nothing), for plugins that take none."""
    parse_config(text, {})


# ---------------------------------------------------------------------------------------
# The pool.


class PoolCache:
    """A per-instance copy of the pool, refreshed only when the host's generation changes.
    Call `refresh()` from `pool_changed`; `pick` then reads `eligible` (ids, ascending) and
    `members` (records: id, address, weight, max_connections, labels as (key, value)
    tuples) without crossing into the host."""

    def __init__(self) -> None:
        self.generation = None
        self.members = []
        self.eligible = []
        self.total_weight = 0

    def refresh(self) -> bool:
        """Re-reads the pool if its generation changed; True when it did."""
        generation = pool.generation()
        if generation == self.generation:
            return False
        self.generation = generation
        self.members = pool.members()
        self.eligible = pool.eligible()
        self.total_weight = sum(self.members[i].weight for i in self.eligible)
        return True

    def label(self, backend_id: int, name: str):
        """The value of label `name` on backend `backend_id`, or None."""
        if backend_id >= len(self.members):
            return None
        for k, v in self.members[backend_id].labels:
            if k == name:
                return v
        return None

    def address(self, backend_id: int) -> str:
        """Address of backend `backend_id` ('' if unknown): its identity across reloads."""
        return self.members[backend_id].address if backend_id < len(self.members) else ""


def load_pair(a: int, b: int) -> tuple:
    """`pool.load-pair(a, b)` unpacked: (load of a, load of b)."""
    packed = pool.load_pair(a, b)
    return packed >> 32, packed & 0xFFFFFFFF


class Counter:
    """A counter shared by every instance of every plugin on the pool, on every thread (a
    global sequence such as a round-robin position). Resolve it once, in `configure` or
    `pool_changed`; `next()` returns an int in 0..2**64, starting at 0."""

    def __init__(self, name: str) -> None:
        self.handle = pool.counter(name)

    def next(self) -> int:
        return pool.counter_next(self.handle)


def below(n: int) -> int:
    """A uniform integer in `0..n` (n > 0), from Python's generator (seeded from WASI random)."""
    return random.randrange(n)


def fnv1a64(text: str) -> int:
    """FNV-1a, 64 bits, of `text`'s UTF-8 bytes: a stable key for stick tables."""
    h = 0xCBF29CE484222325
    for byte in text.encode():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


# ---------------------------------------------------------------------------------------
# Logging through the host (`log.write`): lines land in weir's log tagged with the plugin
# and pool. Do not log per `pick` at info or above.


def trace(message) -> None:
    log.write(log.Level.TRACE, str(message))


def debug(message) -> None:
    log.write(log.Level.DEBUG, str(message))


def info(message) -> None:
    log.write(log.Level.INFO, str(message))


def warn(message) -> None:
    log.write(log.Level.WARN, str(message))


def error(message) -> None:
    log.write(log.Level.ERROR, str(message))
