//! `weir plugin inspect`: what a component is — which weir world it implements, what it
//! imports and exports, how big it is — read from its compiled type, not guessed from
//! its name.

use super::{LoadError, PluginRuntime};

/// What a component implements.
#[derive(Debug, serde::Serialize)]
pub struct Inspection {
    /// `balancer-plugin`, `affinity-plugin`, `health-batch-plugin` (a `health-plugin` that
    /// also exports `health-batch`), `health-plugin`, or none of them.
    pub world: Option<&'static str>,
    /// Imported interface or function names.
    pub imports: Vec<String>,
    /// Exported interface or function names.
    pub exports: Vec<String>,
    /// Size of the component in bytes.
    pub size: usize,
    /// SHA-256 of the component, hex.
    pub sha256: String,
}

/// Looked for in order: the first export found names the world.
const WORLDS: [(&str, &str); 4] = [
    ("weir:plugin/balancer@0.1.0", "balancer-plugin"),
    ("weir:plugin/affinity@0.1.0", "affinity-plugin"),
    ("weir:plugin/health-batch@0.1.0", "health-batch-plugin"),
    ("weir:plugin/health@0.1.0", "health-plugin"),
];

impl PluginRuntime {
    /// Inspects component bytes.
    pub fn inspect(&self, bytes: &[u8]) -> Result<Inspection, LoadError> {
        let (component, sha) = self.compile(bytes)?;
        let ty = component.component_type();
        let imports: Vec<String> = ty.imports(self.engine).map(|(name, _)| name.to_owned()).collect();
        let exports: Vec<String> = ty.exports(self.engine).map(|(name, _)| name.to_owned()).collect();
        let world = WORLDS.iter().find(|(iface, _)| exports.iter().any(|e| e == iface)).map(|(_, w)| *w);
        Ok(Inspection {
            world,
            imports,
            exports,
            size: bytes.len(),
            sha256: sha.iter().map(|b| format!("{b:02x}")).collect(),
        })
    }
}

impl std::fmt::Display for Inspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "world:   {}", self.world.unwrap_or("(none: exports no weir:plugin interface)"))?;
        writeln!(f, "size:    {} bytes", self.size)?;
        writeln!(f, "sha256:  {}", self.sha256)?;
        writeln!(f, "exports:")?;
        for e in &self.exports {
            writeln!(f, "  {e}")?;
        }
        writeln!(f, "imports:")?;
        for i in &self.imports {
            writeln!(f, "  {i}")?;
        }
        Ok(())
    }
}
