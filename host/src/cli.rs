//! The subcommands that are more than a few lines, one module each (`main.rs` holds only
//! the argument enums and the dispatch).

pub(crate) mod new;
pub(crate) mod test;
