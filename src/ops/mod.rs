//! The operations, one module each, against `engine::Operation`: the steps
//! of one kind of migration. `rename` and `change_type` share theirs
//! (`column`: a new column beside the old one). Adding one means a module
//! here, an entry in `ALL`, and its SQL functions and `zdm.kinds` row in
//! `api/` (ARCHITECTURE.md, "Adding a kind of migration"); the engine, the
//! guard and the other operations do not change.

pub mod add_column;
pub mod analyse;
pub mod change_type;
pub mod column;
pub mod constraint;
pub mod index;
pub mod rename;
pub mod update;

use crate::engine::Operation;

/// Registered with the engine at library load (`_PG_init`).
pub static ALL: &[&dyn Operation] = &[&rename::RENAME, &change_type::CHANGE_TYPE, &constraint::Constraint, &index::Index, &add_column::ADD_COLUMN, &update::UPDATE];
