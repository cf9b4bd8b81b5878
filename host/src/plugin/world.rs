//! The plugin worlds as types: each [`World`] names its linked form (`Pre`) and its
//! instance's exports, and says how to instantiate, configure and tell it of a pool
//! change. [`super::Plugin`] is generic over it, so a balancer can only be asked to pick
//! and an affinity plugin only to look up and bind: there is no "not a balancer" arm.
//! A new world is one more impl here and one more newtype beside [`super::Balancer`].

use wasmtime::Engine;
use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::bindings::{
    AffinityPlugin, AffinityPluginIndices, BalancerPlugin, BalancerPluginIndices, PluginError, wit_health,
    wit_health_batch, wit_state,
};
use super::instance::InstanceState;

/// A WIT world the host calls into.
pub(crate) trait World: 'static {
    /// The world's role, for logs and errors (`balancer`, `affinity`).
    const NAME: &'static str;
    /// The component linked for this world (one per plugin version; a rollback copies it).
    type Pre: Send + Sync + Clone;
    /// One instance's exports.
    type Exports: Send;

    /// Checks that the linked component exports this world and types its exports.
    fn pre(linked: InstancePre<InstanceState>) -> wasmtime::Result<Self::Pre>;
    /// The engine the component was compiled for.
    fn engine(pre: &Self::Pre) -> &Engine;
    /// A new instance in `store`.
    fn instantiate(pre: &Self::Pre, store: &mut Store<InstanceState>) -> wasmtime::Result<Self::Exports>;
    /// `configure(json)`.
    fn configure(
        exports: &Self::Exports,
        store: &mut Store<InstanceState>,
        json: &str,
    ) -> wasmtime::Result<Result<(), PluginError>>;
    /// `pool-changed()`.
    fn pool_changed(exports: &Self::Exports, store: &mut Store<InstanceState>) -> wasmtime::Result<()>;
    /// The instance's `state` export, if the component has one.
    fn state(_exports: &Self::Exports) -> Option<&wit_state::Guest> {
        None
    }
}

/// A component linked for a world whose exports are `I`'s, with its optional `state`
/// export found at link time.
#[derive(Clone)]
pub(crate) struct Linked<I> {
    linked: InstancePre<InstanceState>,
    indices: I,
    state: Option<wit_state::GuestIndices>,
}

impl<I> Linked<I> {
    fn new(
        linked: InstancePre<InstanceState>,
        indices: impl FnOnce(&InstancePre<InstanceState>) -> wasmtime::Result<I>,
    ) -> wasmtime::Result<Self> {
        let indices = indices(&linked)?;
        // Optional: a component without it keeps no state across a swap.
        let state = wit_state::GuestIndices::new(&linked).ok();
        Ok(Self { linked, indices, state })
    }

    fn instantiate<X>(
        &self,
        store: &mut Store<InstanceState>,
        load: impl FnOnce(&I, &mut Store<InstanceState>, &wasmtime::component::Instance) -> wasmtime::Result<X>,
    ) -> wasmtime::Result<WithState<X>> {
        let instance = self.linked.instantiate(&mut *store)?;
        let plugin = load(&self.indices, &mut *store, &instance)?;
        let state = self.state.as_ref().map(|s| s.load(&mut *store, &instance)).transpose()?;
        Ok(WithState { plugin, state })
    }
}

/// One instance's exports `X`, and its `state` export if it has one. Derefs to `X`.
pub(crate) struct WithState<X> {
    plugin: X,
    state: Option<wit_state::Guest>,
}

impl<X> std::ops::Deref for WithState<X> {
    type Target = X;
    fn deref(&self) -> &X {
        &self.plugin
    }
}

/// World `balancer-plugin`.
#[derive(Debug)]
pub(crate) enum BalancerWorld {}

impl World for BalancerWorld {
    const NAME: &'static str = "balancer";
    type Pre = Linked<BalancerPluginIndices>;
    type Exports = WithState<BalancerPlugin>;

    fn pre(linked: InstancePre<InstanceState>) -> wasmtime::Result<Self::Pre> {
        Linked::new(linked, BalancerPluginIndices::new)
    }

    fn engine(pre: &Self::Pre) -> &Engine {
        pre.linked.engine()
    }

    fn instantiate(pre: &Self::Pre, store: &mut Store<InstanceState>) -> wasmtime::Result<Self::Exports> {
        pre.instantiate(store, |i, store, instance| i.load(store, instance))
    }

