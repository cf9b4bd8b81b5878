//! Host bindings generated from `wit/` by wasmtime's `bindgen!`, kept private; the rest of
//! weir sees only the names re-exported here. The imports (`types`, `pool`, `request`,
//! `log`) are generated once, with the balancer world, and shared by the affinity world.

mod generated {
    wasmtime::component::bindgen!({
        world: "balancer-plugin",
        path: "../wit",
    });
}

mod affinity {
    wasmtime::component::bindgen!({
        world: "affinity-plugin",
        path: "../wit",
        with: {
            "weir:plugin/types@0.1.0": super::generated::weir::plugin::types,
            "weir:plugin/pool@0.1.0": super::generated::weir::plugin::pool,
            "weir:plugin/request@0.1.0": super::generated::weir::plugin::request,
            "weir:plugin/log@0.1.0": super::generated::weir::plugin::log,
        },
    });
}

/// The health world with its optional `health-batch` export: the host binds the two
/// interfaces apart, so a component of world `health-plugin` (no `health-batch`) loads too.
mod health {
    wasmtime::component::bindgen!({
        world: "health-batch-plugin",
        path: "../wit",
        with: {
            "weir:plugin/types@0.1.0": super::generated::weir::plugin::types,
            "weir:plugin/pool@0.1.0": super::generated::weir::plugin::pool,
            "weir:plugin/log@0.1.0": super::generated::weir::plugin::log,
        },
    });
}

/// The optional `state` export (state carried across a swap), bound apart from the
/// balancer and affinity worlds so a component without it loads as before.
mod state {
    wasmtime::component::bindgen!({
        world: "stateful-balancer-plugin",
        path: "../wit",
        with: {
            "weir:plugin/types@0.1.0": super::generated::weir::plugin::types,
            "weir:plugin/pool@0.1.0": super::generated::weir::plugin::pool,
            "weir:plugin/request@0.1.0": super::generated::weir::plugin::request,
            "weir:plugin/log@0.1.0": super::generated::weir::plugin::log,
        },
    });
}

pub(crate) use affinity::{AffinityPlugin, AffinityPluginIndices};
pub(crate) use generated::weir::plugin::types::{
    Backend as WitBackend, Host as TypesHost, IpAddress, PickError, PluginError, Protocol as WitProtocol,
};
pub(crate) use generated::weir::plugin::{log, pool, request};
pub(crate) use generated::{BalancerPlugin, BalancerPluginIndices};
pub(crate) use health::exports::weir::plugin::health as wit_health;
pub(crate) use health::exports::weir::plugin::health_batch as wit_health_batch;
pub(crate) use state::exports::weir::plugin::state as wit_state;

/// Adds the `pool`, `request`, `log` and `types` imports to a linker.
pub(crate) fn add_to_linker(
    linker: &mut wasmtime::component::Linker<crate::plugin::instance::InstanceState>,
) -> wasmtime::Result<()> {
    generated::BalancerPlugin::add_to_linker::<_, wasmtime::component::HasSelf<_>>(linker, |s| s)
}
