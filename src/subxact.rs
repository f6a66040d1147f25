//! Subtransactions: the one way zdm runs something that may fail without
//! failing the caller's transaction — a lock attempt, a batch, a probe of a
//! user's definition. The caller's memory context and resource owner are
//! restored either way; on error the subtransaction is rolled back and the
//! error handed back (`errors::code_of` and friends read it).

use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;

/// Run `f` in a subtransaction; `keep`: release (commit) it when `f`
/// succeeds, else always roll it back.
fn run<R>(keep: bool, f: impl FnOnce() -> R) -> Result<R, CaughtError> {
    unsafe {
        let old_cxt = pg_sys::CurrentMemoryContext;
        let old_owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(old_cxt);
        let body = std::panic::AssertUnwindSafe(move || Ok(f()));
        let result = PgTryBuilder::new(body).catch_others(Err).execute();
        pg_sys::MemoryContextSwitchTo(old_cxt);
        if keep && result.is_ok() {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        pg_sys::MemoryContextSwitchTo(old_cxt);
        pg_sys::CurrentResourceOwner = old_owner;
        result
    }
}

/// Run `f` in a subtransaction that is kept when it succeeds. On error it is
/// rolled back and the error returned; the outer transaction stays usable.
pub fn attempt<R>(f: impl FnOnce() -> R) -> Result<R, CaughtError> {
    run(true, f)
}

/// Run `f` in a subtransaction that is always rolled back, so that whatever
/// it did — and every lock it took — is gone afterwards. For checks that
/// must not leave the caller holding a lock a worker will need.
pub fn rolled_back(f: impl FnOnce()) -> Result<(), CaughtError> {
    run(false, f)
}