    fn state(exports: &Self::Exports) -> Option<&wit_state::Guest> {
        exports.state.as_ref()
    }

    fn configure(
        exports: &Self::Exports,
        store: &mut Store<InstanceState>,
        json: &str,
    ) -> wasmtime::Result<Result<(), PluginError>> {
        exports.weir_plugin_balancer().call_configure(store, json)
    }

    fn pool_changed(exports: &Self::Exports, store: &mut Store<InstanceState>) -> wasmtime::Result<()> {
        exports.weir_plugin_balancer().call_pool_changed(store)
    }
}

/// World `affinity-plugin`.
#[derive(Debug)]
pub(crate) enum AffinityWorld {}

impl World for AffinityWorld {
    const NAME: &'static str = "affinity";
    type Pre = Linked<AffinityPluginIndices>;
    type Exports = WithState<AffinityPlugin>;

    fn pre(linked: InstancePre<InstanceState>) -> wasmtime::Result<Self::Pre> {
        Linked::new(linked, AffinityPluginIndices::new)
    }

    fn engine(pre: &Self::Pre) -> &Engine {
        pre.linked.engine()
    }

    fn instantiate(pre: &Self::Pre, store: &mut Store<InstanceState>) -> wasmtime::Result<Self::Exports> {
        pre.instantiate(store, |i, store, instance| i.load(store, instance))
    }

    fn state(exports: &Self::Exports) -> Option<&wit_state::Guest> {
        exports.state.as_ref()
    }

    fn configure(
        exports: &Self::Exports,
        store: &mut Store<InstanceState>,
        json: &str,
    ) -> wasmtime::Result<Result<(), PluginError>> {
        exports.weir_plugin_affinity().call_configure(store, json)
    }

    fn pool_changed(exports: &Self::Exports, store: &mut Store<InstanceState>) -> wasmtime::Result<()> {
        exports.weir_plugin_affinity().call_pool_changed(store)
    }
}

/// World `health-plugin`, or `health-batch-plugin` when the component also exports
/// `health-batch` (found when it is linked; the host then hands it a slot's probe results
/// in one call).
#[derive(Debug)]
pub(crate) enum HealthWorld {}

/// A linked health component: where its `health` functions are, and its `health-batch`
/// ones if it has them.
#[derive(Clone)]
pub(crate) struct HealthPre {
    linked: InstancePre<InstanceState>,
    health: wit_health::GuestIndices,
    batch: Option<wit_health_batch::GuestIndices>,
}

impl HealthPre {
    /// Whether the component exports `health-batch`.
    pub(crate) fn batches(&self) -> bool {
        self.batch.is_some()
    }
}

/// One health instance's exports.
pub(crate) struct HealthExports {
    /// `health`.
    pub(crate) health: wit_health::Guest,
    /// `health-batch`, when the component exports it.
    pub(crate) batch: Option<wit_health_batch::Guest>,
}

impl World for HealthWorld {
    const NAME: &'static str = "health";
    type Pre = HealthPre;
    type Exports = HealthExports;

    fn pre(linked: InstancePre<InstanceState>) -> wasmtime::Result<Self::Pre> {
        let health = wit_health::GuestIndices::new(&linked)?;
        // Optional: a component without it is a `health-plugin` and gets every result
        // through `observe`.
        let batch = wit_health_batch::GuestIndices::new(&linked).ok();
        Ok(HealthPre { linked, health, batch })
    }

    fn engine(pre: &Self::Pre) -> &Engine {
        pre.linked.engine()
    }

    fn instantiate(pre: &Self::Pre, store: &mut Store<InstanceState>) -> wasmtime::Result<Self::Exports> {
        let instance = pre.linked.instantiate(&mut *store)?;
        let health = pre.health.load(&mut *store, &instance)?;
        // A `health-batch` export of the wrong type fails here, as a bad `health` does.
        let batch = pre.batch.as_ref().map(|b| b.load(&mut *store, &instance)).transpose()?;
        Ok(HealthExports { health, batch })
    }

    fn configure(
        exports: &Self::Exports,
        store: &mut Store<InstanceState>,
        json: &str,
    ) -> wasmtime::Result<Result<(), PluginError>> {
        exports.health.call_configure(store, json)
    }

    fn pool_changed(exports: &Self::Exports, store: &mut Store<InstanceState>) -> wasmtime::Result<()> {
        exports.health.call_pool_changed(store)
    }
}
