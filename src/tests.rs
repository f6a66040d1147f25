//! In-database tests (`#[pg_test]`): each runs inside one rolled-back
//! transaction. Behaviour across sessions is tested from the host (tests/).

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn smoke() {
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM zdm.migrations").unwrap(), Some(0));
    }
}
