//! The SQL surface: thin `#[pg_extern]` wrappers that check arguments and
//! hand over to the core modules. Signatures are declared in SQL so the
//! argument types are exactly DESIGN.md's (`regclass`, `name`).

mod backfill;
mod constraints;
mod jobs;
mod rename;
